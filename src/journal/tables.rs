//! The journal's on-disk layout, in one place: the file name, the table definitions, the
//! format version check, the JSON decoding of records, and every read of the tables ([`Snapshot`]).
//!
//! Both the writing [`Journal`](super::Journal) and the read-only [`Reader`](super::Reader)
//! read through a `Snapshot` (one read transaction), so there is one decoder per table. A
//! table that does not exist yet (a file whose creator died before its first commit) reads as
//! empty. Record decoding failures come back per record as [`Corrupt`]: the caller decides
//! whether that is fatal (the engine) or an anomaly to list (`drain inspect`).

use std::path::{Path, PathBuf};

use redb::{ReadTransaction, ReadableTable, TableDefinition, TableError};
use serde::de::DeserializeOwned;

use super::error::{Corrupt, JournalError};
use super::records::{FORMAT_VERSION, MessageRecord, RunRecord, UnreadableRecord};
use crate::base::MessageId;

/// Metadata: `format` -> journal format version (decimal string).
pub(super) const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// Runs by sequence number -> `RunRecord` JSON.
pub(super) const RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("runs");
/// (run sequence, message id) -> `MessageRecord` JSON.
pub(super) const MESSAGES: TableDefinition<(u64, [u8; 16]), &[u8]> =
    TableDefinition::new("messages");
/// (run sequence, file path) -> `UnreadableRecord` JSON: files that could not be read.
pub(super) const UNREADABLE: TableDefinition<(u64, &str), &[u8]> =
    TableDefinition::new("unreadable");

/// redb's page cache for a journal handle, writer or reader (redb's default would grow up to
/// 1 GiB): memory must not grow with the number of messages.
pub(super) const CACHE_BYTES: usize = 16 << 20;

/// The journal file of `data_dir`.
pub fn file_path(data_dir: &Path) -> PathBuf {
    data_dir.join("journal.redb")
}

/// The one format check. `found`: the `meta` table's `format` value, if any. Returns whether
/// the version is missing (a new file, which the writer then stamps).
pub(super) fn check_format(path: &Path, found: Option<String>) -> Result<bool, JournalError> {
    match found {
        None => Ok(true),
        Some(v) if v == FORMAT_VERSION => Ok(false),
        Some(found) => Err(JournalError::Version {
            path: path.to_path_buf(),
            found,
        }),
    }
}

pub(super) fn message_key(seq: u64, id: MessageId) -> String {
    format!("message {id} of run {seq}")
}

pub(super) fn decode<T: DeserializeOwned>(
    key: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<T, Corrupt> {
    serde_json::from_slice(bytes).map_err(|e| Corrupt {
        key: key(),
        reason: e.to_string(),
    })
}

/// The `runs` table as read: every key, and each record decoded or not.
#[derive(Debug)]
pub struct Runs<R> {
    /// Every key, in order (decoded or not).
    pub seqs: Vec<u64>,
    pub rows: Vec<R>,
    pub corrupt: Vec<Corrupt>,
}

impl<R> Default for Runs<R> {
    fn default() -> Self {
        Runs {
            seqs: Vec::new(),
            rows: Vec::new(),
            corrupt: Vec::new(),
        }
    }
}

type MessageItem = Result<MessageRecord, Corrupt>;

/// Reads of the journal's tables within one read transaction.
pub(super) struct Snapshot<'a> {
    pub txn: &'a ReadTransaction,
    pub path: &'a Path,
}

impl Snapshot<'_> {
    fn err(&self, e: impl Into<redb::Error>) -> JournalError {
        JournalError::db(self.path, e)
    }

    /// `None` when the table does not exist yet.
    fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<Option<redb::ReadOnlyTable<K, V>>, JournalError> {
        match self.txn.open_table(def) {
            Ok(t) => Ok(Some(t)),
            Err(TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Checks the format version (a missing one is accepted: nothing was written yet).
    pub fn check_format(&self) -> Result<(), JournalError> {
        let Some(meta) = self.table(META)? else {
            return Ok(());
        };
        let found = meta.get("format").map_err(|e| self.err(e))?;
        check_format(self.path, found.map(|v| v.value().to_string())).map(|_| ())
    }

    /// Every run, oldest first, decoded as `R` (a subset of `RunRecord`'s fields will do).
    pub fn runs<R: DeserializeOwned>(&self) -> Result<Runs<R>, JournalError> {
        let mut out = Runs::default();
        let Some(t) = self.table(RUNS)? else {
            return Ok(out);
        };
        for item in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let seq = k.value();
            out.seqs.push(seq);
            match decode(|| format!("run {seq}"), v.value()) {
                Ok(r) => out.rows.push(r),
                Err(c) => out.corrupt.push(c),
            }
        }
        Ok(out)
    }

    /// The most recent run record, if any.
    pub fn last_run(&self) -> Result<Option<Result<RunRecord, Corrupt>>, JournalError> {
        let Some(t) = self.table(RUNS)? else {
            return Ok(None);
        };
        let last = t.last().map_err(|e| self.err(e))?;
        Ok(last.map(|(k, v)| decode(|| format!("run {}", k.value()), v.value())))
    }

    /// Calls `f` for every message record of run `seq`, in id order, streaming; stops at the
    /// first error `f` returns.
    pub fn for_each_message<E: From<JournalError>>(
        &self,
        seq: u64,
        mut f: impl FnMut(MessageId, MessageItem) -> Result<(), E>,
    ) -> Result<(), E> {
        let Some(t) = self.table(MESSAGES)? else {
            return Ok(());
        };
        let range = t
            .range((seq, [0u8; 16])..=(seq, [0xffu8; 16]))
            .map_err(|e| self.err(e))?;
        for item in range {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let id = MessageId(k.value().1);
            f(id, decode(|| message_key(seq, id), v.value()))?;
        }
        Ok(())
    }

    /// The records of `ids` in run `seq`, in order.
    pub fn messages(
        &self,
        seq: u64,
        ids: &[MessageId],
    ) -> Result<Vec<Option<MessageItem>>, JournalError> {
        let Some(t) = self.table(MESSAGES)? else {
            return Ok(ids.iter().map(|_| None).collect());
        };
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let v = t.get((seq, id.0)).map_err(|e| self.err(e))?;
            out.push(v.map(|v| decode(|| message_key(seq, id), v.value())));
        }
        Ok(out)
    }

    /// Calls `f` for every file run `seq` could not read, in path order, streaming.
    pub fn for_each_unreadable<E: From<JournalError>>(
        &self,
        seq: u64,
        mut f: impl FnMut(String, Result<UnreadableRecord, Corrupt>) -> Result<(), E>,
    ) -> Result<(), E> {
        let Some(t) = self.table(UNREADABLE)? else {
            return Ok(());
        };
        let range = match seq.checked_add(1) {
            Some(next) => t.range((seq, "")..(next, "")),
            None => t.range((seq, "")..),
        };
        for item in range.map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let path = k.value().1.to_string();
            let rec = decode(|| format!("unreadable {path} of run {seq}"), v.value());
            f(path, rec)?;
        }
        Ok(())
    }
}
