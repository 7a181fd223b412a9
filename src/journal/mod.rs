//! The journal: the sending instance's durable record of every drain run and every message's
//! state in it, kept in a redb database at `<data-dir>/journal.redb`.
//!
//! Each message of a run moves `read -> sent(destination) -> acked(destination) -> deleted`
//! (tables, encodings and the state diagram are in `journal-format.md`). Invariants:
//! - a `sent` record is durable before the request carrying the message leaves (invariant 2);
//! - a local file is removed only after its `acked` record is durable (invariant 1);
//! - transitions are checked: an impossible one is an error, never silently applied.
//!
//! All writes go through one writer thread that applies every pending request in one write
//! transaction and one commit (group commit, see `writer`), so many sending tasks share each
//! fsync. Readers open their own read transactions. Callers: the drain engine, and `drain serve`
//! (which refuses to start while the last run is unfinished).

mod records;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::groupcommit::Committer;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

pub use records::{MessageRecord, Op, RunRecord, RunStatus, State, Transition, UnreadableRecord};

/// Metadata: `format` -> journal format version (decimal string).
pub(crate) const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// Runs by sequence number -> `RunRecord` JSON.
pub(crate) const RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("runs");
/// (run sequence, message id) -> `MessageRecord` JSON.
pub(crate) const MESSAGES: TableDefinition<(u64, [u8; 16]), &[u8]> =
    TableDefinition::new("messages");
/// (run sequence, file path) -> `UnreadableRecord` JSON: files that could not be read.
pub(crate) const UNREADABLE: TableDefinition<(u64, &str), &[u8]> =
    TableDefinition::new("unreadable");

/// redb's page cache for the journal (redb's default would grow up to 1 GiB).
const CACHE_BYTES: usize = 16 << 20;

/// The journal format version this build writes.
pub const FORMAT_VERSION: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
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
    #[error("journal: invalid transition for message {id} in run {run}: {reason}")]
    Transition {
        run: u64,
        id: String,
        reason: String,
    },
    #[error("journal writer stopped: {0}")]
    Writer(String),
}

/// The journal of one data directory.
#[derive(Clone)]
pub struct Journal {
    db: Arc<Database>,
    path: PathBuf,
    writer: Committer<Vec<Op>>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Journal, JournalError> {
        let path = data_dir.join("journal.redb");
        // A fixed cache: memory must not grow with the number of messages (invariant 5).
        // SingleWriter: `drain inspect` may open it read-only from another process meanwhile.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .create(&path)
            .map_err(|e| db_err(&path, e))?;
        let txn = db.begin_write().map_err(|e| db_err(&path, e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| db_err(&path, e))?;
            let found = meta
                .get("format")
                .map_err(|e| db_err(&path, e))?
                .map(|v| v.value().to_string());
            match found {
                None => {
                    meta.insert("format", FORMAT_VERSION)
                        .map_err(|e| db_err(&path, e))?;
                }
                Some(v) if v == FORMAT_VERSION => {}
                Some(found) => return Err(JournalError::Version { path, found }),
            }
            txn.open_table(RUNS).map_err(|e| db_err(&path, e))?;
            txn.open_table(MESSAGES).map_err(|e| db_err(&path, e))?;
            txn.open_table(UNREADABLE).map_err(|e| db_err(&path, e))?;
        }
        txn.commit().map_err(|e| db_err(&path, e))?;
        let db = Arc::new(db);
        let wpath = path.clone();
        let writer = Committer::spawn("journal-writer", db.clone(), move |txn, groups| {
            writer::apply_group(txn, &wpath, groups).map_err(|e| e.to_string())
        })
        .map_err(|e| JournalError::Writer(format!("cannot start the writer thread: {e}")))?;
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
    /// share one commit.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<(), JournalError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.writer.submit(ops).await.map_err(JournalError::Writer)
    }

    /// The most recent run, if any.
    pub fn last_run(&self) -> Result<Option<RunRecord>, JournalError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let runs = txn.open_table(RUNS).map_err(|e| self.err(e))?;
        let last = runs.last().map_err(|e| self.err(e))?;
        match last {
            None => Ok(None),
            Some((k, v)) => Ok(Some(self.decode(&format!("run {}", k.value()), v.value())?)),
        }
    }

    /// Every run, oldest first.
    pub fn runs(&self) -> Result<Vec<RunRecord>, JournalError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let runs = txn.open_table(RUNS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in runs.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            out.push(self.decode(&format!("run {}", k.value()), v.value())?);
        }
        Ok(out)
    }

    /// The next run sequence number.
    pub fn next_run_seq(&self) -> Result<u64, JournalError> {
        Ok(self.last_run()?.map(|r| r.seq + 1).unwrap_or(1))
    }

    /// Calls `f` for every message record of run `seq`, streaming (one read transaction).
    pub fn for_each_message(
        &self,
        seq: u64,
        mut f: impl FnMut(crate::base::MessageId, MessageRecord) -> Result<(), JournalError>,
    ) -> Result<(), JournalError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(MESSAGES).map_err(|e| self.err(e))?;
        for item in t
            .range((seq, [0u8; 16])..=(seq, [0xffu8; 16]))
            .map_err(|e| self.err(e))?
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let id = crate::base::MessageId(k.value().1);
            let rec = self.decode(&format!("message {id} of run {seq}"), v.value())?;
            f(id, rec)?;
        }
        Ok(())
    }

    /// One message's record in run `seq`.
    pub fn message(
        &self,
        seq: u64,
        id: crate::base::MessageId,
    ) -> Result<Option<MessageRecord>, JournalError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(MESSAGES).map_err(|e| self.err(e))?;
        let v = t.get((seq, id.0)).map_err(|e| self.err(e))?;
        match v {
            None => Ok(None),
            Some(v) => Ok(Some(
                self.decode(&format!("message {id} of run {seq}"), v.value())?,
            )),
        }
    }

    /// The records of several messages of run `seq`, in order, in one read transaction.
    pub fn messages(
        &self,
        seq: u64,
        ids: &[crate::base::MessageId],
    ) -> Result<Vec<Option<MessageRecord>>, JournalError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(MESSAGES).map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(match t.get((seq, id.0)).map_err(|e| self.err(e))? {
                None => None,
                Some(v) => Some(self.decode(&format!("message {id} of run {seq}"), v.value())?),
            });
        }
        Ok(out)
    }

    /// Files that could not be read in run `seq`.
    pub fn unreadable(&self, seq: u64) -> Result<Vec<(String, UnreadableRecord)>, JournalError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(UNREADABLE).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.range((seq, "")..(seq + 1, "")).map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let path = k.value().1.to_string();
            out.push((
                path.clone(),
                self.decode(&format!("unreadable {path}"), v.value())?,
            ));
        }
        Ok(out)
    }

    fn err(&self, e: impl Into<redb::Error>) -> JournalError {
        db_err(&self.path, e)
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        bytes: &[u8],
    ) -> Result<T, JournalError> {
        serde_json::from_slice(bytes).map_err(|e| JournalError::Corrupt {
            path: self.path.clone(),
            key: key.to_string(),
            reason: e.to_string(),
        })
    }
}

pub(crate) fn db_err(path: &Path, e: impl Into<redb::Error>) -> JournalError {
    JournalError::Db {
        path: path.to_path_buf(),
        source: Box::new(e.into()),
    }
}
