//! The context every task of a run shares, split by how it changes:
//!
//! - [`Settings`]: fixed when the run starts (destinations, batch limits, byte budget);
//! - services: the journal, the spool, the HTTPS client, the byte budget's semaphore, the stop
//!   token and the fallback directory (shared handles, used by every flow module);
//! - [`RunState`]: what the run learns as it goes (round-robin position, the report, which
//!   destinations stopped answering, what already failed, the spool's totals).
//!
//! Invariant: nothing here writes the journal or touches the spool's files (`ledger` does);
//! this module only holds state. Uses `options`, `report`, `client` and `fallback_dir`; built by
//! `engine::run` and passed by reference to every flow module.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::client::Client;
use super::failure::Failure;
use super::fallback_dir::FallbackDir;
use super::item::Acked;
use super::options::DrainOptions;
use super::report::Report;
use crate::base::Destination;
use crate::journal::{Journal, MessageRecord};
use crate::spool::{Entry, Message, Spool, SpoolError};

/// What is fixed for the whole invocation of a run.
pub(crate) struct Settings {
    /// The instance's data directory.
    pub data_dir: std::path::PathBuf,
    /// The run's sequence number (the journal's key for its records).
    pub run_seq: u64,
    /// Every destination of the run (in-doubt messages may be pinned to any of them).
    pub dests: Vec<Destination>,
    /// Which of `dests` take new messages in this invocation.
    pub active: Vec<bool>,
    /// Messages per request.
    pub batch_max: usize,
    /// Bytes a worker reads for one batch.
    pub batch_bytes: u64,
    /// Worker tasks taking batches from the scan.
    pub workers: usize,
    /// The byte budget in KiB permits.
    pub budget_units: u32,
    /// The largest spool file read: a message held in a request counts twice against the
    /// budget, so half of it (and at most `spool::MAX_MESSAGE_SIZE`). A larger file is
    /// reported unreadable, naming it, rather than breaking the memory bound (invariant 5).
    pub max_message: u64,
    pub reassign_after: Option<Duration>,
    /// When the run's invocation started (progress, elapsed time, fallback deadline).
    pub started: Instant,
}

impl Settings {
    /// Derives the limits of a run from the options and its destinations.
    pub fn new(
        opts: &DrainOptions,
        run_seq: u64,
        dests: Vec<Destination>,
        active: Vec<bool>,
        started: Instant,
    ) -> Settings {
        let concurrency = opts.concurrency.max(1);
        // About one request in flight per active destination (at least two): larger requests
        // share the receiver's directory fsync and the journal's commits (measured: batches of
        // 8 beat batches of 2 by ~15% with two destinations).
        let active_dests = active.iter().filter(|a| **a).count().max(2);
        let batch_max = opts
            .batch_size
            .unwrap_or_else(|| (concurrency / active_dests).clamp(1, 64))
            .clamp(1, crate::wire::MAX_FRAMES);
        let workers = concurrency.div_ceil(batch_max).max(1);
        let budget_units =
            (opts.max_in_flight_bytes / 1024).clamp(1024, u64::from(u32::MAX >> 4)) as u32;
        Settings {
            data_dir: opts.data_dir.clone(),
            run_seq,
            dests,
            active,
            batch_max,
            batch_bytes: (opts.max_in_flight_bytes / workers as u64).clamp(64 << 10, 8 << 20),
            workers,
            budget_units,
            max_message: (u64::from(budget_units) * 1024 / 2).min(crate::spool::MAX_MESSAGE_SIZE),
            reassign_after: opts.reassign_after,
            started,
        }
    }

    /// Destination `d` as the journal writes it.
    pub fn name(&self, d: usize) -> String {
        self.dests[d].to_string()
    }

    /// The index of the destination named `name` (as the journal writes it).
    pub fn dest_index(&self, name: &str) -> Option<usize> {
        self.dests.iter().position(|d| d.to_string() == name)
    }

    /// The destinations a journaled message was rejected by, as indexes.
    pub fn rejected_by(&self, rec: &MessageRecord) -> Vec<usize> {
        rec.rejected_by
            .iter()
            .filter_map(|(d, _)| self.dest_index(d))
            .collect()
    }

