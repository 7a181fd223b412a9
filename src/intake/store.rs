//! Where received messages become durable: the receiver's spool plus its dedupe store
//! (`<data-dir>/intake.redb`).
//!
//! Order per message, and why it is safe at every crash point:
//! 1. verify the hash and the file format (nothing written yet);
//! 2. already in the dedupe table for (sender, run, hash), or already in the spool with the
//!    same hash: answer `already_held`, store nothing (invariant 3);
//! 3. stage the copy durably under a name no mail server takes (`staging`): a crash here
//!    leaves no record, so the next start removes the copy and the sender sends it again;
//! 4. commit the dedupe record (group commit shared with concurrent requests);
//! 5. record its intake event, publish it as `<id>.msg` (`staging`), and only then
//!    acknowledge (invariant 1). The copy is visible to the mail server only once its record
//!    is durable, so a copy taken out of the spool is always one the receiver answers for.
//!
//! Dedupe keys are scoped to the sender's instance id and run id, so a message that comes back
//! in a later run (A->B, B->A, A->B) is stored again rather than mistaken for a duplicate.
//! A query or finish of a run fences that run's transfers still arriving (`inflight`): what it
//! fenced is refused (code `fenced`) at step 1, never stored.
//!
//! Called by `handler` (transfer, query, finish) and by `serve`'s dedupe expiry; it calls the
//! spool, the event queue (one `message.received` event per message, a transfer's sharing
//! files, durable before the answer) and the group commit. Each rejected message carries its [`RejectCode`].

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::claims::{Claim, ClaimSet, Claims};
use super::inflight::InFlight;
pub use super::inflight::{Arriving, Fence, Storing};
use super::staging::{self, Staging};
use super::verdicts::{check_frame, fenced, id_conflict, item, room_for};
use crate::base::{ContentHash, MessageId, QueueKind, Timestamp};
use crate::events::EventQueue;
use crate::groupcommit::Committer;
use crate::spool::{Message, Spool, SpoolError, SpoolSync, Staged};
use crate::wire::{Frame, ItemResult, Outcome, RejectCode};

mod publish;

/// (sender instance id, sender run id, message hash) -> `DedupeRecord` JSON.
pub(super) const DEDUPE: TableDefinition<(&str, &str, [u8; 32]), &[u8]> =
    TableDefinition::new("dedupe");

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
    #[error(
        "{0} copies of this run are stored but not yet published (their events could not be \
         recorded); its dedupe keys are kept until they are"
    )]
    Unpublished(usize),
}

#[derive(Serialize, Deserialize)]
struct DedupeRecord {
    id: MessageId,
    stored_at: Timestamp,
}

#[derive(Clone)]
pub(super) struct DedupeEntry {
    pub sender: String,
    pub run: String,
    pub hash: [u8; 32],
    pub id: MessageId,
    /// Not stored in the table; names the queue in the message's intake event.
    pub queue: QueueKind,
}

impl DedupeEntry {
    pub(super) fn new(
        sender: &str,
        run: &str,
        hash: [u8; 32],
        id: MessageId,
        queue: QueueKind,
    ) -> Self {
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
    /// Ids being stored by transfers in progress (one file per id, ever).
    claims: Arc<Claims>,
    instance: String,
    events: EventQueue,
    /// Transfers whose records are durable but whose copies could not be published yet
    /// (their events failed): retried at the next request.
    unpublished: Arc<Mutex<Vec<Staging>>>,
}

impl Store {
    pub fn open(
        data_dir: &Path,
        workers: usize,
        sync: SpoolSync,
        instance: &str,
        events: EventQueue,
    ) -> Result<Store, StoreError> {
        let spool = Spool::open(data_dir)?;
        let (mode, fs) = sync.resolve(spool.root());
        tracing::info!(
            "received copies are made durable by {} (--spool-sync {sync}; {} is on {fs})",
            mode.describe(),
            spool.root().display()
        );
        let spool = spool.with_sync(mode);
        let path = data_dir.join("intake.redb");
        let db_path = path.display().to_string();
        let dberr = |e: &dyn std::fmt::Display| StoreError::Db {
            path: db_path.clone(),
            reason: e.to_string(),
        };
        // A fixed cache: memory must not grow with the number of messages taken in.
        let mut builder = redb::Builder::new();
        builder.set_cache_size(16 << 20);
        let db = crate::groupcommit::create_or_open(&path, &builder).map_err(|e| dberr(&e))?;
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
        // Before any request: what a stopped serve left staged is published or removed.
        staging::settle(&db, &spool, &events, instance, spool.staged()?)?;
        let worker_count = workers.max(1);
        Ok(Store {
            spool,
            db,
            db_path,
            committer,
            workers: Arc::new(Semaphore::new(worker_count)),
            worker_count,
            inflight: Arc::default(),
            claims: Arc::default(),
            instance: instance.to_string(),
            events,
            unpublished: Arc::default(),
        })
    }

