//! How the spool makes a group of new files durable: [`SpoolSync`], the choice `drain serve
//! --spool-sync` takes, and [`SyncMode`], what it resolves to for one data directory.
//!
//! - `file`: each file is fsynced before its rename, then each queue directory touched is
//!   fsynced once (the classic temp file, fsync, rename, directory fsync).
//! - `filesystem`: the files of a group are written and renamed without a sync, then one
//!   `syncfs(2)` of the spool's file system makes all of them, data and names, durable at once:
//!   the syncs per message fall with the group's size. The descriptor is opened before the
//!   first write, so a writeback error on that file system while the group is written is
//!   reported by the `syncfs` (Linux 5.8 and later), and the group fails.
//! - `auto` (the default): `filesystem` on ext4, XFS and btrfs, whose `syncfs` commits their
//!   journal and flushes the disk's cache; `file` on anything else (FUSE and network file
//!   systems may not pass a `syncfs` on, and tmpfs has nothing to make durable).
//!
//! Invariant, either way: when a write of the spool returns `Ok`, every file it wrote survives
//! a power cut under its name with its whole content. A name made durable before its content
//! (another writer's journal commit can carry our rename before the `syncfs`) is never a
//! message: groups are written under names nobody reads as messages (`staged`), and published
//! only after the `syncfs` returned. The cost of `filesystem`: one `syncfs` also flushes what
//! other programs wrote on that file system. Called by `Spool` (its write path) and by the
//! intake, which resolves the choice once at start.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::str::FromStr;

/// What `--spool-sync` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SpoolSync {
    /// `filesystem` where the file system is known to honour `syncfs`, else `file`.
    #[default]
    Auto,
    /// An fsync per file, a directory fsync per group.
    File,
    /// One `syncfs` per group.
    Filesystem,
}

impl SpoolSync {
    pub const NAMES: &'static str = "auto, file or filesystem";

    pub fn as_str(self) -> &'static str {
        match self {
            SpoolSync::Auto => "auto",
            SpoolSync::File => "file",
            SpoolSync::Filesystem => "filesystem",
        }
    }

    /// The mode for the spool at `dir`, and the name of the file system type that decided it
    /// (for the log).
    pub fn resolve(self, dir: &Path) -> (SyncMode, &'static str) {
        let fs = fs_type(dir);
        let mode = match self {
            SpoolSync::File => SyncMode::File,
            SpoolSync::Filesystem => SyncMode::Filesystem,
            SpoolSync::Auto if fs.honours_syncfs => SyncMode::Filesystem,
            SpoolSync::Auto => SyncMode::File,
        };
        (mode, fs.name)
    }
}

impl fmt::Display for SpoolSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SpoolSync {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(SpoolSync::Auto),
            "file" => Ok(SpoolSync::File),
            "filesystem" => Ok(SpoolSync::Filesystem),
            other => Err(format!("{other:?}: expected {}", SpoolSync::NAMES)),
        }
    }
}

/// How one spool makes its writes durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// An fsync per file, then a directory fsync per queue directory touched.
    #[default]
    File,
    /// One `syncfs(2)` per group of files.
    Filesystem,
}

impl SyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::File => "file",
            SyncMode::Filesystem => "filesystem",
        }
    }

    /// How a group of copies is made durable, for the log.
    pub fn describe(self) -> &'static str {
        match self {
            SyncMode::File => "an fsync per copy and a directory fsync per queue",
            SyncMode::Filesystem => "one syncfs per transfer",
        }
    }
}

struct FsType {
    name: &'static str,
    honours_syncfs: bool,
}

/// The file system type of `dir`, by `statfs(2)`'s magic number.
fn fs_type(dir: &Path) -> FsType {
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    const FUSE: i64 = 0x6573_5546;
    const TMPFS: i64 = 0x0102_1994;
    const NFS: i64 = 0x6969;
    const OVERLAY: i64 = 0x794C_7630;
    let (name, honours_syncfs) = match statfs_magic(dir) {
        Some(EXT4) => ("ext4", true),
        Some(XFS) => ("xfs", true),
        Some(BTRFS) => ("btrfs", true),
        Some(FUSE) => ("fuse", false),
        Some(TMPFS) => ("tmpfs", false),
        Some(NFS) => ("nfs", false),
        Some(OVERLAY) => ("overlayfs", false),
        Some(_) => ("another file system", false),
        None => ("unknown (statfs failed)", false),
    };
    FsType {
        name,
        honours_syncfs,
    }
}

fn statfs_magic(dir: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` is a buffer of the right type.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    let magic = st.f_type as i64;
    Some(magic)
}

/// A `syncfs(2)` of the file system holding a directory, opened before the writes it covers
/// so that their writeback errors are reported to it.
pub(super) struct Barrier {
    dir: File,
}

impl Barrier {
    pub(super) fn open(dir: &Path) -> io::Result<Barrier> {
        Ok(Barrier {
            dir: File::open(dir)?,
        })
    }

    /// Makes everything written on that file system so far durable.
    pub(super) fn sync(&self) -> io::Result<()> {
        // SAFETY: the descriptor is open for as long as `self.dir` lives.
        let rc = unsafe { libc::syncfs(self.dir.as_raw_fd()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for s in [SpoolSync::Auto, SpoolSync::File, SpoolSync::Filesystem] {
            assert_eq!(s.as_str().parse::<SpoolSync>(), Ok(s));
        }
        let e = "fsync".parse::<SpoolSync>().unwrap_err();
        assert_eq!(e, "\"fsync\": expected auto, file or filesystem");
    }

    #[test]
    fn an_explicit_choice_is_kept_and_auto_follows_the_file_system() {
        let dir = std::env::temp_dir();
        assert_eq!(SpoolSync::File.resolve(&dir).0, SyncMode::File);
        assert_eq!(SpoolSync::Filesystem.resolve(&dir).0, SyncMode::Filesystem);
        let (auto, name) = SpoolSync::Auto.resolve(&dir);
        let expect = if ["ext4", "xfs", "btrfs"].contains(&name) {
            SyncMode::Filesystem
        } else {
            SyncMode::File
        };
        assert_eq!(auto, expect, "auto on {name}");
        assert_eq!(
            SpoolSync::Auto.resolve(Path::new("/no/such/dir")),
            (SyncMode::File, "unknown (statfs failed)")
        );
    }

    #[test]
    fn a_barrier_syncs_the_file_system_of_its_directory() {
        let b = Barrier::open(&std::env::temp_dir()).unwrap();
        b.sync().unwrap();
        assert!(Barrier::open(Path::new("/no/such/dir")).is_err());
    }
}
