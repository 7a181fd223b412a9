//! The spool: an instance's queued messages on disk, one file per message.
//!
//! Layout under the data directory:
//!
//! ```text
//! spool/<queue-kind>/<id>.msg     one message (format in `format`), named only by a parsed id
//! spool/<queue-kind>/.<id>.<sender>.<run>.staged
//!                                 a received copy not yet answered for (see `staged`)
//! spool/.tmp/                     files being written; never a message until renamed
//! ```
//!
//! Invariants: a message file (`<id>.msg`) appears only whole: written directly (temp file,
//! fsync, rename, directory fsync), or published by a rename from a staged copy made durable
//! first (in [`SyncMode::Filesystem`], a group of staged copies by one `syncfs`: see `sync`).
//! It disappears only through [`Spool::remove`], which fsyncs the directory so the removal
//! survives a crash. Scanning streams the directories (memory does not grow with the number of
//! files). Callers: the CLI (`spool add|ls|cat`), the drain engine (scan, read, remove) and the
//! intake server (store).

mod file;
pub mod format;
mod staged;
mod sync;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use format::{FormatError, Header};
pub use staged::Staged;
pub use sync::{SpoolSync, SyncMode};

use crate::base::durable::{self, FileError};
use crate::base::{ContentHash, MessageId, QueueKind};

/// Why a spool operation failed, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: corrupt spool file: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("{path}: file name is not <id>.msg")]
    BadName { path: PathBuf },
    #[error(
        "{path}: header says id {header_id} in queue {header_queue}, but the file is named otherwise"
    )]
    Misplaced {
        path: PathBuf,
        header_id: MessageId,
        header_queue: QueueKind,
    },
    #[error("message {0} is not in the spool")]
    NotFound(MessageId),
    #[error("{path}: {kind}, not a regular file; left in place")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "{path}: {size} bytes, larger than the largest message read ({limit} bytes; a drain reads \
         messages up to half of --max-in-flight-bytes, at most 256 MiB)"
    )]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    /// Two files carry one message id (in two queue directories): only one may travel, and
    /// which one is the operator's call. Both stay in place.
    #[error(
        "{path}: message id {id} is also the id of {other}; one id may be in one queue only: \
         both are left in place (move or remove one, then drain again)"
    )]
    IdConflict {
        path: PathBuf,
        id: MessageId,
        other: PathBuf,
    },
    /// A message this run already delivered and removed is back in the spool; sending it again
    /// would deliver it twice.
    #[error(
        "{path}: message {id} was delivered and removed earlier in this run, but the file is \
         back; left in place (it is already on a destination)"
    )]
    Reappeared { path: PathBuf, id: MessageId },
}

impl From<FileError> for SpoolError {
    fn from(e: FileError) -> Self {
        SpoolError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

impl SpoolError {
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        SpoolError::Io {
            path: path.into(),
            source,
        }
    }

    /// The file this error is about, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            SpoolError::Io { path, .. }
            | SpoolError::Corrupt { path, .. }
            | SpoolError::BadName { path }
            | SpoolError::Misplaced { path, .. }
            | SpoolError::NotRegular { path, .. }
            | SpoolError::TooLarge { path, .. }
            | SpoolError::IdConflict { path, .. }
            | SpoolError::Reappeared { path, .. } => Some(path),
            SpoolError::NotFound(_) => None,
        }
    }

    /// A short machine-friendly reason: `unreadable`, `corrupt`, `id_conflict` or `reappeared`.
    pub fn kind(&self) -> &'static str {
        match self {
            SpoolError::IdConflict { .. } => "id_conflict",
            SpoolError::Reappeared { .. } => "reappeared",
            SpoolError::Io { .. }
            | SpoolError::NotFound(_)
            | SpoolError::NotRegular { .. }
            | SpoolError::TooLarge { .. } => "unreadable",
            _ => "corrupt",
        }
    }
}

/// The largest spool file ever read into memory (the receivers' default request limit).
pub const MAX_MESSAGE_SIZE: u64 = 256 << 20;

/// A message read from the spool: its whole file and what it says.
#[derive(Clone, Debug)]
pub struct Message {
    pub header: Header,
    /// The whole file, exactly as it travels.
    pub bytes: bytes::Bytes,
    pub body_offset: usize,
    pub hash: ContentHash,
}

impl Message {
    /// Parses and hashes a whole file's bytes.
    pub fn from_bytes(bytes: bytes::Bytes) -> Result<Self, FormatError> {
        let parsed = format::parse(&bytes)?;
        let hash = format::hash(&bytes);
        Ok(Message {
            header: parsed.header,
            body_offset: parsed.body_offset,
            bytes,
            hash,
        })
    }

    pub fn body(&self) -> &[u8] {
        &self.bytes[self.body_offset..]
    }
}

