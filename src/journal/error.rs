//! The journal's errors. Every one names the journal file; a refused transition keeps its
//! typed cause ([`Refused`]). Clone (causes are shared through `Arc`), so the group commit can
//! hand the same error to every request of a failed group.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::records::FORMAT_VERSION;
use super::transition::Refused;
use crate::base::MessageId;

#[derive(Clone, Debug, thiserror::Error)]
pub enum JournalError {
    /// redb failed (I/O, a lock, a transaction).
    #[error("journal {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: Arc<redb::Error>,
    },
    /// The file could not be examined (before redb opens it).
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The file is not a readable redb database (bad header, damaged pages).
    #[error("journal {path}: the file is corrupt: {reason}")]
    CorruptFile { path: PathBuf, reason: String },
    /// One record does not decode; `key` names it (`run 3`, `message <id> of run 3`, ...).
    #[error("journal {path}: corrupt record {key}: {reason}")]
    Corrupt {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error(
        "journal {path}: format version {found} is not supported (this build uses {FORMAT_VERSION})"
    )]
    Version { path: PathBuf, found: String },
    /// An op that the message's current state does not allow; its whole group was not
    /// committed.
    #[error("journal {path}: invalid transition for message {id} in run {run}: {refused}")]
    Transition {
        path: PathBuf,
        run: u64,
        id: MessageId,
        refused: Refused,
    },
    /// Only a finished run's records may be compacted.
    #[error("journal {path}: run #{seq} cannot be compacted: {why}")]
    NotCompactable {
        path: PathBuf,
        seq: u64,
        why: String,
    },
    /// A record could not be encoded (not expected: every record is plain JSON).
    #[error("journal {path}: cannot encode {key}: {reason}")]
    Encode {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// Another process holds the file exclusively (a writer of a build that did not use the
    /// shared single-writer mode).
    #[error(
        "journal {path}: another process holds it exclusively (a drain or serve of an older \
         build?); try again once it has ended"
    )]
    Busy { path: PathBuf },
    /// A journal left unclean by a writer that is gone, whose in-memory recovery failed (the
    /// file is untouched).
    #[error(
        "journal {path}: it was not closed cleanly and cannot be recovered (in memory; the file \
         is untouched): {source}"
    )]
    Unrecoverable {
        path: PathBuf,
        #[source]
        source: Arc<redb::Error>,
    },
    #[error("journal {path}: cannot start the writer thread: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The writer thread has stopped (the journal was closed): nothing more can be committed.
    #[error("journal {path}: the writer has stopped")]
    Stopped { path: PathBuf },
}

impl JournalError {
    /// The journal file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            JournalError::Db { path, .. }
            | JournalError::Io { path, .. }
            | JournalError::CorruptFile { path, .. }
            | JournalError::Corrupt { path, .. }
            | JournalError::Version { path, .. }
            | JournalError::Transition { path, .. }
            | JournalError::Encode { path, .. }
            | JournalError::NotCompactable { path, .. }
            | JournalError::Busy { path }
            | JournalError::Unrecoverable { path, .. }
            | JournalError::Spawn { path, .. }
            | JournalError::Stopped { path } => path,
        }
    }

    /// A redb error on `path`; a damaged file (bad header, bad checksum, truncated) is
    /// reported as [`JournalError::CorruptFile`].
    pub(crate) fn db(path: &Path, e: impl Into<redb::Error>) -> JournalError {
        let path = path.to_path_buf();
        match e.into() {
            redb::Error::Corrupted(reason) => JournalError::CorruptFile { path, reason },
            // redb reports a bad header (magic number, truncated file) as invalid data.
            redb::Error::Io(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                JournalError::CorruptFile {
                    path,
                    reason: e.to_string(),
                }
            }
            e => JournalError::Db {
                path,
                source: Arc::new(e),
            },
        }
    }
}

/// A record that could not be decoded: its key (`run 3`, `message <id> of run 3`, ...) and why.
/// Readers that report anomalies rather than fail get this instead of an error.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Corrupt {
    pub key: String,
    pub reason: String,
}

impl Corrupt {
    /// As an error naming the journal file.
    pub fn into_error(self, path: &Path) -> JournalError {
        JournalError::Corrupt {
            path: path.to_path_buf(),
            key: self.key,
            reason: self.reason,
        }
    }
}
