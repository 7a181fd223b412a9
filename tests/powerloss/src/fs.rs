//! The FUSE request dispatch: turns each kernel request into a call on [`State`] under its lock
//! and the result into a reply. Also serves the control file ([`crate::CONTROL_NAME`]), whose
//! writes run commands. Requests are served by one thread, in the order the kernel queued them,
//! so a command written to the control file runs after every request queued before it.
//! Called by fuser; built by [`crate::mount`].

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use fuser::{
    BsdFileFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::attr::{self, TTL};
use crate::files::SetAttr;
use crate::state::{CONTROL, Ino, Kind, OpResult, ROOT, State};

/// A directory's entries as listed for one open handle.
type Listing = Vec<(Ino, Kind, OsString)>;

/// The mounted file system.
#[derive(Debug)]
pub struct PowerlossFs {
    state: Mutex<State>,
    /// Open directory handles: the listing each reads from. A listing is taken when reading
    /// starts (offset 0) and served by position, so entries created or removed while a reader
    /// pages through the directory cannot shift the others; otherwise an entry is returned
    /// twice or skipped, which POSIX forbids for entries that did not change (and which made
    /// `drain` see one event or spool file twice).
    listings: Mutex<(u64, HashMap<u64, Listing>)>,
}

/// A command written to the control file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Lose everything not durable.
    Cut,
    /// Make everything durable, as sync(2) would.
    Sync,
    /// From now on, fsync of this directory (relative to the mount's root) fails with `EIO`
    /// and makes nothing durable: a disk that refuses.
    FailDirSync(PathBuf),
    /// Directory fsyncs work again.
    Heal,
}

impl Command {
    pub fn parse(text: &[u8]) -> Option<Command> {
        let text = std::str::from_utf8(text).ok()?.trim();
        match text {
            "cut" => Some(Command::Cut),
            "sync" => Some(Command::Sync),
            "heal" => Some(Command::Heal),
            _ => text
                .strip_prefix("fail-dir-sync ")
                .map(|p| Command::FailDirSync(PathBuf::from(p))),
        }
    }

    pub fn text(&self) -> String {
        match self {
            Command::Cut => "cut".into(),
            Command::Sync => "sync".into(),
            Command::FailDirSync(p) => format!("fail-dir-sync {}", p.display()),
            Command::Heal => "heal".into(),
        }
    }
}

impl PowerlossFs {
    pub fn new(state: State) -> PowerlossFs {
        PowerlossFs {
            state: Mutex::new(state),
            listings: Mutex::new((1, HashMap::new())),
        }
    }

