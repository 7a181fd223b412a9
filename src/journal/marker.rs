//! The unfinished-run marker, `<data-dir>/drain-run.json`: a small file written durably when a
//! drain run begins (before its first message is sent) and removed once the run is finished.
//!
//! Why: the journal knows which messages may already be on a destination. If the journal is
//! lost or corrupt after an interruption, a new drain would send those messages again, maybe to
//! another destination (a duplicate). The marker survives the journal's loss and says that a
//! run was unfinished, under which sender and run id, and to which destinations: enough for
//! `drain recover` to ask each of them about every message still in the spool before anything
//! is sent again.
//!
//! Format (JSON, one object): `version` (1), `sender` (instance id), `run_id`, `run_seq`,
//! `started_at` (RFC 3339), `destinations` (as given). Invariant: before a run sends anything,
//! its record is in the journal and then the marker exists, until the run is finished. (The
//! record goes first: a marker written before it would, after a kill between the two, name a
//! run the journal does not know, which must mean a lost journal.) Written and removed by the drain engine (`lifecycle`),
//! read by the engine, `drain recover` and `drain serve`'s start-up check.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::records::{RunRecord, RunStatus};
use crate::base::Timestamp;
use crate::base::durable::{self, FileError};

/// The marker's file name in the data directory.
pub const MARKER_FILE: &str = "drain-run.json";
const MARKER_VERSION: u32 = 1;

/// An unfinished run, as the marker records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMarker {
    pub version: u32,
    /// The sending instance's id (the `Drain-Sender` of the run's requests).
    pub sender: String,
    pub run_id: String,
    pub run_seq: u64,
    pub started_at: Timestamp,
    pub destinations: Vec<String>,
}

/// Why the marker could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(
        "{path}: not a drain run marker ({reason}); it records an unfinished drain run: \
             do not remove it before `drain recover` has run"
    )]
    Corrupt { path: PathBuf, reason: String },
}

impl RunMarker {
    pub fn new(sender: &str, run_id: &str, run_seq: u64, destinations: Vec<String>) -> Self {
        RunMarker {
            version: MARKER_VERSION,
            sender: sender.to_string(),
            run_id: run_id.to_string(),
            run_seq,
            started_at: Timestamp::now(),
            destinations,
        }
    }
}

/// What the journal says of the run a marker names (the table in `journal-format.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkedRun {
    /// The journal knows it, unfinished: continue it (`drain`, `drain resume`).
    Unfinished,
    /// The journal knows it as finished: the marker is stale (a crash before its removal).
    Finished,
    /// The journal does not know it (lost, removed or replaced): refuse; `drain recover`.
    Lost,
}

impl RunMarker {
    /// The marker's run as seen by a journal whose last run is `last`.
    pub fn against(&self, last: Option<&RunRecord>) -> MarkedRun {
        match last {
            Some(r) if r.id == self.run_id && r.status == RunStatus::Finished => {
                MarkedRun::Finished
            }
            Some(r) if r.id == self.run_id => MarkedRun::Unfinished,
            _ => MarkedRun::Lost,
        }
    }
}

pub fn marker_path(data_dir: &Path) -> PathBuf {
    data_dir.join(MARKER_FILE)
}

/// Writes the marker durably (temp file, fsync, rename, directory fsync).
pub fn write_marker(data_dir: &Path, m: &RunMarker) -> Result<(), MarkerError> {
    let path = marker_path(data_dir);
    let bytes = serde_json::to_vec_pretty(m).map_err(|e| MarkerError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    durable::write_atomic(&path, &bytes)?;
    Ok(())
}

/// The marker, if there is one.
pub fn read_marker(data_dir: &Path) -> Result<Option<RunMarker>, MarkerError> {
    let path = marker_path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FileError::new(&path, e).into()),
    };
    let m: RunMarker = serde_json::from_slice(&bytes).map_err(|e| MarkerError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if m.version != MARKER_VERSION {
        return Err(MarkerError::Corrupt {
            path,
            reason: format!("version {} is not supported", m.version),
        });
    }
    Ok(Some(m))
}

/// Removes the marker durably (the run is finished, or recovered).
pub fn clear_marker(data_dir: &Path) -> Result<(), MarkerError> {
    let path = marker_path(data_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(FileError::new(&path, e).into()),
    }
    durable::sync_dir(data_dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_read_and_cleared() {
        let dir = std::env::temp_dir().join(format!("drain-marker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read_marker(&dir).unwrap(), None);
        let m = RunMarker::new("s", "r", 3, vec!["127.0.0.1:1".into()]);
        write_marker(&dir, &m).unwrap();
        assert_eq!(read_marker(&dir).unwrap(), Some(m));
        clear_marker(&dir).unwrap();
        assert_eq!(read_marker(&dir).unwrap(), None);
        std::fs::write(marker_path(&dir), b"{").unwrap();
        assert!(matches!(
            read_marker(&dir),
            Err(MarkerError::Corrupt { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
