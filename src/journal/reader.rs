//! Read-only access to a journal, for `drain inspect` and for `drain serve`'s start-up check:
//! never creates, repairs or writes the file, and takes no writer's lock.
//!
//! The drain opens `journal.redb` in redb's `SingleWriter` mode, so the reader opens it
//! read-only in the same mode: it shares the file with a running drain and sees its committed
//! state. A journal whose writer died (SIGKILL, crash, or a process that exited without closing
//! it) is marked "recovery required", and redb refuses a read-only open of it while no writer is
//! live. Rather than repair the file (that is the next drain's job), the reader then opens it
//! through [`Overlay`]: a copy-on-write view in which redb's repair lands in memory and the file
//! stays untouched ([`OpenMode::Recovered`]). What is read that way is valid only if no writer
//! opened the file meanwhile; [`read`] checks that and reads again if one did.
//!
//! Everything is read in ONE read transaction, so runs, messages and unreadable files are one
//! consistent snapshot. Messages are streamed: memory does not grow with the journal. Record
//! decoding failures come back per record ([`Corrupt`]), for callers that list them.

use std::path::{Path, PathBuf};

use redb::{DatabaseError, ReadTransaction, ReadableDatabase};
use serde::de::DeserializeOwned;

use super::error::{Corrupt, JournalError};
use super::overlay::Overlay;
use super::records::{MessageRecord, RunRecord, UnreadableRecord};
use super::tables::{CACHE_BYTES, Runs, Snapshot, file_path};
use crate::base::MessageId;

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

/// A journal opened read-only, with one read transaction for everything.
pub struct Reader {
    path: PathBuf,
    mode: OpenMode,
    txn: ReadTransaction,
    // Declared after `txn`: the transaction is dropped first.
    _db: Db,
}

impl Reader {
    /// Opens the journal of `data_dir` read-only. Fails, naming the file, if it is missing or
    /// not a readable journal of this format. See [`read`] for the usual entry point.
    pub fn open(data_dir: &Path) -> Result<Reader, JournalError> {
        let path = file_path(data_dir);
        let db = open_db(&path)?;
        let (mode, txn) = match &db {
            Db::Shared(d) => (OpenMode::Shared, d.begin_read()),
            Db::Recovered(d) => (OpenMode::Recovered, d.begin_read()),
        };
        let txn = txn.map_err(|e| JournalError::db(&path, e))?;
        let reader = Reader {
            path,
            mode,
            txn,
            _db: db,
        };
        reader.snapshot().check_format()?;
        Ok(reader)
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn mode(&self) -> OpenMode {
        self.mode
    }

    fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            txn: &self.txn,
            path: &self.path,
        }
    }

    /// Every run, oldest first, decoded as `R` (`RunRecord`, or a struct with a subset of its
    /// fields), with the records that do not decode.
    pub fn runs<R: DeserializeOwned>(&self) -> Result<Runs<R>, JournalError> {
        self.snapshot().runs()
    }

    /// The most recent run, if any; a record that does not decode is an error.
    pub fn last_run(&self) -> Result<Option<RunRecord>, JournalError> {
        match self.snapshot().last_run()? {
            None => Ok(None),
            Some(rec) => rec.map(Some).map_err(|c| c.into_error(&self.path)),
        }
    }

    /// Calls `f` for every message record of run `seq`, in id order, streaming. A record that
    /// does not decode comes as `Err(Corrupt)`.
    pub fn for_each_message(
        &self,
        seq: u64,
        mut f: impl FnMut(MessageId, Result<MessageRecord, Corrupt>),
    ) -> Result<(), JournalError> {
        self.snapshot().for_each_message(seq, |id, rec| {
            f(id, rec);
            Ok::<(), JournalError>(())
        })
    }

    /// One message's record in run `seq`.
    pub fn message(
        &self,
        seq: u64,
        id: MessageId,
    ) -> Result<Option<Result<MessageRecord, Corrupt>>, JournalError> {
        Ok(self.snapshot().messages(seq, &[id])?.pop().flatten())
    }

    /// Calls `f` for every file run `seq` could not read, in path order, streaming.
    pub fn for_each_unreadable(
        &self,
        seq: u64,
        mut f: impl FnMut(String, Result<UnreadableRecord, Corrupt>),
    ) -> Result<(), JournalError> {
        self.snapshot().for_each_unreadable(seq, |path, rec| {
            f(path, rec);
            Ok::<(), JournalError>(())
        })
    }
}

fn open_db(path: &Path) -> Result<Db, JournalError> {
    let shared = redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
        .open_read_only(path);
    match shared {
        Ok(db) => Ok(Db::Shared(db)),
        // Left unclean by a writer that is gone (SIGKILL, crash): recover in memory.
        Err(DatabaseError::RepairAborted) => {
            let overlay = Overlay::open(path).map_err(|e| JournalError::Io {
                path: path.to_path_buf(),
                source: e.into(),
            })?;
            let db = redb::Builder::new()
                .set_cache_size(CACHE_BYTES)
                .create_with_backend(overlay)
                .map_err(|e| match JournalError::db(path, e) {
                    JournalError::Db { path, source } => {
                        JournalError::Unrecoverable { path, source }
                    }
                    other => other,
                })?;
            Ok(Db::Recovered(db))
        }
        Err(DatabaseError::DatabaseAlreadyOpen) => Err(JournalError::Busy {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(JournalError::db(path, e)),
    }
}

/// Whether a journal read through the overlay is still unattended: no writer has opened it
/// since (a read-only open still finds it unclean). If one has, what was read may mix two
/// states of the file.
fn still_unattended(path: &Path) -> bool {
    matches!(
        redb::Builder::new()
            .set_cache_size(1 << 20)
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .open_read_only(path),
        Err(DatabaseError::RepairAborted)
    )
}

/// Opens the journal of `data_dir` read-only and runs `f` on it. `Ok(None)` when there is no
/// journal (no file, or an empty one: no drain ever committed). When the journal was read
/// through the in-memory recovery and a writer opened it meanwhile, reads it again (now shared
/// with that writer; at most three attempts).
pub fn read<T, E: From<JournalError>>(
    data_dir: &Path,
    mut f: impl FnMut(&Reader) -> Result<T, E>,
) -> Result<Option<T>, E> {
    let path = file_path(data_dir);
    match std::fs::metadata(&path) {
        Ok(m) if m.len() > 0 => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(JournalError::Io {
                path,
                source: e.into(),
            }
            .into());
        }
    }
    let mut attempts = 0;
    loop {
        attempts += 1;
        let reader = Reader::open(data_dir)?;
        let recovered = reader.mode() == OpenMode::Recovered;
        let out = f(&reader)?;
        drop(reader);
        if !recovered || attempts >= 3 || still_unattended(&path) {
            return Ok(Some(out));
        }
        tracing::debug!(
            "a writer opened {} while it was read; reading again",
            path.display()
        );
    }
}

/// The last run of the journal in `data_dir`, read without writing anything: `Ok(None)` when
/// there is no journal or no run yet. A journal left open by a killed drain is read through
/// the in-memory recovery (its last run is then typically `running`). Errors name the file:
/// [`JournalError::CorruptFile`] for a file that is not a readable redb database,
/// [`JournalError::Corrupt`] for a last run record that does not decode,
/// [`JournalError::Version`] for another format, [`JournalError::Busy`] when another process
/// holds it exclusively, [`JournalError::Db`] / [`JournalError::Io`] otherwise.
pub fn last_run_status(data_dir: &Path) -> Result<Option<RunRecord>, JournalError> {
    Ok(read(data_dir, Reader::last_run)?.flatten())
}