    /// Budget permits (KiB) for `bytes` of message data held in a request.
    pub fn permits_for(&self, bytes: u64) -> u32 {
        let units = (bytes.saturating_mul(2) / 1024 + 1).min(u64::from(self.budget_units));
        units as u32
    }
}

/// Totals of the spool when the run started (`u64::MAX` until counted).
pub(crate) struct Totals {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            messages: AtomicU64::new(u64::MAX),
            bytes: AtomicU64::new(u64::MAX),
        }
    }
}

/// What a run learns as it goes (every field behind its own lock or atomic).
#[derive(Default)]
pub(crate) struct RunState {
    rr: AtomicUsize,
    report: Mutex<Report>,
    /// Since when each instance (by destination and the instance named, None for a destination
    /// that does not name its instances) has failed to answer queries (`--reassign-after`).
    unreachable: Mutex<HashMap<(usize, Option<String>), Instant>>,
    /// The ids on their way (one file per id).
    pub claims: Arc<super::item::Claims>,
    /// Destinations with messages in doubt that have not answered a query since: no new
    /// messages go there until they do (a request in doubt says nothing about the next one).
    suspect: Mutex<HashSet<usize>>,
    /// Bumped whenever a destination is trusted again, so batches waiting for one wake at once.
    trust: tokio::sync::watch::Sender<u64>,
    /// Settling tasks running beside the workers (in-doubt messages never hold a worker).
    settling: Mutex<Vec<tokio::task::JoinHandle<anyhow::Result<()>>>>,
    /// Destinations whose latest attempt failed, with the failure's kind (for progress).
    failing: Mutex<std::collections::BTreeMap<String, String>>,
    /// Messages and files that already failed in this invocation (not retried by a rescan).
    failed: Mutex<HashSet<String>>,
    /// The spool's size when the run started, for progress.
    pub totals: Arc<Totals>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RunState {
    pub fn new(report: Report) -> RunState {
        RunState {
            report: Mutex::new(report),
            ..RunState::default()
        }
    }

    pub fn report(&self) -> MutexGuard<'_, Report> {
        lock(&self.report)
    }

    /// Counts a failed attempt with `dest`, grouped by the failure's kind.
    pub fn note_failure(&self, dest: &str, f: &Failure) {
        self.report().note_failure(dest, f);
        lock(&self.failing).insert(dest.to_string(), f.kind.to_string());
    }

    /// `d` has messages in doubt: send it nothing new until it answers a query.
    pub fn suspect(&self, d: usize) {
        lock(&self.suspect).insert(d);
    }

