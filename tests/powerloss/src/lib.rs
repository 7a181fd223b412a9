//! A FUSE file system for tests that simulates power loss: it passes everything through to a
//! backing directory, remembers on the side what has been made durable, and on a "power cut"
//! throws away everything that was not, so the mount then shows exactly the durable state.
//!
//! # Semantics (conservative ext4 `data=ordered`, modelled on LazyFS)
//!
//! - **File data and length** become durable only with `fsync`/`fdatasync` of that file (any
//!   descriptor of it, even after its name was removed), or with a `sync` command; a write
//!   through a descriptor opened with `O_SYNC`/`O_DSYNC` is durable when it returns. Writes,
//!   `truncate`/`ftruncate`/`set_len` and `fallocate` after the last fsync are lost at a cut.
//! - **Names** (create, mkdir, rename, unlink, rmdir) become durable only with an fsync of the
//!   directory that holds them. A rename between directories needs both directories fsynced.
//! - A durable name always refers to an inode: after a cut it shows that inode's *durable*
//!   content. So a file created, written and renamed over another, with the directory fsynced
//!   but not the file, comes back empty (the ordered-mode hazard the "fsync before rename" rule
//!   exists for). A file fsynced but whose name never was made durable is gone after a cut.
//!   An unlinked file whose unlink was not made durable comes back with its durable content.
//! - **Mode and mtime** become durable with `fsync` (not `fdatasync`) of the file or directory;
//!   a new node starts with the mode it was created with. Owners pass through but are not
//!   restored. Other metadata (atime, ctime, inode numbers of the backing files) is not modelled.
//! - Durable namespaces of different directories are snapshots taken at different times, so a
//!   cut can produce states ext4's single journal would not (it commits all metadata at once):
//!   a file moved between directories with only the target fsynced appears in both (as two
//!   independent files). This is stricter than ext4, never laxer, except for directories: a
//!   directory that would appear twice (or in a loop) appears only at its first place.
//! - Everything is durable at mount. `syncfs(2)` is not forwarded by FUSE; write `sync` to the
//!   control file instead, or put ext4 on top ([`Ext4Disk`]: an image on this file system, on
//!   a loop device, where ext4 turns a `syncfs` into a flush the file system sees).
//!
//! # Control
//!
//! Writing `cut` or `sync` to the file [`CONTROL_NAME`] in the root of the mount (it is never
//! listed by readdir) runs the command; the write returns when it is done. `fail-dir-sync
//! <dir>` (relative to the root) makes every later fsync of that directory fail with `EIO`,
//! making nothing durable (a disk that refuses); `heal` ends every such failure. Kill every process
//! using the mount before a cut: their open descriptors die with the power (later requests on
//! them fail with `EIO`). [`Mount`] does this for an in-process mount, [`command`] for a mount
//! served by the `powerloss-fs` binary.
//!
//! # Limits
//!
//! Regular files and directories only (no symlinks, hard links, devices, xattrs); byte-range and
//! `flock` locks are left to the kernel (local to this machine, which is all tests need). The
//! kernel caches no attributes or names (TTL zero) and drops a file's page cache on each open,
//! so the mount is slow but always current. Shared writable `mmap` is not supported. Requests
//! are served by one thread.

mod attr;
mod block;
mod durability;
mod files;
mod fs;
mod mount;
mod ranges;
mod state;

pub use block::{DiskError, Ext4Disk};
pub use fs::{Command, PowerlossFs};
pub use mount::{Mount, MountError, command, config, prepare};

/// Name of the control file in the root of the mount.
pub const CONTROL_NAME: &str = ".powerloss-ctl";
