//! Durable, private files: the one write path (temp file, fsync, rename, directory fsync) that
//! the spool, the event queue and the instance's small files all use, the error that names the
//! file at fault, and the one place where files and directories are created.
//!
//! Mail at rest is private (as Postfix keeps its queue): every directory drain creates is
//! [`DIR_MODE`] (0700) and every file it creates [`FILE_MODE`] (0600), whatever the umask
//! ([`create_private_dir_all`], [`create_private_file`]); an existing directory or key file that
//! others may read is reported by [`exposed_mode`], not changed.
//!
//! What it relies on (see `journal-format.md`, "File-system assumptions"): `fsync` of a file
//! makes its data durable; `rename` within one file system is atomic; `fsync` of a directory
//! makes the names created, renamed or removed in it durable.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every directory drain creates: the owner only.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file drain creates: the owner only.
pub const FILE_MODE: u32 = 0o600;

/// An I/O error on a named file or directory.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FileError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FileError {
    pub fn new(path: impl Into<PathBuf>, source: io::Error) -> Self {
        FileError {
            path: path.into(),
            source,
        }
    }

    /// A wrapper for `map_err`: `.map_err(FileError::at(&path))`.
    pub fn at(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
        move |source| FileError::new(path, source)
    }
}

/// Whether [`write_then_rename`] fsyncs the file before its rename.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    /// fsync the file, then rename it.
    Now,
    /// Rename it unsynced: the caller makes the whole group durable at once (a `syncfs`), and
    /// reads nothing under `dest` as whole before that.
    Later,
}

/// Writes `bytes` to the new file `tmp`, fsyncs it (with [`Sync::Now`]) and renames it to
/// `dest`. The name is not durable until the caller fsyncs `dest`'s directory ([`sync_dir`]),
/// which lets a caller writing many files share one directory fsync. On failure `tmp` is
/// removed.
pub fn write_then_rename(
    tmp: &Path,
    dest: &Path,
    bytes: &[u8],
    sync: Sync,
) -> Result<(), FileError> {
    let write = || -> io::Result<()> {
        let mut f = create_private_file(tmp)?;
        f.write_all(bytes)?;
        match sync {
            Sync::Now => f.sync_all(),
            Sync::Later => Ok(()),
        }
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(tmp);
        return Err(FileError::new(tmp, e));
    }
    if let Err(e) = fs::rename(tmp, dest) {
        let _ = fs::remove_file(tmp);
        return Err(FileError::new(dest, e));
    }
    Ok(())
}

/// Writes a small file atomically and durably: `.<name>.tmp` beside it, fsync, rename,
/// directory fsync. A stale temp file from a crash is replaced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(FileError::new(&tmp, e)),
    }
    write_then_rename(&tmp, path, bytes, Sync::Now)?;
    sync_dir(dir)
}

/// fsyncs a directory so that the names created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(FileError::at(dir))
}

/// Creates the new file `path` (it must not exist) for reading and writing, owner only.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)?;
    // The umask can only take bits away; set the mode anyway so an odd umask cannot lock us out.
    f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Opens `path` for reading and writing, creating it (owner only) if it does not exist; an
/// existing file keeps its mode.
pub fn open_or_create_private(path: &Path) -> io::Result<File> {
    match create_private_file(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            OpenOptions::new().read(true).write(true).open(path)
        }
        other => other,
    }
}

/// Creates `dir` and any missing parents, each one it creates owner-only ([`DIR_MODE`]) and
/// durable (its parent fsynced), so that what is later stored durably inside survives a power
/// loss (found by the power-loss tests: a fresh data directory or `--fallback-path` vanished
/// with the messages in it); directories that already exist keep their mode. Returns true when
/// `dir` itself was created.
pub fn create_private_dir_all(dir: &Path) -> Result<bool, FileError> {
    if dir.is_dir() {
        return Ok(false);
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        create_private_dir_all(parent)?;
    }
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        // Another process created it meanwhile: theirs, with their mode (and durability).
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(false),
        Err(e) => return Err(FileError::new(dir, e)),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(FileError::at(dir))?;
    sync_dir(parent.unwrap_or(Path::new(".")))?;
    Ok(true)
}

/// Who else may use a file, for [`exposed_mode`]: the permission bits that must be clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposure {
    /// Group or others may read or write it (a data directory: the mail in it).
    GroupOrOthers,
    /// Others may read or write it (a private key; a group such as `ssl-cert` is common).
    Others,
}

impl Exposure {
    fn mask(self) -> u32 {
        match self {
            Exposure::GroupOrOthers => 0o066,
            Exposure::Others => 0o006,
        }
    }
}

/// The permission bits of `path` when they expose it (`who`); `None` when it is private or
/// cannot be examined.
pub fn exposed_mode(path: &Path, who: Exposure) -> Option<u32> {
    let mode = fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & who.mask() != 0).then_some(mode)
}

/// A warning naming `path` (described as `what`) and its mode when it is exposed (`who`).
pub fn exposure_warning(path: &Path, what: &str, who: Exposure) -> Option<String> {
    let mode = exposed_mode(path, who)?;
    let whom = match who {
        Exposure::GroupOrOthers => "group and others",
        Exposure::Others => "others",
    };
    Some(format!(
        "{what} {} is mode {mode:04o}: {whom} may read it; chmod {} {}",
        path.display(),
        if path.is_dir() { "700" } else { "600" },
        path.display()
    ))
}

/// Bytes free for an unprivileged writer on the file system holding `dir` (statvfs).
pub fn available_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory of the
    // right type; statvfs fills it completely when it returns 0.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("drain-durable-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!dir.join(".f.tmp").exists());
        let err = write_atomic(&dir.join("missing/f"), b"x").unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn created_files_and_dirs_are_private_whatever_the_umask() {
        let base = std::env::temp_dir().join(format!("drain-private-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let deep = base.join("a/b");
        assert!(create_private_dir_all(&deep).unwrap());
        assert!(!create_private_dir_all(&deep).unwrap());
        for d in [&base, &base.join("a"), &deep] {
            let mode = fs::metadata(d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        let f = deep.join("f");
        write_atomic(&f, b"x").unwrap();
        let lock = deep.join("lock");
        drop(open_or_create_private(&lock).unwrap());
        drop(open_or_create_private(&lock).unwrap());
        for p in [&f, &lock] {
            let mode = fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
            assert_eq!(exposed_mode(p, Exposure::GroupOrOthers), None);
        }
        fs::set_permissions(&deep, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(exposed_mode(&deep, Exposure::GroupOrOthers), Some(0o755));
        fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(exposed_mode(&f, Exposure::Others), None);
        let w = exposure_warning(&deep, "data directory", Exposure::GroupOrOthers).unwrap();
        assert!(w.contains("is mode 0755") && w.contains("chmod 700"), "{w}");
        fs::remove_dir_all(&base).unwrap();
    }
}
