//! Durable files: the one write path (temp file, fsync, rename, directory fsync) that the
//! spool, the event queue and the instance's small files all use, and the error that names
//! the file at fault.
//!
//! What it relies on (see `journal-format.md`, "File-system assumptions"): `fsync` of a file
//! makes its data durable; `rename` within one file system is atomic; `fsync` of a directory
//! makes the names created, renamed or removed in it durable.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

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

/// Writes `bytes` to the new file `tmp`, fsyncs it and renames it to `dest`. The name is not
/// durable until the caller fsyncs `dest`'s directory ([`sync_dir`]), which lets a caller
/// writing many files share one directory fsync. On failure `tmp` is removed.
pub fn write_then_rename(tmp: &Path, dest: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).open(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
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
    write_then_rename(&tmp, path, bytes)?;
    sync_dir(dir)
}

/// fsyncs a directory so that the names created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(FileError::at(dir))
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
}