    /// Stops the writer after what is queued, makes the last publishes durable and closes the
    /// database cleanly if this is the last handle.
    pub fn close(self) {
        self.committer.close();
        let Store { db, spool, .. } = self;
        // The last publishes' renames (each is synced by the next transfer's staging).
        if let Err(e) = spool.sync_queue_dirs() {
            tracing::warn!("syncing the spool at shutdown: {e}");
        }
        drop(spool);
        if let Ok(db) = Arc::try_unwrap(db)
            && let Err(e) = db.close()
        {
            tracing::warn!("closing the intake database: {e}");
        }
    }

    /// Registers a transfer of (sender, run) whose body is about to be read.
    pub fn arriving(&self, sender: &str, run: &str) -> Arriving {
        self.inflight.arriving(sender, run)
    }

    /// Fences `fence` in the transfers of (sender, run) still arriving (they will refuse those
    /// messages) and waits for those already storing one of them (see `inflight`).
    pub async fn fence(&self, sender: &str, run: &str, fence: &Fence) {
        self.inflight.fence(sender, run, fence).await
    }

    fn db_err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            path: self.db_path.clone(),
            reason: e.to_string(),
        }
    }

    /// Which of `asked` (id, hash) this instance holds for (sender, run): recorded in the
    /// dedupe table, or present in the spool with that hash (stored by a request whose
    /// dedupe record was lost to a crash; the file's directory is fsynced first, so the answer
    /// is durable). A query otherwise writes nothing: the dedupe record and the intake event
    /// such a copy may have lost are written best effort (a full disk does not fail a query;
    /// the failure is logged, and the copy still answers for itself from the spool).
    pub async fn held(
        &self,
        sender: &str,
        run: &str,
        asked: Vec<(MessageId, [u8; 32])>,
    ) -> Result<Vec<[u8; 32]>, StoreError> {
        self.retry_unpublished().await;
        let (s, r) = (sender.to_string(), run.to_string());
        let this = self.clone();
        let (held, entries) =
            tokio::task::spawn_blocking(move || this.held_blocking(&s, &r, &asked))
                .await
                .map_err(|e| StoreError::Worker(e.to_string()))??;
        if !entries.is_empty()
            && let Err(e) = self.committer.submit(Write::Insert(entries)).await
        {
            tracing::warn!(
                "recording dedupe keys of copies found held failed: {}",
                self.db_err(e)
            );
        }
        Ok(held)
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
        // Its intake event may have been lost with the dedupe record (best effort: see `held`).
        let events = staging::received_events(&self.instance, &entries);
        if let Err(e) = self.events.record(&events) {
            tracing::warn!("recording intake events of copies found held failed: {e}");
        }
        Ok((held, entries))
    }

    /// Stores a transfer's frames; one result per frame, in order. Returns only when every
    /// `stored` / `already_held` message is durable. A frame `guard`'s fence covers is refused
    /// (`rejected_transient`, code `fenced`), never stored.
    /// The work runs in its own task holding `guard`, so it completes (and queries wait for
    /// it) even if the client goes away.
    pub async fn transfer(
        &self,
        sender: &str,
        run: &str,
        frames: Vec<Frame>,
        guard: Storing,
    ) -> Result<Vec<ItemResult>, StoreError> {
        self.retry_unpublished().await;
        let this = self.clone();
        let (s, r) = (sender.to_string(), run.to_string());
        tokio::spawn(async move {
            let fence = guard.fence().clone();
            let _guard = guard;
            let permits = frames.len().clamp(1, this.worker_count) as u32;
            let _permit = this
                .workers
                .clone()
                .acquire_many_owned(permits)
                .await
                .map_err(|e| StoreError::Worker(e.to_string()))?;
            let st = this.clone();
            let (results, staging) =
                tokio::task::spawn_blocking(move || st.store_frames(&s, &r, frames, &fence))
                    .await
                    .map_err(|e| StoreError::Worker(e.to_string()))??;
            this.commit_then_publish(staging).await?;
            Ok(results)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    fn store_frames(
        &self,
        sender: &str,
        run: &str,
        frames: Vec<Frame>,
        fence: &Fence,
    ) -> Result<(Vec<ItemResult>, Staging), StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let dedupe = txn.open_table(DEDUPE).map_err(|e| self.db_err(e))?;
        let mut results = Vec::with_capacity(frames.len());
        let mut entries = Vec::new();
        let mut to_store = Vec::new();
        let mut seen = HashSet::new();
        let mut held_dirs = BTreeSet::new();
        // Released once the copies are published: from then on the spool answers for the ids.
        let mut claims = ClaimSet::new(self.claims.clone());
        for frame in frames {
            let hash = frame.hash;
            if fence.covers(&hash.0) {
                results.push(fenced(hash));
                continue;
            }
            let msg = match check_frame(frame) {
                Ok(m) => m,
                Err(rejected) => {
                    results.push(rejected);
                    continue;
                }
            };
            let key = Key { sender, run, hash };
            match self.classify(&dedupe, key, msg, &mut seen, &mut claims)? {
                Verdict::Answer(r) => results.push(r),
                Verdict::FoundHeld(r, entry) => {
                    held_dirs.insert(entry.queue);
                    results.push(r);
                    entries.push(entry);
                }
                Verdict::Store(msg, entry) => {
                    results.push(item(hash, Some(entry.id), Outcome::Stored, None, None));
                    entries.push(entry);
                    to_store.push(msg);
                }
            }
        }
        drop(dedupe);
        drop(txn);
        let (to_store, entries) = room_for(&self.spool, to_store, entries, &mut results);
        let staged = self.make_durable(sender, run, &to_store, held_dirs)?;
        Ok((
            results,
            Staging {
                entries,
                staged,
                _claims: claims,
            },
        ))
    }

    /// What to do with a well-formed frame: already held (repeated in this request, in the
    /// dedupe table, or in the spool), an id conflict, or new.
    fn classify(
        &self,
        dedupe: &redb::ReadOnlyTable<(&str, &str, [u8; 32]), &[u8]>,
        key: Key<'_>,
        msg: Message,
        seen: &mut HashSet<[u8; 32]>,
        claims: &mut ClaimSet,
    ) -> Result<Verdict, StoreError> {
        let id = msg.header.id;
        let held = |note: &str| {
            Verdict::Answer(item(
                key.hash,
                Some(id),
                Outcome::AlreadyHeld,
                None,
                Some(note.to_string()),
            ))
        };
        if !seen.insert(key.hash.0) {
            return Ok(held("repeated in the same request"));
        }
        if dedupe
            .get((key.sender, key.run, key.hash.0))
            .map_err(|e| self.db_err(e))?
            .is_some()
        {
            return Ok(held("stored earlier for this run"));
        }
        match claims.claim(id, key.hash) {
            Claim::Granted => {}
            Claim::Conflict => return Ok(Verdict::Answer(id_conflict(key.hash, id))),
            Claim::SameInProgress => {
                return Ok(Verdict::Answer(item(
                    key.hash,
                    Some(id),
                    Outcome::RejectedTransient,
                    Some(RejectCode::Transient),
                    Some("another transfer is storing this message right now; retry".into()),
                )));
            }
        }
        let Some(existing) = self.spool.find(id) else {
            let entry = key.entry(id, msg.header.queue);
            return Ok(Verdict::Store(msg, entry));
        };
        Ok(match self.spool.read(&existing) {
            Ok(m) if m.hash == msg.hash => Verdict::FoundHeld(
                item(
                    key.hash,
                    Some(id),
                    Outcome::AlreadyHeld,
                    None,
                    Some("already in the spool".into()),
                ),
                key.entry(id, existing.queue),
            ),
            Ok(_) => Verdict::Answer(id_conflict(key.hash, id)),
            Err(e) => Verdict::Answer(item(
                key.hash,
                Some(id),
                Outcome::RejectedTransient,
                Some(RejectCode::Transient),
                Some(format!("cannot check the copy already held: {e}")),
            )),
        })
    }

    /// Stages the new messages durably (see `staging`) and fsyncs the directories of copies
    /// found held (they may predate a crash that lost their directory fsync).
    fn make_durable(
        &self,
        sender: &str,
        run: &str,
        to_store: &[Message],
        held_dirs: BTreeSet<QueueKind>,
    ) -> Result<Vec<Staged>, StoreError> {
        let staged = self
            .spool
            .stage_each(to_store, sender, run)
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        for q in held_dirs {
            crate::spool::sync_dir(&self.spool.queue_dir(q))?;
        }
        Ok(staged)
    }
}

/// Where a frame's dedupe key comes from: the sender's run and the hash it sent.
#[derive(Clone, Copy)]
struct Key<'a> {
    sender: &'a str,
    run: &'a str,
    hash: ContentHash,
}

impl Key<'_> {
    fn entry(&self, id: MessageId, queue: QueueKind) -> DedupeEntry {
        DedupeEntry::new(self.sender, self.run, self.hash.0, id, queue)
    }
}

/// The decision for one well-formed frame, taken before anything is written.
enum Verdict {
    /// Answered without writing anything: already held, or rejected.
    Answer(ItemResult),
    /// In the spool without a dedupe record: answered `already_held`, recorded now.
    FoundHeld(ItemResult, DedupeEntry),
    /// New: to be stored.
    Store(Message, DedupeEntry),
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