/// One file found by a scan, not yet read.
#[derive(Clone, Debug)]
pub struct Entry {
    pub queue: QueueKind,
    pub id: MessageId,
    pub path: PathBuf,
}

/// The spool of one data directory.
#[derive(Clone, Debug)]
pub struct Spool {
    root: PathBuf,
    sync: SyncMode,
}

impl Spool {
    /// Opens (creating if needed) the spool under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Spool, SpoolError> {
        let root = data_dir.join("spool");
        let spool = Spool {
            root,
            sync: SyncMode::File,
        };
        for dir in QueueKind::ALL
            .iter()
            .map(|q| spool.queue_dir(*q))
            .chain([spool.tmp_dir()])
        {
            // Durable as created: create_private_dir_all fsyncs the parent of each directory
            // it makes (`spool/` in the data directory, each queue directory in `spool/`).
            if !dir.is_dir() {
                durable::create_private_dir_all(&dir)?;
            }
        }
        Ok(spool)
    }

    /// This spool, writing with `mode` (see `sync`); a spool opens in [`SyncMode::File`].
    pub fn with_sync(self, mode: SyncMode) -> Spool {
        Spool { sync: mode, ..self }
    }

    pub fn sync_mode(&self) -> SyncMode {
        self.sync
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn queue_dir(&self, queue: QueueKind) -> PathBuf {
        self.root.join(queue.as_str())
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join(".tmp")
    }

    /// Where a message lives. The id is a parsed value, so this never leaves the spool.
    pub fn path_of(&self, queue: QueueKind, id: MessageId) -> PathBuf {
        self.queue_dir(queue).join(format!("{id}.msg"))
    }

    /// Stores a new message built from an envelope and body; returns it.
    pub fn add(&self, header: &Header, body: &[u8]) -> Result<Message, SpoolError> {
        let bytes = format::encode(header, body).map_err(|source| SpoolError::Corrupt {
            path: self.path_of(header.queue, header.id),
            source,
        })?;
        let msg = Message::from_bytes(bytes.into()).map_err(|source| SpoolError::Corrupt {
            path: self.path_of(header.queue, header.id),
            source,
        })?;
        self.store_many(std::slice::from_ref(&msg))?;
        Ok(msg)
    }

    /// Stores whole messages durably, sharing the directory fsyncs between them (group
    /// commit): each file is written to `.tmp`, fsynced and renamed into place, then each
    /// queue directory touched is fsynced once. When this returns `Ok`, every file survives a
    /// crash.
    pub fn store_many(&self, msgs: &[Message]) -> Result<(), SpoolError> {
        self.store_each(msgs).into_iter().collect()
    }

    /// [`Spool::store_many`] with an outcome per message: a file that cannot be written fails
    /// alone (its error names it) and the others are still stored. A queue directory whose
    /// fsync fails fails every message written into it. Always an fsync per file, whatever
    /// the [`SyncMode`]: these names are messages at once, so the name must never be durable
    /// before its content.
    pub fn store_each(&self, msgs: &[Message]) -> Vec<Result<(), SpoolError>> {
        self.write_each_fsynced(msgs, |m| self.path_of(m.header.queue, m.header.id))
            .into_iter()
            .map(|r| r.map(|_| ()))
            .collect()
    }

    /// Writes each message to the path `dest` gives it in its queue directory (temp file in
    /// `.tmp`, rename), durably as this spool's [`SyncMode`] says. One outcome per message: the
    /// path written, or the error naming it; a sync that fails fails every message it was to
    /// cover. Used by [`Spool::stage_each`], whose names are not messages until published.
    fn write_each(
        &self,
        msgs: &[Message],
        dest: impl Fn(&Message) -> PathBuf,
    ) -> Vec<Result<PathBuf, SpoolError>> {
        match self.sync {
            SyncMode::File => self.write_each_fsynced(msgs, dest),
            SyncMode::Filesystem => self.write_each_then_syncfs(msgs, dest),
        }
    }

    /// An fsync per file before its rename, then one fsync per queue directory touched.
    fn write_each_fsynced(
        &self,
        msgs: &[Message],
        dest: impl Fn(&Message) -> PathBuf,
    ) -> Vec<Result<PathBuf, SpoolError>> {
        let mut results = self.write_files(msgs, &dest, durable::Sync::Now);
        for q in QueueKind::ALL {
            let written: Vec<usize> = (0..msgs.len())
                .filter(|&i| msgs[i].header.queue == q && results[i].is_ok())
                .collect();
            if written.is_empty() {
                continue;
            }
            if let Err(e) = sync_dir(&self.queue_dir(q)) {
                for i in written {
                    let why = std::io::Error::other(format!("written, but {e}"));
                    results[i] = Err(SpoolError::io(dest(&msgs[i]), why));
                }
            }
        }
        results
    }

    /// Every file written and renamed without a sync, then one `syncfs` of the spool's file
    /// system for all of them (the descriptor opened first: see `sync`).
    fn write_each_then_syncfs(
        &self,
        msgs: &[Message],
        dest: impl Fn(&Message) -> PathBuf,
    ) -> Vec<Result<PathBuf, SpoolError>> {
        let barrier = match sync::Barrier::open(&self.root) {
            Ok(b) => b,
            Err(e) => {
                let why = format!("cannot open the spool for syncfs: {e}");
                return msgs
                    .iter()
                    .map(|m| Err(SpoolError::io(dest(m), std::io::Error::other(why.clone()))))
                    .collect();
            }
        };
        let mut results = self.write_files(msgs, &dest, durable::Sync::Later);
        if let Err(e) = barrier.sync() {
            for (r, m) in results.iter_mut().zip(msgs) {
                if r.is_ok() {
                    let why = format!("written, but syncfs of {}: {e}", self.root.display());
                    *r = Err(SpoolError::io(dest(m), std::io::Error::other(why)));
                }
            }
        }
        results
    }

    /// Each message to a temp file in `.tmp`, renamed to `dest`; its own fsync as `sync` says.
    fn write_files(
        &self,
        msgs: &[Message],
        dest: &impl Fn(&Message) -> PathBuf,
        sync: durable::Sync,
    ) -> Vec<Result<PathBuf, SpoolError>> {
        msgs.iter()
            .map(|m| {
                let nonce = MessageId::random().map_err(|e| SpoolError::io(self.tmp_dir(), e))?;
                let tmp = self.tmp_dir().join(format!("{}.{nonce}.tmp", m.header.id));
                let path = dest(m);
                durable::write_then_rename(&tmp, &path, &m.bytes, sync)?;
                Ok(path)
            })
            .collect()
    }

    /// Removes temp files older than `age` left in `.tmp` by a crash mid-write (they never
    /// became messages). Called by whoever holds the instance lock; the age keeps it clear of
    /// a `spool add` writing right now. Returns how many were removed.
    pub fn clean_stale_tmp(&self, age: std::time::Duration) -> usize {
        let Ok(dir) = fs::read_dir(self.tmp_dir()) else {
            return 0;
        };
        let mut removed = 0;
        for de in dir.flatten() {
            let old = de
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|e| e >= age);
            if old && fs::remove_file(de.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(
                "removed {removed} stale temporary files from {}",
                self.tmp_dir().display()
            );
        }
        removed
    }

    /// Reads and checks one message file of at most [`MAX_MESSAGE_SIZE`] bytes. The name must
    /// match the header.
    pub fn read(&self, entry: &Entry) -> Result<Message, SpoolError> {
        self.read_limited(entry, MAX_MESSAGE_SIZE)
    }

    /// Reads and checks one message file of at most `limit` bytes (a larger file is an error
    /// naming it, and is not read). Only a regular file is opened; see `file`.
    pub fn read_limited(&self, entry: &Entry, limit: u64) -> Result<Message, SpoolError> {
        let bytes = file::read_message_file(&entry.path, limit.min(MAX_MESSAGE_SIZE))?;
        let msg = Message::from_bytes(bytes.into()).map_err(|source| SpoolError::Corrupt {
            path: entry.path.clone(),
            source,
        })?;
        if msg.header.id != entry.id || msg.header.queue != entry.queue {
            return Err(SpoolError::Misplaced {
                path: entry.path.clone(),
                header_id: msg.header.id,
                header_queue: msg.header.queue,
            });
        }
        Ok(msg)
    }

    /// Finds a message by id in any queue.
    pub fn find(&self, id: MessageId) -> Option<Entry> {
        QueueKind::ALL.into_iter().find_map(|queue| {
            let path = self.path_of(queue, id);
            path.exists().then_some(Entry { queue, id, path })
        })
    }

    /// Reads a message by id from whichever queue holds it.
    pub fn get(&self, id: MessageId) -> Result<Message, SpoolError> {
        let entry = self.find(id).ok_or(SpoolError::NotFound(id))?;
        self.read(&entry)
    }

    /// Removes message files durably: unlink each, then fsync each directory once.
    /// Returns, per entry, the error if its removal failed (a file already gone is removed).
    pub fn remove_many(&self, entries: &[Entry]) -> Vec<Result<(), SpoolError>> {
        let mut out = self.unlink_many(entries);
        for q in QueueKind::ALL {
            if entries.iter().any(|e| e.queue == q)
                && let Err(err) = sync_dir(&self.queue_dir(q))
            {
                // The unlink is not known durable: report every removal in that directory.
                let msg = err.to_string();
                for (i, e) in entries.iter().enumerate() {
                    if e.queue == q && out[i].is_ok() {
                        out[i] = Err(SpoolError::io(&e.path, io::Error::other(msg.clone())));
                    }
                }
            }
        }
        out
    }

    /// Unlinks message files without syncing their directories: a power cut may bring them
    /// back until [`Spool::sync_queue_dirs`]. For a caller whose journal says what to do with
    /// a file that comes back (the drain engine). A file already gone counts as removed.
    pub fn unlink_many(&self, entries: &[Entry]) -> Vec<Result<(), SpoolError>> {
        entries
            .iter()
            .map(|e| match fs::remove_file(&e.path) {
                Ok(()) => Ok(()),
                Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(err) => Err(SpoolError::io(&e.path, err)),
            })
            .collect()
    }

    /// Fsyncs every queue directory that exists: every earlier unlink in them is durable.
    pub fn sync_queue_dirs(&self) -> Result<(), SpoolError> {
        for q in QueueKind::ALL {
            let dir = self.queue_dir(q);
            if dir.is_dir() {
                sync_dir(&dir)?;
            }
        }
        Ok(())
    }

    /// Streams every file in the spool, queue by queue, without reading them. A name that is
    /// not `<id>.msg` is reported as [`SpoolError::BadName`] so that it is never ignored.
    pub fn scan(&self) -> Scan {
        Scan {
            spool: self.clone(),
            queue_idx: 0,
            dir: None,
        }
    }
}