    fn listings(&self) -> MutexGuard<'_, (u64, HashMap<u64, Listing>)> {
        self.listings.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic inside a request leaves the model as consistent as any failed syscall would.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self, command: Command) -> OpResult<()> {
        let mut state = self.lock();
        let result = match &command {
            Command::Cut => state.cut().map_err(Errno::from),
            Command::Sync => state.sync_all(),
            Command::FailDirSync(p) => {
                let p = state.backing.join(p);
                state.failing_dir_syncs.push(p);
                Ok(())
            }
            Command::Heal => {
                state.failing_dir_syncs.clear();
                Ok(())
            }
        };
        if let Err(e) = &result {
            eprintln!("powerloss-fs: {} failed: {e:?}", command.text());
        }
        result
    }

    fn entry(&self, ino: Ino, reply: ReplyEntry) {
        match attr_of(&self.lock(), ino, None) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

fn attr_of(state: &State, ino: Ino, fh: Option<u64>) -> OpResult<fuser::FileAttr> {
    if ino == CONTROL {
        return Ok(attr::control());
    }
    let kind = state.node(ino)?.kind;
    let md = state.metadata(ino, fh)?;
    Ok(attr::from_metadata(ino, kind, &md))
}

fn reply_empty(reply: ReplyEmpty, result: OpResult<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn is_control(parent: INodeNo, name: &OsStr) -> bool {
    parent.0 == ROOT && name == crate::CONTROL_NAME
}

impl Filesystem for PowerlossFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if is_control(parent, name) {
            return reply.entry(&TTL, &attr::control(), Generation(0));
        }
        let found = self.lock().lookup(parent.0, name);
        match found {
            Ok(ino) => self.entry(ino, reply),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match attr_of(&self.lock(), ino.0, fh.map(|f| f.0)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let fh = fh.map(|f| f.0);
        let attrs = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        let mut state = self.lock();
        // The control file ignores attribute changes (`echo cut >` truncates it first).
        let result = if ino.0 == CONTROL {
            Ok(())
        } else {
            state.setattr(ino.0, fh, &attrs)
        };
        match result.and_then(|()| attr_of(&state, ino.0, fh)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        if is_control(parent, name) {
            return reply.error(Errno::EEXIST);
        }
        let made = self.lock().mkdir(parent.0, name, mode & !umask);
        match made {
            Ok(ino) => self.entry(ino, reply),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if is_control(parent, name) {
            return reply.error(Errno::EPERM);
        }
        reply_empty(reply, self.lock().unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.lock().rmdir(parent.0, name));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if is_control(parent, name) || is_control(newparent, newname) {
            return reply.error(Errno::EPERM);
        }
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let result = self
            .lock()
            .rename((parent.0, name), (newparent.0, newname), noreplace);
        reply_empty(reply, result);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == CONTROL {
            return reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        }
        match self.lock().open(ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino.0 == CONTROL {
            return reply.data(&[]);
        }
        match self.lock().read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino.0 == CONTROL {
            let Some(command) = Command::parse(data) else {
                return reply.error(Errno::EINVAL);
            };
            return match self.run(command) {
                Ok(()) => reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX)),
                Err(e) => reply.error(e),
            };
        }
        match self.lock().write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // A handle from before a power cut is already gone.
        self.lock().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        if ino.0 == CONTROL {
            return reply.ok();
        }
        let mut state = self.lock();
        let fh = Some(fh.0).filter(|fh| state.handles.contains_key(fh));
        reply_empty(reply, state.sync_file(ino.0, fh, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if let Err(e) = self.lock().node(ino.0) {
            return reply.error(e);
        }
        // The listing is taken by the first readdir (offset 0).
        let mut listings = self.listings();
        let fh = listings.0;
        listings.0 += 1;
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut listings = self.listings();
        // Reading from the start (a new handle, or rewinddir) sees the directory as it is now.
        if offset == 0 || !listings.1.contains_key(&fh.0) {
            match self.lock().entries(ino.0) {
                Ok(entries) => listings.1.insert(fh.0, entries),
                Err(e) => return reply.error(e),
            };
        }
        let entries = listings.1.get(&fh.0).map_or(&[][..], |l| &l[..]);
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (child, kind, name)) in entries.iter().enumerate().skip(skip) {
            if reply.add(INodeNo(*child), i as u64 + 1, attr::file_type(*kind), name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.listings().1.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.lock();
        // Resolved only while a failure is set: fsyncdir is frequent.
        let failing = !state.failing_dir_syncs.is_empty()
            && state
                .path(ino.0)
                .is_some_and(|p| state.failing_dir_syncs.contains(&p));
        if failing {
            return reply.error(Errno::EIO);
        }
        reply_empty(reply, state.sync_dir(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match statvfs(&self.lock().backing) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                u32::try_from(s.f_bsize).unwrap_or(4096),
                u32::try_from(s.f_namemax).unwrap_or(255),
                u32::try_from(s.f_frsize).unwrap_or(4096),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if is_control(parent, name) {
            return reply.error(Errno::EEXIST);
        }
        let mut state = self.lock();
        let created = state
            .create(parent.0, name, mode & !umask, flags)
            .and_then(|(ino, fh)| Ok((attr_of(&state, ino, Some(fh))?, fh)));
        match created {
            Ok((a, fh)) => {
                reply.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.lock().fallocate(fh.0, offset, length, mode));
    }
}

fn statvfs(path: &std::path::Path) -> OpResult<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `c` is a valid C string and `out` a writable statvfs for the call's duration.
    unsafe {
        let mut out: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut out) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(out)
    }
}
