//! Read-only access to the journal for `drain inspect`.
//!
//! The drain opens `journal.redb` in redb's `SingleWriter` mode, so this reader opens it with
//! `Builder::open_read_only` in the same mode: it shares the file with a running drain (or a
//! `drain serve` checking the last run) and sees its committed state, without taking the writer's
//! lock and without writing a byte.
//!
//! A journal whose writer died (SIGKILL, crash, or a process that exited without closing it)
//! is marked "recovery required", and redb refuses a read-only open of it while no writer is
//! live. Rather than repair the file (that is `drain resume`'s job, and inspect must not
//! modify anything), the reader then opens it through [`Overlay`]: a copy-on-write view of the
//! file in which redb's repair writes land in memory and the file stays untouched.
//!
//! Everything is read in ONE read transaction, so runs, messages and unreadable files are one
//! consistent snapshot. Messages are streamed (`for_each_message`): memory does not grow with
//! the journal. A record whose JSON does not decode is handed to the caller as an error naming
//! its key, not raised: a corrupt record is an anomaly to report, not a reason to stop.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use redb::{DatabaseError, ReadTransaction, ReadableDatabase, ReadableTable, TableError};
use serde::{Deserialize, Serialize};

use super::overlay::Overlay;
use crate::base::{MessageId, Timestamp};
use crate::journal::{
    FORMAT_VERSION, MESSAGES, META, MessageRecord, RUNS, RunStatus, UNREADABLE, UnreadableRecord,
};

/// redb's page cache for this reader: fixed, like the writer's, so memory does not grow with
/// the journal.
const CACHE_BYTES: usize = 16 << 20;

/// A run as `drain inspect` shows it: the run record without its options and final report
/// (those can be large and are not needed here; unknown fields are skipped while decoding).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRow {
    pub seq: u64,
    pub id: String,
    pub status: RunStatus,
    pub started_at: Timestamp,
    #[serde(default)]
    pub ended_at: Option<Timestamp>,
    pub destinations: Vec<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub resumed: u32,
}

/// A record that could not be decoded: its key (`run 3`, `message <id> of run 3`, ...) and why.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Corrupt {
    pub key: String,
    pub reason: String,
}

/// How the journal was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Shared with its writer (or with nobody): the committed state, read directly.
    Shared,
    /// The journal was left unclean by a writer that is gone; read through a copy-on-write
    /// overlay in memory, with redb's recovery applied there and not to the file.
    Recovered,
}

enum Db {
    Shared(redb::ReadOnlyDatabase),
    Recovered(redb::Database),
}

/// The journal, opened read-only, with one read transaction for everything.
pub struct Reader {
    path: PathBuf,
    mode: OpenMode,
    txn: ReadTransaction,
    // Declared after `txn`: the transaction is dropped first.
    _db: Db,
}

