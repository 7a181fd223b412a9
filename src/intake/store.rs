//! Where received messages become durable: the receiver's spool plus its dedupe store
//! (`<data-dir>/intake.redb`).
//!
//! Order per message, and why it is safe at every crash point:
//! 1. verify the hash and the file format (nothing written yet);
//! 2. already in the dedupe table for (sender, run, hash), or already in the spool with the
//!    same hash: answer `already_held`, store nothing (invariant 3);
//! 3. write the spool file durably (temp, fsync, rename, directory fsync) — a crash here
//!    leaves either no file or a whole one; a retry then finds the file (step 2);
//! 4. commit the dedupe record (group commit shared with concurrent requests);
//! 5. only then acknowledge (invariant 1).
//!
//! Dedupe keys are scoped to the sender's instance id and run id, so a message that comes back
//! in a later run (A->B, B->A, A->B) is stored again rather than mistaken for a duplicate.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};

use crate::base::{MessageId, QueueKind, Timestamp};
use crate::events::{Event, EventQueue};
use crate::groupcommit::Committer;
use crate::spool::{Message, Spool, SpoolError};
use crate::wire::{Frame, ItemResult, Outcome, RejectCode};

/// How the reasons of rejected messages begin (the metrics classify rejections by them).
pub(crate) const REASON_HASH_MISMATCH: &str = "hash mismatch";
pub(crate) const REASON_MALFORMED: &str = "malformed spool file";
pub(crate) const REASON_ID_CONFLICT: &str = "id conflict";

/// (sender instance id, sender run id, message hash) -> `DedupeRecord` JSON.
const DEDUPE: TableDefinition<(&str, &str, [u8; 32]), &[u8]> = TableDefinition::new("dedupe");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    File(#[from] crate::base::FileError),
    #[error("intake database {path}: {reason}")]
    Db { path: String, reason: String },
    #[error("intake worker failed: {0}")]
    Worker(String),
}

#[derive(Serialize, Deserialize)]
struct DedupeRecord {
    id: MessageId,
    stored_at: Timestamp,
}

struct DedupeEntry {
    sender: String,
    run: String,
    hash: [u8; 32],
    id: MessageId,
    /// Not stored in the table; names the queue in the message's intake event.
    queue: QueueKind,
}

impl DedupeEntry {
    fn new(sender: &str, run: &str, hash: [u8; 32], id: MessageId, queue: QueueKind) -> Self {
        DedupeEntry {
            sender: sender.to_string(),
            run: run.to_string(),
            hash,
            id,
            queue,
        }
    }
}

/// One request to the dedupe store's writer.
enum Write {
    Insert(Vec<DedupeEntry>),
    /// The sender's run finished: its keys are no longer needed.
    ForgetRun {
        sender: String,
        run: String,
    },
    /// Drop keys stored before this time (retention).
    ExpireBefore(Timestamp),
}

/// The receiving side's storage.
#[derive(Clone)]
pub struct Store {
    spool: Spool,
    db: Arc<Database>,
    db_path: String,
    committer: Committer<Write, String>,
    workers: Arc<Semaphore>,
    worker_count: usize,
    inflight: Arc<InFlight>,
    instance: String,
    events: EventQueue,
}

/// Transfers being processed, so that a query waits for those that started before it: a
/// sender whose connection dropped asks "do you hold these?" only once the request it lost
/// has either stored its messages or stopped, never in between.
#[derive(Default)]
struct InFlight {
    state: Mutex<(u64, BTreeSet<u64>)>,
    changed: Notify,
}

/// Held from the moment a transfer request is accepted until its messages are durable (or it
/// failed); kept alive by the storing task even if the client disconnects.
pub struct TransferGuard {
    inflight: Arc<InFlight>,
    seq: u64,
}

impl Drop for TransferGuard {
    fn drop(&mut self) {
        let mut st = self
            .inflight
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        st.1.remove(&self.seq);
        drop(st);
        self.inflight.changed.notify_waiters();
    }
}