    /// `d` answered a query (or was given up on): it may take new messages again.
    pub fn trusted(&self, d: usize) {
        if lock(&self.suspect).remove(&d) {
            self.trust.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Changes when a destination is trusted again (subscribe before looking for one).
    pub fn trust_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.trust.subscribe()
    }

    pub fn is_suspect(&self, d: usize) -> bool {
        lock(&self.suspect).contains(&d)
    }

    /// Keeps a settling task so the run waits for it before it ends.
    pub fn add_settling(&self, h: tokio::task::JoinHandle<anyhow::Result<()>>) {
        lock(&self.settling).push(h);
    }

    /// The next settling task still to wait for.
    pub fn take_settling(&self) -> Option<tokio::task::JoinHandle<anyhow::Result<()>>> {
        lock(&self.settling).pop()
    }

    /// `dest` acknowledged messages again: it is no longer shown as failing.
    pub fn answering(&self, dest: &str) {
        lock(&self.failing).remove(dest);
    }

    /// The destinations whose latest attempt failed, and how (`dest: kind; ...`).
    pub fn failing(&self) -> String {
        let f = lock(&self.failing);
        f.iter()
            .map(|(d, k)| format!("{d}: {k}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Remembers that `key` (a message id or a path) failed; false if it already had.
    pub fn mark_failed(&self, key: String) -> bool {
        lock(&self.failed).insert(key)
    }

    pub fn has_failed(&self, key: &str) -> bool {
        lock(&self.failed).contains(key)
    }

    pub fn failed_count(&self) -> u64 {
        lock(&self.failed).len() as u64
    }

    /// When `instance` behind destination `d` started failing to answer (now, if it just did).
    pub fn unreachable_since(&self, d: usize, instance: Option<&str>) -> Instant {
        *lock(&self.unreachable)
            .entry((d, instance.map(String::from)))
            .or_insert_with(Instant::now)
    }

    /// `instance` behind destination `d` answered.
    pub fn reachable(&self, d: usize, instance: Option<&str>) {
        lock(&self.unreachable).remove(&(d, instance.map(String::from)));
    }

    /// A new starting point for a round-robin turn.
    fn next_turn(&self) -> usize {
        self.rr.fetch_add(1, Ordering::Relaxed)
    }
}

/// Shared by every task of a run.
pub(crate) struct Run {
    pub set: Settings,
    pub journal: Journal,
    pub spool: Spool,
    pub client: Client,
    /// The byte budget: permits of 1 KiB for message data held in memory.
    pub budget: Arc<Semaphore>,
    /// Cancelled on SIGTERM/SIGINT or a journal failure: take nothing new, finish in flight.
    pub stop: CancellationToken,
    /// Where the remaining messages go when the destinations have not taken them in time.
    pub fallback: Option<FallbackDir>,
    pub state: RunState,
    /// Acknowledged messages on their way to `retire` (closed when the run ends).
    pub retiring: Mutex<Option<mpsc::Sender<Retiring>>>,
}

/// Messages one destination acknowledged, handed to `retire`.
pub(crate) struct Retiring {
    pub dest: String,
    pub acked: Vec<Acked>,
}

impl Run {
    /// Hands messages `dest` acknowledged to `retire`, which journals them `acked` and then
    /// removes their local copies, off the caller's path (it waits only when `retire` is
    /// behind). Until that commit they are `sent` in the journal: a crash leaves them in doubt,
    /// settled by asking `dest`, as after any interrupted request.
    pub async fn retire(&self, dest: &str, acked: Vec<Acked>) -> anyhow::Result<()> {
        if acked.is_empty() {
            return Ok(());
        }
        self.state.answering(dest);
        let tx = lock(&self.retiring).clone();
        let Some(tx) = tx else {
            anyhow::bail!("internal: acknowledged messages after the run closed retiring");
        };
        let batch = Retiring {
            dest: dest.to_string(),
            acked,
        };
        if tx.send(batch).await.is_err() {
            anyhow::bail!("retiring acknowledged messages stopped (a journal failure, reported)");
        }
        Ok(())
    }

    /// Reads and hashes `entries` on a blocking thread, each within the largest message read
    /// (the caller holds the byte budget for them); the results are in `entries`' order.
    pub async fn read_entries(
        &self,
        entries: Vec<Entry>,
    ) -> anyhow::Result<Vec<(Entry, Result<Message, SpoolError>)>> {
        let spool = self.spool.clone();
        let max = self.set.max_message;
        Ok(tokio::task::spawn_blocking(move || {
            entries
                .into_iter()
                .map(|e| {
                    let r = spool.read_limited(&e, max);
                    (e, r)
                })
                .collect()
        })
        .await?)
    }

    /// The next active destination in round-robin order that `ok` accepts.
    pub fn next_dest(&self, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.set.dests.len();
        let start = self.state.next_turn();
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.set.active[i] && ok(i))
    }

    pub fn stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Sleeps for `d` or until a stop is requested; returns true if stopped.
    pub async fn pause(&self, d: Duration) -> bool {
        if self.stopped() {
            return true;
        }
        tokio::select! {
            _ = self.stop.cancelled() => true,
            _ = tokio::time::sleep(d) => self.stopped(),
        }
    }

    /// The fallback directory, once its time has come.
    pub fn fallback_due(&self) -> Option<&FallbackDir> {
        self.fallback.as_ref().filter(|f| Instant::now() >= f.due)
    }

    /// `d`, shortened so a backoff wakes up when the fallback time comes.
    pub fn until_fallback(&self, d: Duration) -> Duration {
        match &self.fallback {
            Some(f) => d.min(f.due.saturating_duration_since(Instant::now())),
            None => d,
        }
    }
}
