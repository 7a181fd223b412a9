//! An instance's data directory: where its spool, journal, intake database and identity live.
//!
//! ```text
//! <data-dir>/instance-id     this instance's 128-bit id (32 hex digits), created once
//! <data-dir>/spool/          the spool (see `spool`)
//! <data-dir>/journal.redb    the sender's journal (see `journal`)
//! <data-dir>/intake.redb     the receiver's dedupe store (see `intake`)
//! <data-dir>/serve.addr      written by `drain serve` once it accepts connections
//! <data-dir>/lock            the exclusive lock (flock) and its holder: `pid N (ROLE, since T)`
//! <data-dir>/control.sock    `drain serve`'s control socket (see `control`)
//! <data-dir>/events/         the event queue (see `events`)
//! ```
//!
//! Invariant of the lock's holder text: it never names a dead process as the holder. The new
//! holder writes its name just after taking the lock; a reader finding a gone pid reads again
//! for a moment, and a serve stopped for a drain writes that drain's name before it releases
//! the lock, so a race for the lock names the real next holder.

use std::fs;
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
    Held { dir: PathBuf, holder: Holder },
    #[error("{path}: cannot lock: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Who holds an instance lock, as its lock file names it: `pid N (ROLE, since TIME)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The holder's process id, when the lock file names a running process.
    pub pid: Option<u32>,
    /// How the holder described itself ("drain serve", "drain", ...), or what is known.
    pub text: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Holder {
    /// The pid a lock file's text names (`pid N (...)`), if any.
    fn parse_pid(text: &str) -> Option<u32> {
        let rest = text.strip_prefix("pid ")?;
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    }
}

/// True when process `pid` exists (signal 0 checks without sending anything).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The instance's exclusive lock (`<data-dir>/lock`), held by `drain serve` while it serves and
/// by a drain while it drains; released when dropped or when the process dies (flock).
#[derive(Debug)]
pub struct InstanceLock {
    file: fs::File,
}

impl InstanceLock {
    /// Rewrites the lock file's holder text while still holding the lock: a serve stopped for
    /// a drain names that drain, so whoever finds the lock taken between the serve's release
    /// and the drain's own write reads the real next holder, not the serve.
    pub fn hand_over(&self, holder: &str) {
        let _ = write_holder(&self.file, holder);
    }
}

/// Writes the holder text in place (no empty window for a reader), then cuts what is left.
fn write_holder(file: &fs::File, holder: &str) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(holder.as_bytes(), 0)?;
    file.set_len(holder.len() as u64)
}

/// How long a lock file naming a process that is gone is read again: its new holder took the
/// lock and is about to write its own name.
const STALE_HOLDER_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

impl Instance {
    /// Takes the exclusive lock at once, or fails naming its holder. `role` is written into
    /// the lock file for the next one to read ("drain serve", "drain").
    pub fn try_lock(&self, role: &str) -> Result<InstanceLock, LockError> {
        let path = self.data_dir.join("lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let file = durable::open_or_create_private(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    dir: self.data_dir.clone(),
                    holder: read_holder(&path),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let holder = format!(
            "pid {} ({role}, since {})",
            std::process::id(),
            crate::base::Timestamp::now()
        );
        write_holder(&file, &holder).map_err(io)?;
        Ok(InstanceLock { file })
    }
}

/// The holder a taken lock's file names. A file naming no running process is read again for a
/// moment (the new holder writes its name just after taking the lock); a dead pid is never
/// reported as the holder.
fn read_holder(path: &Path) -> Holder {
    let deadline = std::time::Instant::now() + STALE_HOLDER_WAIT;
    loop {
        let text = fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let pid = Holder::parse_pid(&text);
        if let Some(p) = pid.filter(|p| pid_alive(*p)) {
            return Holder { pid: Some(p), text };
        }
        if std::time::Instant::now() >= deadline {
            let text = match pid {
                Some(p) => format!(
                    "another process (the lock file still names pid {p}, which is no longer running)"
                ),
                None => "another process".to_string(),
            };
            return Holder { pid: None, text };
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let id = MessageId::random()
            .map(|i| i.to_string())
            .unwrap_or_default();
        std::env::temp_dir().join(format!("drain-instance-{tag}-{id}"))
    }

    #[test]
    fn a_taken_lock_names_its_live_holder() {
        let dir = temp("live");
        let inst = Instance::open(&dir).unwrap();
        let _held = inst.try_lock("drain serve").unwrap();
        let Err(LockError::Held { holder, .. }) = inst.try_lock("drain") else {
            panic!("taken twice");
        };
        assert_eq!(holder.pid, Some(std::process::id()));
        assert!(
            holder
                .text
                .starts_with(&format!("pid {} (drain serve, since ", std::process::id()))
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_handed_over_lock_names_the_next_holder_and_never_a_dead_pid() {
        let dir = temp("handover");
        let inst = Instance::open(&dir).unwrap();
        let held = inst.try_lock("drain serve").unwrap();
        held.hand_over(&format!("pid {} (drain)", std::process::id()));
        let Err(LockError::Held { holder, .. }) = inst.try_lock("drain") else {
            panic!("taken twice");
        };
        assert_eq!(holder.text, format!("pid {} (drain)", std::process::id()));
        // A holder text naming a process that is gone (pid_max is below 2^22 + 1).
        held.hand_over("pid 4194305 (drain serve, since then)");
        let Err(LockError::Held { holder, .. }) = inst.try_lock("drain") else {
            panic!("taken twice");
        };
        assert_eq!(holder.pid, None);
        assert_eq!(
            holder.text,
            "another process (the lock file still names pid 4194305, which is no longer running)"
        );
        let _ = fs::remove_dir_all(dir);
    }
}