impl Store {
    pub fn open(
        data_dir: &Path,
        workers: usize,
        instance: &str,
        events: EventQueue,
    ) -> Result<Store, StoreError> {
        let spool = Spool::open(data_dir)?;
        let path = data_dir.join("intake.redb");
        let db_path = path.display().to_string();
        let dberr = |e: &dyn std::fmt::Display| StoreError::Db {
            path: db_path.clone(),
            reason: e.to_string(),
        };
        // A fixed cache: memory must not grow with the number of messages taken in.
        let db = redb::Builder::new()
            .set_cache_size(16 << 20)
            .create(&path)
            .map_err(|e| dberr(&e))?;
        let txn = db.begin_write().map_err(|e| dberr(&e))?;
        txn.open_table(DEDUPE).map_err(|e| dberr(&e))?;
        txn.commit().map_err(|e| dberr(&e))?;
        let db = Arc::new(db);
        let committer = Committer::spawn("intake-writer", db.clone(), |txn, writes: &[Write]| {
            let mut t = txn.open_table(DEDUPE).map_err(|e| e.to_string())?;
            for w in writes {
                match w {
                    Write::Insert(entries) => {
                        for e in entries {
                            let rec = DedupeRecord {
                                id: e.id,
                                stored_at: Timestamp::now(),
                            };
                            let v = serde_json::to_vec(&rec).map_err(|e| e.to_string())?;
                            t.insert((e.sender.as_str(), e.run.as_str(), e.hash), v.as_slice())
                                .map_err(|e| e.to_string())?;
                        }
                    }
                    Write::ForgetRun { sender, run } => {
                        let (s, r) = (sender.as_str(), run.as_str());
                        t.retain_in((s, r, [0u8; 32])..=(s, r, [0xffu8; 32]), |_, _| false)
                            .map_err(|e| e.to_string())?;
                    }
                    Write::ExpireBefore(cutoff) => {
                        t.retain(|_, v| {
                            serde_json::from_slice::<DedupeRecord>(v)
                                .map(|r| r.stored_at >= *cutoff)
                                .unwrap_or(false)
                        })
                        .map_err(|e| e.to_string())?;
                    }
                }
            }
            Ok(())
        })
        .map_err(|e| dberr(&e))?;
        let worker_count = workers.max(1);
        Ok(Store {
            spool,
            db,
            db_path,
            committer,
            workers: Arc::new(Semaphore::new(worker_count)),
            worker_count,
            inflight: Arc::default(),
            instance: instance.to_string(),
            events,
        })
    }

    /// Stops the writer after what is queued and closes the database cleanly if this is the
    /// last handle.
    pub fn close(self) {
        self.committer.close();
        let Store { db, spool, .. } = self;
        drop(spool);
        if let Ok(db) = Arc::try_unwrap(db)
            && let Err(e) = db.close()
        {
            tracing::warn!("closing the intake database: {e}");
        }
    }

    /// Registers a transfer request as in progress.
    pub fn begin_transfer(&self) -> TransferGuard {
        let mut st = self
            .inflight
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        st.0 += 1;
        let seq = st.0;
        st.1.insert(seq);
        TransferGuard {
            inflight: self.inflight.clone(),
            seq,
        }
    }

    /// Waits until every transfer that began before this call has finished.
    pub async fn wait_for_earlier_transfers(&self) {
        let snapshot = self
            .inflight
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0;
        loop {
            let changed = self.inflight.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let oldest = self
                .inflight
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .1
                .first()
                .copied();
            match oldest {
                Some(seq) if seq <= snapshot => changed.await,
                _ => return,
            }
        }
    }