impl Reader {
    /// Opens `path` read-only. Fails, naming the file, if it is not a readable journal of this
    /// format.
    pub fn open(path: &Path) -> anyhow::Result<Reader> {
        let shared = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .open_read_only(path);
        let db = match shared {
            Ok(db) => Db::Shared(db),
            // Left unclean by a writer that is gone (SIGKILL, crash): recover in memory.
            Err(DatabaseError::RepairAborted) => {
                let overlay = Overlay::open(path)
                    .with_context(|| format!("journal {}: cannot open it", path.display()))?;
                let db = redb::Builder::new()
                    .set_cache_size(CACHE_BYTES)
                    .create_with_backend(overlay)
                    .with_context(|| {
                        format!(
                            "journal {}: it was not closed cleanly and cannot be recovered \
                             (in memory; the file is untouched)",
                            path.display()
                        )
                    })?;
                Db::Recovered(db)
            }
            Err(DatabaseError::DatabaseAlreadyOpen) => anyhow::bail!(
                "journal {}: another process holds it exclusively (a drain or serve of an \
                 older build?); try again once it has ended",
                path.display()
            ),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "journal {}: cannot open it read-only",
                    path.display()
                )));
            }
        };
        let (mode, txn) = match &db {
            Db::Shared(d) => (OpenMode::Shared, d.begin_read()),
            Db::Recovered(d) => (OpenMode::Recovered, d.begin_read()),
        };
        let txn = txn.with_context(|| format!("journal {}: cannot read it", path.display()))?;
        let reader = Reader {
            path: path.to_path_buf(),
            mode,
            txn,
            _db: db,
        };
        reader.check_format()?;
        Ok(reader)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn mode(&self) -> OpenMode {
        self.mode
    }

    fn err(&self, what: &str) -> impl Fn(redb::StorageError) -> anyhow::Error + '_ {
        let what = what.to_string();
        move |e| {
            anyhow::Error::new(e).context(format!(
                "journal {}: cannot read {what}",
                self.path.display()
            ))
        }
    }

    /// `None` when the table does not exist yet (a journal created by a writer that died
    /// before its first commit).
    fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: redb::TableDefinition<K, V>,
    ) -> anyhow::Result<Option<redb::ReadOnlyTable<K, V>>> {
        match self.txn.open_table(def) {
            Ok(t) => Ok(Some(t)),
            Err(TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!(
                "journal {}: cannot open table {}",
                self.path.display(),
                redb::TableHandle::name(&def)
            ))),
        }
    }

    fn check_format(&self) -> anyhow::Result<()> {
        let Some(meta) = self.table(META)? else {
            return Ok(());
        };
        let found = meta.get("format").map_err(self.err("the format version"))?;
        match found.map(|v| v.value().to_string()) {
            None => Ok(()),
            Some(v) if v == FORMAT_VERSION => Ok(()),
            Some(v) => anyhow::bail!(
                "journal {}: format version {v} is not supported (this build reads {FORMAT_VERSION})",
                self.path.display()
            ),
        }
    }

    /// Every run, oldest first, and the run records that do not decode. The seq of a corrupt
    /// run is still returned in `seqs` (every key of the table, in order).
    pub fn runs(&self) -> anyhow::Result<Runs> {
        let mut out = Runs::default();
        let Some(t) = self.table(RUNS)? else {
            return Ok(out);
        };
        for item in t.iter().map_err(self.err("the runs"))? {
            let (k, v) = item.map_err(self.err("the runs"))?;
            let seq = k.value();
            out.seqs.push(seq);
            match serde_json::from_slice::<RunRow>(v.value()) {
                Ok(r) => out.rows.push(r),
                Err(e) => out.corrupt.push(Corrupt {
                    key: format!("run {seq}"),
                    reason: e.to_string(),
                }),
            }
        }
        Ok(out)
    }

    /// Calls `f` for every message record of run `seq`, in id order, streaming. A record that
    /// does not decode comes as `Err(Corrupt)`.
    pub fn for_each_message(
        &self,
        seq: u64,
        mut f: impl FnMut(MessageId, Result<MessageRecord, Corrupt>),
    ) -> anyhow::Result<()> {
        let Some(t) = self.table(MESSAGES)? else {
            return Ok(());
        };
        let what = format!("the messages of run {seq}");
        for item in t
            .range((seq, [0u8; 16])..=(seq, [0xffu8; 16]))
            .map_err(self.err(&what))?
        {
            let (k, v) = item.map_err(self.err(&what))?;
            let id = MessageId(k.value().1);
            f(id, decode_message(seq, id, v.value()));
        }
        Ok(())
    }

    /// One message's record in run `seq`.
    pub fn message(
        &self,
        seq: u64,
        id: MessageId,
    ) -> anyhow::Result<Option<Result<MessageRecord, Corrupt>>> {
        let Some(t) = self.table(MESSAGES)? else {
            return Ok(None);
        };
        let v = t
            .get((seq, id.0))
            .map_err(self.err(&format!("message {id} of run {seq}")))?;
        Ok(v.map(|v| decode_message(seq, id, v.value())))
    }

    /// Calls `f` for every file run `seq` could not read, in path order, streaming.
    pub fn for_each_unreadable(
        &self,
        seq: u64,
        mut f: impl FnMut(String, Result<UnreadableRecord, Corrupt>),
    ) -> anyhow::Result<()> {
        let Some(t) = self.table(UNREADABLE)? else {
            return Ok(());
        };
        let what = format!("the unreadable files of run {seq}");
        let range = match seq.checked_add(1) {
            Some(next) => t.range((seq, "")..(next, "")),
            None => t.range((seq, "")..),
        };
        for item in range.map_err(self.err(&what))? {
            let (k, v) = item.map_err(self.err(&what))?;
            let path = k.value().1.to_string();
            let rec = serde_json::from_slice(v.value()).map_err(|e| Corrupt {
                key: format!("unreadable {path} of run {seq}"),
                reason: e.to_string(),
            });
            f(path, rec);
        }
        Ok(())
    }
}

fn decode_message(seq: u64, id: MessageId, bytes: &[u8]) -> Result<MessageRecord, Corrupt> {
    serde_json::from_slice(bytes).map_err(|e| Corrupt {
        key: format!("message {id} of run {seq}"),
        reason: e.to_string(),
    })
}

/// The `runs` table.
#[derive(Debug, Default)]
pub struct Runs {
    /// Every key, in order (decoded or not).
    pub seqs: Vec<u64>,
    pub rows: Vec<RunRow>,
    pub corrupt: Vec<Corrupt>,
}

/// Whether a journal read through the overlay is still unattended: no writer has opened it
/// since (a read-only open still finds it unclean). If one has, what was read may mix two
/// states of the file, and the caller reads again, now shared with that writer.
pub fn still_unattended(path: &Path) -> bool {
    matches!(
        redb::Builder::new()
            .set_cache_size(1 << 20)
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .open_read_only(path),
        Err(DatabaseError::RepairAborted)
    )
}
