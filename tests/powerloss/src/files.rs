//! File content and attribute requests: open, read, write, setattr, fallocate.
//!
//! Every change to a file's bytes or length is passed through to the backing file and recorded
//! as a dirty range on the node, so that [`crate::durability`] knows what an fsync must copy.
//! Invariant: any byte below the live length that differs from the durable copy lies in a dirty
//! range (writes mark what they write; length changes mark what lies between old and new length).
//! Called by [`crate::fs`].

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::time::SystemTime;

use fuser::{Errno, TimeOrNow};

use crate::state::{Ino, Kind, OpResult, State};

/// Attribute changes of one setattr request.
#[derive(Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
}

impl State {
    /// Opens the backing file; the access mode is kept, creation and truncation flags are not
    /// (the kernel sends those as separate requests).
    pub fn open(&mut self, ino: Ino, flags: i32) -> OpResult<u64> {
        if self.node(ino)?.kind == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        let path = self.path_or_enoent(ino)?;
        let acc = flags & libc::O_ACCMODE;
        let file = OpenOptions::new()
            .read(true)
            .write(acc != libc::O_RDONLY)
            .open(path)?;
        Ok(self.add_handle(ino, file, flags))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> OpResult<Vec<u8>> {
        let file = &self.handle(fh)?.file;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            let n = file.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    pub fn write(&mut self, fh: u64, offset: u64, data: &[u8]) -> OpResult<u32> {
        let handle = self.handle(fh)?;
        let (ino, sync_writes) = (handle.ino, handle.sync_writes);
        handle.file.write_all_at(data, offset)?;
        let end = offset + data.len() as u64;
        self.node_mut(ino)?.dirty.add(offset, end);
        if sync_writes {
            self.sync_file(ino, Some(fh), true)?;
        }
        u32::try_from(data.len()).map_err(|_| Errno::EINVAL)
    }

    pub fn fallocate(&mut self, fh: u64, offset: u64, length: u64, mode: i32) -> OpResult<()> {
        let handle = self.handle(fh)?;
        let ino = handle.ino;
        let off = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let len = i64::try_from(length).map_err(|_| Errno::EINVAL)?;
        // SAFETY: a plain syscall on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::fallocate(handle.file.as_raw_fd(), mode, off, len) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        self.node_mut(ino)?.dirty.add(offset, offset + length);
        Ok(())
    }

    /// Applies a setattr: through the handle when given (the name may be gone), else the path.
    pub fn setattr(&mut self, ino: Ino, fh: Option<u64>, attrs: &SetAttr) -> OpResult<()> {
        let kind = self.node(ino)?.kind;
        let file = self.file_for_setattr(ino, fh, kind, attrs.size.is_some())?;
        if let Some(size) = attrs.size {
            if kind == Kind::Dir {
                return Err(Errno::EISDIR);
            }
            let old = file.metadata()?.len();
            file.set_len(size)?;
            self.node_mut(ino)?.dirty.add(old.min(size), old.max(size));
        }
        if let Some(mode) = attrs.mode {
            file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
        }
        if attrs.uid.is_some() || attrs.gid.is_some() {
            std::os::unix::fs::fchown(&file, attrs.uid, attrs.gid)?;
        }
        if attrs.atime.is_some() || attrs.mtime.is_some() {
            let mut times = std::fs::FileTimes::new();
            if let Some(t) = &attrs.atime {
                times = times.set_accessed(resolve(t));
            }
            if let Some(t) = &attrs.mtime {
                times = times.set_modified(resolve(t));
            }
            file.set_times(times)?;
        }
        Ok(())
    }

    fn file_for_setattr(
        &self,
        ino: Ino,
        fh: Option<u64>,
        kind: Kind,
        write: bool,
    ) -> OpResult<File> {
        if let Some(h) = fh.and_then(|fh| self.handles.get(&fh)) {
            return Ok(h.file.try_clone()?);
        }
        match self.path(ino) {
            // Directories open read-only; files writable only when the length changes.
            Some(path) if kind == Kind::Dir || !write => Ok(File::open(path)?),
            Some(path) => Ok(OpenOptions::new().write(true).open(path)?),
            None => self.open_for_sync(ino, None),
        }
    }
}

fn resolve(t: &TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => *t,
        TimeOrNow::Now => SystemTime::now(),
    }
}
