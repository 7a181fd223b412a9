//! Attributes as the kernel sees them: the backing file's metadata under our inode number,
//! and the control file's fixed attributes. Called by [`crate::fs`].

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use crate::state::{CONTROL, Ino, Kind};

/// Attributes and entries are never cached by the kernel: after a power cut the next request
/// must see the rebuilt tree.
pub const TTL: Duration = Duration::ZERO;

pub fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = u32::try_from(nsecs).unwrap_or(0);
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::new(s, nanos),
        Err(_) => UNIX_EPOCH,
    }
}

pub fn from_metadata(ino: Ino, kind: Kind, md: &Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: md.size(),
        blocks: md.blocks(),
        atime: time(md.atime(), md.atime_nsec()),
        mtime: time(md.mtime(), md.mtime_nsec()),
        ctime: time(md.ctime(), md.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: file_type(kind),
        perm: (md.mode() & 0o7777) as u16,
        nlink: u32::try_from(md.nlink()).unwrap_or(u32::MAX),
        uid: md.uid(),
        gid: md.gid(),
        rdev: 0,
        blksize: u32::try_from(md.blksize()).unwrap_or(4096),
        flags: 0,
    }
}

/// The control file: write-only for its owner, always empty.
pub fn control() -> FileAttr {
    FileAttr {
        ino: INodeNo(CONTROL),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0o200,
        nlink: 1,
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}