/// Streaming iterator over the spool's files (see [`Spool::scan`]).
pub struct Scan {
    spool: Spool,
    queue_idx: usize,
    dir: Option<fs::ReadDir>,
}

impl Iterator for Scan {
    type Item = Result<Entry, SpoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let queue = *QueueKind::ALL.get(self.queue_idx)?;
            let dir_path = self.spool.queue_dir(queue);
            if self.dir.is_none() {
                match fs::read_dir(&dir_path) {
                    Ok(d) => self.dir = Some(d),
                    Err(e) => {
                        self.queue_idx += 1;
                        if e.kind() == io::ErrorKind::NotFound {
                            continue;
                        }
                        return Some(Err(SpoolError::io(dir_path, e)));
                    }
                }
            }
            let dir = self.dir.as_mut()?;
            match dir.next() {
                None => {
                    self.dir = None;
                    self.queue_idx += 1;
                }
                Some(Err(e)) => return Some(Err(SpoolError::io(dir_path, e))),
                Some(Ok(de)) => {
                    let path = de.path();
                    let name = de.file_name();
                    // Not a message yet: the intake settles it (see `staged`).
                    if name.to_str().and_then(staged::parse_name).is_some() {
                        continue;
                    }
                    let id = name
                        .to_str()
                        .and_then(|n| n.strip_suffix(".msg"))
                        .and_then(|n| n.parse::<MessageId>().ok());
                    return Some(match id {
                        Some(id) => Ok(Entry { queue, id, path }),
                        None => Err(SpoolError::BadName { path }),
                    });
                }
            }
        }
    }
}

