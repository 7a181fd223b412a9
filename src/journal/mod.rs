//! The journal: the sending instance's durable record of every drain run and every message's
//! state in it, kept in a redb database at `<data-dir>/journal.redb`. This module owns that
//! file: nothing else in the crate opens it or knows its tables.
//!
//! Each message of a run moves `read -> sent(destination) -> acked(destination) -> deleted`
//! (tables, encodings and the state table are in `journal-format.md`). Invariants:
//! - a `sent` record is durable before the request carrying the message leaves (invariant 2);
//! - a local file is removed only after its `acked` record is durable (invariant 1);
//! - transitions are checked: an impossible one is an error, never silently applied.
//!
//! Layout: `records` (the record types and ops), `transition` (the state machine), `tables`
//! (table definitions, format version, decoding, reads), `writer` (applies a group of ops),
//! `reader` + `overlay` (read-only access, also to a file left unclean by a killed writer),
//! `error`. All writes go through one writer thread that applies every pending request in one
//! write transaction and one commit (group commit), so many sending tasks share each fsync.
//! Callers: the drain engine writes through [`Journal`]; `drain inspect` and `drain serve`'s
//! start-up check read through [`Reader`] / [`read`] / [`last_run_status`].

mod error;
mod marker;
mod overlay;
mod reader;
mod records;
mod tables;
mod transition;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable};

use crate::base::MessageId;
use crate::groupcommit::{CommitError, Committer};
use tables::{MESSAGES, META, RUNS, Snapshot, UNREADABLE};

pub use error::{Corrupt, JournalError};
pub use marker::{
    MARKER_FILE, MarkedRun, MarkerError, RunMarker, clear_marker, marker_path, read_marker,
    write_marker,
};
pub use reader::{OpenMode, Reader, last_run_status, read};
pub use records::{
    Compacted, FORMAT_VERSION, MessageRecord, Op, RunRecord, RunStatus, State, Transition,
    UnreadableRecord,
};
pub use tables::{Runs, file_path};
pub use transition::{OpKind, Refused};

/// The journal of one data directory, open for writing.
#[derive(Clone)]
pub struct Journal {
    db: Arc<Database>,
    path: PathBuf,
    writer: Committer<Vec<Op>, JournalError>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Journal, JournalError> {
        let path = file_path(data_dir);
        let db = Arc::new(open_db(&path)?);
        let wpath = path.clone();
        let writer = Committer::spawn("journal-writer", db.clone(), move |txn, groups| {
            writer::apply_group(txn, &wpath, groups)
        })
        .map_err(|e| JournalError::Spawn {
            path: path.clone(),
            source: e.into(),
        })?;
        Ok(Journal { db, path, writer })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commits what is queued, stops the writer and closes the database cleanly when this is
    /// the last handle (otherwise the last one dropped closes it). Later commits fail.
    pub fn close(self) {
        self.writer.close();
        match Arc::try_unwrap(self.db) {
            Ok(db) => {
                if let Err(e) = db.close() {
                    tracing::warn!("closing the journal {}: {e}", self.path.display());
                }
            }
            Err(_) => tracing::debug!("journal still shared; it closes with its last handle"),
        }
    }

    /// Applies `ops` durably: when this returns `Ok`, they survive a crash. Concurrent callers
    /// share one commit; if any op of that commit is refused, every caller of it gets the
    /// error and nothing of it is committed.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<(), JournalError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.writer.submit(ops).await.map_err(|e| match e {
            CommitError::Apply(e) => e,
            CommitError::Db(source) => JournalError::Db {
                path: self.path.clone(),
                source,
            },
            CommitError::Stopped => JournalError::Stopped {
                path: self.path.clone(),
            },
        })
    }

    /// Runs `f` on a snapshot of the committed state (one read transaction).
    fn snapshot<T>(
        &self,
        f: impl FnOnce(&Snapshot<'_>) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| JournalError::db(&self.path, e))?;
        f(&Snapshot {
            txn: &txn,
            path: &self.path,
        })
    }

    /// The most recent run, if any.
    pub fn last_run(&self) -> Result<Option<RunRecord>, JournalError> {
        match self.snapshot(|s| s.last_run())? {
            None => Ok(None),
            Some(rec) => rec.map(Some).map_err(|c| c.into_error(&self.path)),
        }
    }

    /// Every run, oldest first.
    pub fn runs(&self) -> Result<Vec<RunRecord>, JournalError> {
        let runs = self.snapshot(|s| s.runs::<RunRecord>())?;
        match runs.corrupt.into_iter().next() {
            Some(c) => Err(c.into_error(&self.path)),
            None => Ok(runs.rows),
        }
    }

    /// The next run sequence number.
    pub fn next_run_seq(&self) -> Result<u64, JournalError> {
        Ok(self.last_run()?.map(|r| r.seq + 1).unwrap_or(1))
    }

    /// Calls `f` for every message record of run `seq`, streaming (one read transaction).
    pub fn for_each_message(
        &self,
        seq: u64,
        mut f: impl FnMut(MessageId, MessageRecord) -> Result<(), JournalError>,
    ) -> Result<(), JournalError> {
        self.snapshot(|s| {
            s.for_each_message(seq, |id, rec| {
                f(id, rec.map_err(|c| c.into_error(&self.path))?)
            })
        })
    }

    /// One message's record in run `seq`.
    pub fn message(&self, seq: u64, id: MessageId) -> Result<Option<MessageRecord>, JournalError> {
        Ok(self.messages(seq, &[id])?.pop().flatten())
    }

    /// The records of several messages of run `seq`, in order, in one read transaction.
    pub fn messages(
        &self,
        seq: u64,
        ids: &[MessageId],
    ) -> Result<Vec<Option<MessageRecord>>, JournalError> {
        let recs = self.snapshot(|s| s.messages(seq, ids))?;
        recs.into_iter()
            .map(|r| r.transpose().map_err(|c| c.into_error(&self.path)))
            .collect()
    }

    /// Files that could not be read in run `seq`.
    pub fn unreadable(&self, seq: u64) -> Result<Vec<(String, UnreadableRecord)>, JournalError> {
        let mut out = Vec::new();
        self.snapshot(|s| {
            s.for_each_unreadable(seq, |path, rec| {
                out.push((path, rec.map_err(|c| c.into_error(&self.path))?));
                Ok(())
            })
        })?;
        Ok(out)
    }
}

