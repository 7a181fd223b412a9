//! An instance's data directory: where its spool, journal, intake database and identity live.
//!
//! ```text
//! <data-dir>/instance-id     this instance's 128-bit id (32 hex digits), created once
//! <data-dir>/spool/          the spool (see `spool`)
//! <data-dir>/journal.redb    the sender's journal (see `journal`)
//! <data-dir>/intake.redb     the receiver's dedupe store (see `intake`)
//! <data-dir>/serve.addr      written by `drain serve` once it accepts connections
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::base::durable::{self, Exposure};
pub use crate::base::write_atomic;
use crate::base::{FileError, MessageId};

/// The warning for a data directory that group or others may read, if it is one.
pub fn exposure_warning(data_dir: &Path) -> Option<String> {
    durable::exposure_warning(data_dir, "data directory", Exposure::GroupOrOthers)
}

fn warn_if_exposed(data_dir: &Path) {
    if let Some(w) = exposure_warning(data_dir) {
        tracing::warn!("{w}");
    }
}

/// An opened data directory.
#[derive(Clone, Debug)]
pub struct Instance {
    pub data_dir: PathBuf,
    /// This instance's id, sent as `Drain-Sender`.
    pub id: String,
}

impl Instance {
    /// Opens `data_dir`, creating it (owner only) and the instance id if needed (atomically).
    /// An existing directory that group or others may read is logged as a warning.
    pub fn open(data_dir: &Path) -> Result<Instance, FileError> {
        if !durable::create_private_dir_all(data_dir)? {
            warn_if_exposed(data_dir);
        }
        let id_path = data_dir.join("instance-id");
        let id = match fs::read_to_string(&id_path) {
            Ok(s) => {
                let s = s.trim().to_string();
                if !crate::wire::valid_token(&s) {
                    return Err(FileError::new(
                        &id_path,
                        std::io::Error::other("not 32 hex digits; restore it or remove it"),
                    ));
                }
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = MessageId::random()
                    .map_err(|e| FileError::new(&id_path, e))?
                    .to_string();
                write_atomic(&id_path, format!("{id}\n").as_bytes())?;
                // Another process may have won the race: the file on disk is the id.
                fs::read_to_string(&id_path)
                    .map_err(|e| FileError::new(&id_path, e))?
                    .trim()
                    .to_string()
            }
            Err(e) => return Err(FileError::new(&id_path, e)),
        };
        Ok(Instance {
            data_dir: data_dir.to_path_buf(),
            id,
        })
    }
}

/// Why the instance lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("data directory {dir} is in use by {holder}")]
    Held { dir: PathBuf, holder: String },
    #[error("{path}: cannot lock: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The instance's exclusive lock (`<data-dir>/lock`), held by `drain serve` while it serves and
/// by a drain while it drains; released when dropped or when the process dies (flock).
#[derive(Debug)]
pub struct InstanceLock {
    _file: fs::File,
}

impl Instance {
    /// Takes the exclusive lock at once, or fails naming its holder. `role` is written into
    /// the lock file for the next one to read ("drain serve", "drain").
    pub fn try_lock(&self, role: &str) -> Result<InstanceLock, LockError> {
        let path = self.data_dir.join("lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = durable::open_or_create_private(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "another process".to_string());
                return Err(LockError::Held {
                    dir: self.data_dir.clone(),
                    holder,
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let holder = format!(
            "pid {} ({role}, since {})",
            std::process::id(),
            crate::base::Timestamp::now()
        );
        file.set_len(0).map_err(io)?;
        file.write_all(holder.as_bytes()).map_err(io)?;
        Ok(InstanceLock { _file: file })
    }
}