/// Reads a whole spool file (a regular file of at most [`MAX_MESSAGE_SIZE`] bytes), naming
/// it on error.
pub fn read_file(path: &Path) -> Result<Vec<u8>, SpoolError> {
    file::read_message_file(path, MAX_MESSAGE_SIZE)
}

/// A message of `queue` with `body`, built in memory and a fresh id: for unit tests.
#[cfg(test)]
pub(crate) fn test_message(queue: QueueKind, body: &[u8]) -> Message {
    let header = Header {
        id: MessageId::random().expect("id"),
        queue,
        from: "a@example.com".into(),
        to: vec!["b@example.com".into()],
        attempts: 0,
        next_retry_at: None,
        created_at: crate::base::Timestamp::now(),
        properties: Default::default(),
        body_len: 0,
    };
    let bytes = format::encode(&header, body).expect("encode");
    Message::from_bytes(bytes.into()).expect("parse")
}

/// fsyncs a spool directory (see [`durable::sync_dir`]).
pub fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    Ok(durable::sync_dir(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stale_temp_files_are_cleaned() {
        let dir =
            std::env::temp_dir().join(format!("drain-spool-tmp-{}", MessageId::random().unwrap()));
        let spool = Spool::open(&dir).unwrap();
        let old = spool.tmp_dir().join("old.tmp");
        let new = spool.tmp_dir().join("new.tmp");
        fs::write(&old, b"x").unwrap();
        fs::write(&new, b"y").unwrap();
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        assert_eq!(
            spool.clean_stale_tmp(std::time::Duration::from_secs(3600)),
            1
        );
        assert!(!old.exists() && new.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