    fn db_err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            path: self.db_path.clone(),
            reason: e.to_string(),
        }
    }

    /// Forgets the dedupe keys of a finished run.
    pub async fn forget_run(&self, sender: &str, run: &str) -> Result<(), StoreError> {
        self.committer
            .submit(Write::ForgetRun {
                sender: sender.to_string(),
                run: run.to_string(),
            })
            .await
            .map_err(|e| self.db_err(e))
    }

    /// Drops dedupe keys older than `retention`.
    pub async fn expire(&self, retention: std::time::Duration) -> Result<(), StoreError> {
        let cutoff = time::OffsetDateTime::now_utc() - retention;
        self.committer
            .submit(Write::ExpireBefore(Timestamp(cutoff)))
            .await
            .map_err(|e| self.db_err(e))
    }

    /// Which of `asked` (id, hash) this instance holds for (sender, run): recorded in the
    /// dedupe table, or present in the spool with that hash (stored by a request whose
    /// dedupe record was lost to a crash; the record is added now and the file's directory
    /// fsynced, so the answer is durable).
    pub async fn held(
        &self,
        sender: &str,
        run: &str,
        asked: Vec<(MessageId, [u8; 32])>,
    ) -> Result<Vec<[u8; 32]>, StoreError> {
        let (s, r) = (sender.to_string(), run.to_string());
        self.blocking_then_record(move |st| st.held_blocking(&s, &r, &asked))
            .await
    }

    #[allow(clippy::type_complexity)]
    fn held_blocking(
        &self,
        sender: &str,
        run: &str,
        asked: &[(MessageId, [u8; 32])],
    ) -> Result<(Vec<[u8; 32]>, Vec<DedupeEntry>), StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let t = txn.open_table(DEDUPE).map_err(|e| self.db_err(e))?;
        let mut held = Vec::new();
        let mut entries = Vec::new();
        let mut dirs = BTreeSet::new();
        for (id, h) in asked {
            if t.get((sender, run, *h))
                .map_err(|e| self.db_err(e))?
                .is_some()
            {
                held.push(*h);
            } else if let Some(entry) = self.spool.find(*id)
                // A copy we cannot read is an error, not "not held": the sender asks again.
                && self.spool.read(&entry)?.hash.as_bytes() == h
            {
                held.push(*h);
                dirs.insert(entry.queue);
                entries.push(DedupeEntry::new(sender, run, *h, *id, entry.queue));
            }
        }
        for q in dirs {
            crate::spool::sync_dir(&self.spool.queue_dir(q))?;
        }
        // Its intake event may have been lost with the dedupe record.
        self.record_events(&entries)?;
        Ok((held, entries))
    }

    /// Stores a transfer's frames; one result per frame, in order. Returns only when every
    /// `stored` / `already_held` message is durable.
    /// The work runs in its own task holding `guard`, so it completes (and queries wait for
    /// it) even if the client goes away.
    pub async fn transfer(
        &self,
        sender: &str,
        run: &str,
        frames: Vec<Frame>,
        guard: TransferGuard,
    ) -> Result<Vec<ItemResult>, StoreError> {
        let this = self.clone();
        let (s, r) = (sender.to_string(), run.to_string());
        tokio::spawn(async move {
            let _guard = guard;
            let permits = frames.len().clamp(1, this.worker_count) as u32;
            let _permit = this
                .workers
                .clone()
                .acquire_many_owned(permits)
                .await
                .map_err(|e| StoreError::Worker(e.to_string()))?;
            this.blocking_then_record(move |st| st.store_frames(&s, &r, frames))
                .await
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    fn store_frames(
        &self,
        sender: &str,
        run: &str,
        frames: Vec<Frame>,
    ) -> Result<(Vec<ItemResult>, Vec<DedupeEntry>), StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let dedupe = txn.open_table(DEDUPE).map_err(|e| self.db_err(e))?;
        let mut results = Vec::with_capacity(frames.len());
        let mut entries = Vec::new();
        let mut to_store = Vec::new();
        let mut seen = HashSet::new();
        let mut held_dirs = BTreeSet::new();
        for frame in frames {
            let sent = frame.hash;
            let frame_hash = sent.0;
            let reject = |id: Option<MessageId>, code: RejectCode, reason: String| ItemResult {
                hash: sent,
                id,
                outcome: Outcome::RejectedPermanent,
                code: Some(code),
                reason: Some(reason),
            };
            let actual = crate::spool::format::hash(&frame.file);
            if actual != sent {
                results.push(reject(
                    None,
                    RejectCode::HashMismatch,
                    format!("{REASON_HASH_MISMATCH}: the content hashes to {actual}"),
                ));
                continue;
            }
            let msg = match Message::from_bytes(frame.file) {
                Ok(m) => m,
                Err(e) => {
                    results.push(reject(
                        None,
                        RejectCode::Malformed,
                        format!("{REASON_MALFORMED}: {e}"),
                    ));
                    continue;
                }
            };
            let id = msg.header.id;
            let held = |note: &str| ItemResult {
                hash: sent,
                id: Some(id),
                outcome: Outcome::AlreadyHeld,
                code: None,
                reason: Some(note.to_string()),
            };
            if !seen.insert(frame_hash) {
                results.push(held("repeated in the same request"));
                continue;
            }
            if dedupe
                .get((sender, run, frame_hash))
                .map_err(|e| self.db_err(e))?
                .is_some()
            {
                results.push(held("stored earlier for this run"));
                continue;
            }
            if let Some(existing) = self.spool.find(id) {
                match self.spool.read(&existing) {
                    Ok(m) if m.hash == msg.hash => {
                        held_dirs.insert(existing.queue);
                        results.push(held("already in the spool"));
                        entries.push(DedupeEntry::new(
                            sender,
                            run,
                            frame_hash,
                            id,
                            existing.queue,
                        ));
                    }
                    Ok(_) => results.push(reject(
                        Some(id),
                        RejectCode::IdConflict,
                        format!(
                            "{REASON_ID_CONFLICT}: a different message with id {id} is held here"
                        ),
                    )),
                    Err(e) => results.push(ItemResult {
                        hash: sent,
                        id: Some(id),
                        outcome: Outcome::RejectedTransient,
                        code: Some(RejectCode::Transient),
                        reason: Some(format!("cannot check the copy already held: {e}")),
                    }),
                }
                continue;
            }
            results.push(ItemResult {
                hash: sent,
                id: Some(id),
                outcome: Outcome::Stored,
                code: None,
                reason: None,
            });
            entries.push(DedupeEntry::new(
                sender,
                run,
                frame_hash,
                id,
                msg.header.queue,
            ));
            to_store.push(msg);
        }
        drop(dedupe);
        drop(txn);
        self.spool.store_many(&to_store)?;
        // A copy found in the spool may predate a crash that lost its directory fsync.
        for q in held_dirs {
            crate::spool::sync_dir(&self.spool.queue_dir(q))?;
        }
        // One event per message taken in, durable before the answer. A message found in the
        // spool without its dedupe record was stored by a request interrupted before its
        // event could be recorded, so it gets one now (at least one event per message).
        self.record_events(&entries)?;
        Ok((results, entries))
    }
}

impl Store {
    /// One `message.received` event per message taken in (or found held without its dedupe
    /// record, whose event may have been lost with it), durable before the answer.
    fn record_events(&self, entries: &[DedupeEntry]) -> Result<(), StoreError> {
        let events: Vec<Event> = entries
            .iter()
            .map(|e| {
                let mut ev = Event::new("message.received", &self.instance, e.id, e.queue);
                ev.from_instance = Some(e.sender.clone());
                ev.run = Some(e.run.clone());
                ev
            })
            .collect();
        Ok(self.events.record(&events)?)
    }

    /// Runs `f` on a blocking thread, then commits the dedupe records it returns (group
    /// commit), so its result is answered only once they are durable.
    async fn blocking_then_record<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<(R, Vec<DedupeEntry>), StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let this = self.clone();
        let (result, entries) = tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))??;
        if !entries.is_empty() {
            self.committer
                .submit(Write::Insert(entries))
                .await
                .map_err(|e| self.db_err(e))?;
        }
        Ok(result)
    }
}