/// Gives the space of dropped records back to the file system (redb's compaction), for
/// `drain compact` once the journal is closed. Ok(false): nothing to give back.
pub fn shrink(data_dir: &Path) -> Result<bool, JournalError> {
    let path = file_path(data_dir);
    let mut db = open_db(&path)?;
    db.compact().map_err(|e| JournalError::db(&path, e))
}

/// Opens or creates the database, checks its format version (stamping a new file) and creates
/// the tables, in one write transaction.
fn open_db(path: &Path) -> Result<Database, JournalError> {
    let err = |e: redb::Error| JournalError::db(path, e);
    // A fixed cache: memory must not grow with the number of messages (invariant 5).
    // SingleWriter: `drain inspect` may open it read-only from another process meanwhile.
    let mut builder = redb::Builder::new();
    builder
        .set_cache_size(tables::CACHE_BYTES)
        .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
    let db = crate::groupcommit::create_or_open(path, &builder).map_err(err)?;
    let txn = db.begin_write().map_err(|e| err(e.into()))?;
    {
        let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
        let found = meta
            .get("format")
            .map_err(|e| err(e.into()))?
            .map(|v| v.value().to_string());
        if tables::check_format(path, found)? {
            meta.insert("format", FORMAT_VERSION)
                .map_err(|e| err(e.into()))?;
        }
        txn.open_table(RUNS).map_err(|e| err(e.into()))?;
        txn.open_table(MESSAGES).map_err(|e| err(e.into()))?;
        txn.open_table(UNREADABLE).map_err(|e| err(e.into()))?;
    }
    txn.commit().map_err(|e| err(e.into()))?;
    Ok(db)
}

#[cfg(test)]
impl Journal {
    /// Test-only: stores `bytes` as the record of message `id` in run `seq`, unchecked (to
    /// plant a record that does not decode).
    pub(crate) fn put_raw_message(&self, seq: u64, id: MessageId, bytes: &[u8]) {
        let txn = self.db.begin_write().expect("write transaction");
        {
            let mut t = txn.open_table(MESSAGES).expect("messages table");
            t.insert((seq, id.0), bytes).expect("insert");
        }
        txn.commit().expect("commit");
    }
}
