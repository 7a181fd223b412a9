//! The drain engine: moves every message of this instance's spool to the destinations.
//!
//! Data path, in order: `scan` streams the spool; a worker takes a batch, reads and hashes the
//! files (bounded by the byte budget), journals them `read`; `dispatch` picks a destination
//! round-robin, journals `sent(destination)` durably, sends one request, journals
//! `acked(destination)` for what the destination acknowledged, removes those local files and
//! journals `deleted`. `settle` handles messages whose fate is unknown (a dropped connection,
//! a timeout, or an earlier attempt of the run killed mid-flight): they stay pinned to their
//! destination until it answers a query.
//!
//! Invariants (product.md): a local file is removed only after a durable acknowledgement; a
//! message is never sent to a second destination while the first may hold it (unless the
//! operator opts in with `--reassign-after`, and then it is flagged); memory is
//! bounded by `--concurrency` and the byte budget, not by the spool's size.
//! Called by the CLI (`drain <DESTINATION>...` and `drain resume`).

pub mod client;
mod dispatch;
mod fallback;
mod progress;
pub use progress::ProgressMode;
pub mod report;
mod settle;
mod worker;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{Notify, Semaphore};

use client::Client;
pub use client::Destination;
pub use report::Report;

use crate::base::{MessageId, Timestamp};
use crate::instance::Instance;
use crate::journal::{Journal, Op, RunRecord, RunStatus, State};
use crate::spool::Spool;

/// Everything a drain run needs.
#[derive(Clone, Debug)]
pub struct DrainOptions {
    pub data_dir: PathBuf,
    /// Destinations; empty means "those of the unfinished run" (resume).
    pub destinations: Vec<Destination>,
    pub concurrency: usize,
    pub bind_ip: Option<IpAddr>,
    pub ca_cert: Option<PathBuf>,
    /// Bytes of message data in memory at once (requests in flight count twice).
    pub max_in_flight_bytes: u64,
    /// Messages per request; default derived from `concurrency`.
    pub batch_size: Option<usize>,
    /// `drain resume`: there must be an unfinished run to continue.
    pub resume: bool,
    /// Settle in-doubt messages and end the run without draining the rest.
    pub settle_only: bool,
    /// Let messages pinned to an unreachable destination go elsewhere after this long,
    /// flagged as possible duplicates. None: wait for it indefinitely.
    pub reassign_after: Option<Duration>,
    /// `--fallback-path` and `--automatic-fallback-after`.
    pub fallback: Option<(PathBuf, Duration)>,
    /// How progress is shown while the run goes on.
    pub progress: ProgressMode,
}

/// Default `--concurrency`: 2 x CPUs, clamped to 10..=64.
pub fn default_concurrency() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cpus).clamp(10, 64)
}

/// A stop request (SIGTERM / SIGINT): stop taking new messages, finish what is in flight.
#[derive(Clone, Default)]
pub struct Stop(Arc<(AtomicBool, Notify)>);

impl Stop {
    pub fn request(&self) {
        self.0.0.store(true, Ordering::SeqCst);
        self.0.1.notify_waiters();
    }

    pub fn is_set(&self) -> bool {
        self.0.0.load(Ordering::SeqCst)
    }

    /// Sleeps for `d` or until a stop is requested; returns true if stopped.
    pub async fn sleep(&self, d: Duration) -> bool {
        let notified = self.0.1.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_set() {
            return true;
        }
        tokio::select! {
            _ = notified => true,
            _ = tokio::time::sleep(d) => self.is_set(),
        }
    }
}

/// Shared by every task of a run.
pub(crate) struct Ctx {
    pub journal: Journal,
    pub spool: Spool,
    pub run_seq: u64,
    pub client: Client,
    /// Every destination of the run (in-doubt messages may be pinned to any of them).
    pub dests: Vec<Destination>,
    /// Which of `dests` take new messages in this invocation.
    pub active: Vec<bool>,
    rr: AtomicUsize,
    pub budget: Arc<Semaphore>,
    pub budget_units: u32,
    pub batch_max: usize,
    pub batch_bytes: u64,
    pub report: Mutex<Report>,
    pub stop: Stop,
    pub reassign_after: Option<Duration>,
    /// Where the remaining messages go when the destinations have not taken them in time.
    pub fallback: Option<fallback::Fallback>,
    /// The spool's size when the run started, for progress.
    totals: Arc<progress::Totals>,
    /// Since when each destination has failed to answer queries (for `--reassign-after`).
    unreachable: Mutex<std::collections::HashMap<usize, Instant>>,
    /// Messages and files that already failed in this invocation (not retried by a rescan).
    pub failed: Mutex<HashSet<String>>,
}

impl Ctx {
    /// The next destination in round-robin order that `ok` accepts.
    pub fn next_dest(&self, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.dests.len();
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.active[i] && ok(i))
    }

    /// The index of the destination named `name` (as the journal writes it).
    pub fn dest_index(&self, name: &str) -> Option<usize> {
        self.dests.iter().position(|d| d.to_string() == name)
    }

    /// The destinations a journaled message was rejected by, as indexes.
    pub(crate) fn rejected_by(&self, rec: &crate::journal::MessageRecord) -> Vec<usize> {
        rec.rejected_by
            .iter()
            .filter_map(|(d, _)| self.dest_index(d))
            .collect()
    }

    pub fn report(&self) -> std::sync::MutexGuard<'_, Report> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn note_failure(&self, dest: &str, reason: &str) {
        *self
            .report()
            .failures
            .entry(report::reason_key(dest, reason))
            .or_default() += 1;
    }

    pub fn mark_failed(&self, key: String) -> bool {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key)
    }

    /// When destination `d` started failing to answer (now, if it just did).
    pub fn unreachable_since(&self, d: usize) -> Instant {
        *self
            .unreachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(d)
            .or_insert_with(Instant::now)
    }

    /// Destination `d` answered.
    pub fn reachable(&self, d: usize) {
        self.unreachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&d);
    }

    /// The fallback path, once its time has come.
    pub(crate) fn fallback_due(&self) -> Option<&fallback::Fallback> {
        self.fallback.as_ref().filter(|f| Instant::now() >= f.due)
    }

    /// `d`, shortened so a backoff wakes up when the fallback time comes.
    pub fn until_fallback(&self, d: Duration) -> Duration {
        match &self.fallback {
            Some(f) => d.min(f.due.saturating_duration_since(Instant::now())),
            None => d,
        }
    }

    pub fn failed_count(&self) -> u64 {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).len() as u64
    }

    pub fn has_failed(&self, key: &str) -> bool {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    /// Budget permits (KiB) for `bytes` of message data held in a request.
    pub fn permits_for(&self, bytes: u64) -> u32 {
        let units = (bytes.saturating_mul(2) / 1024 + 1).min(u64::from(self.budget_units));
        units as u32
    }
}

/// Runs (or continues) a drain. Returns the report; `report.exit_code` is the process's exit.
pub async fn run(opts: DrainOptions, stop: Stop) -> anyhow::Result<Report> {
    let started = Instant::now();
    let inst = Instance::open(&opts.data_dir)?;
    let spool = Spool::open(&opts.data_dir)?;
    spool.clean_stale_tmp(Duration::from_secs(3600));
    let journal = Journal::open(&opts.data_dir)?;

    let last = journal.last_run()?;
    let unfinished = last.filter(|r| r.status != RunStatus::Finished);
    let continuing = unfinished.is_some();
    let mut run = match unfinished {
        Some(mut r) => {
            r.resumed += 1;
            r.status = RunStatus::Running;
            r.ended_at = None;
            r.exit_code = None;
            for d in &opts.destinations {
                let d = d.to_string();
                if !r.destinations.contains(&d) {
                    r.destinations.push(d);
                }
            }
            tracing::info!(run = %r.id, seq = r.seq, "continuing unfinished drain run #{}", r.seq);
            r
        }
        None if opts.resume => {
            let what = match journal.last_run()? {
                Some(r) => format!(
                    "the last drain run (#{}, {}) finished with exit {}",
                    r.seq,
                    r.id,
                    r.exit_code.map_or("?".to_string(), |c| c.to_string())
                ),
                None => "no drain has run on this data directory".to_string(),
            };
            return Ok(Report {
                exit_code: 0,
                outcome: format!("nothing to resume: {what}"),
                ..Report::default()
            });
        }
        None => {
            if opts.destinations.is_empty() {
                anyhow::bail!("no destination given");
            }
            RunRecord {
                seq: journal.next_run_seq()?,
                id: MessageId::random()?.to_string(),
                started_at: Timestamp::now(),
                ended_at: None,
                destinations: opts.destinations.iter().map(|d| d.to_string()).collect(),
                options: serde_json::json!({
                    "concurrency": opts.concurrency,
                    "bind_ip": opts.bind_ip.map(|i| i.to_string()),
                    "ca_cert": opts.ca_cert.as_ref().map(|p| p.display().to_string()),
                    "max_in_flight_bytes": opts.max_in_flight_bytes,
                }),
                status: RunStatus::Running,
                exit_code: None,
                summary: None,
                resumed: 0,
            }
        }
    };
    // Given destinations take new messages; a resumed run without any uses the run's own.
    let dests: Vec<Destination> = run
        .destinations
        .iter()
        .map(|d| Destination::parse(d).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()
        .context("the run's destinations in the journal")?;
    let active: Vec<bool> = dests
        .iter()
        .map(|d| opts.destinations.is_empty() || opts.destinations.contains(d))
        .collect();
    journal.commit(vec![Op::PutRun(run.clone())]).await?;

    let concurrency = opts.concurrency.max(1);
    // About one request in flight per active destination (at least two): larger requests
    // share the receiver's directory fsync and the journal's commits (measured: batches of 8
    // beat batches of 2 by ~15% with two destinations).
    let active_dests = active.iter().filter(|a| **a).count().max(2);
    let batch_max = opts
        .batch_size
        .unwrap_or_else(|| (concurrency / active_dests).clamp(1, 64))
        .clamp(1, crate::wire::MAX_FRAMES);
    let workers = concurrency.div_ceil(batch_max).max(1);
    let budget_units =
        (opts.max_in_flight_bytes / 1024).clamp(1024, u64::from(u32::MAX >> 4)) as u32;
    let fallback = match &opts.fallback {
        Some((dir, after)) => Some(fallback::Fallback::open(dir, started + *after)?),
        None => None,
    };
    let client = Client::new(
        opts.bind_ip,
        opts.ca_cert.as_deref(),
        &inst.id,
        &run.id,
        workers,
    )?;
    let ctx = Arc::new(Ctx {
        journal: journal.clone(),
        spool,
        run_seq: run.seq,
        client,
        dests,
        active,
        rr: AtomicUsize::new(0),
        budget: Arc::new(Semaphore::new(budget_units as usize)),
        budget_units,
        batch_max,
        batch_bytes: (opts.max_in_flight_bytes / workers as u64).clamp(64 << 10, 8 << 20),
        report: Mutex::new(Report {
            run_id: run.id.clone(),
            run_seq: run.seq,
            ..Report::default()
        }),
        stop: stop.clone(),
        reassign_after: opts.reassign_after,
        fallback,
        totals: Arc::default(),
        unreachable: Mutex::new(std::collections::HashMap::new()),
        failed: Mutex::new(HashSet::new()),
    });
    tracing::info!(
        run = %run.id,
        destinations = %ctx.dests.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","),
        concurrency,
        batch = batch_max,
        "drain run #{} started",
        run.seq
    );
    progress::count_spool(&ctx);
    let progress = tokio::spawn(progress::show(ctx.clone(), started, opts.progress));

    if continuing {
        settle::resume_in_doubt(&ctx).await?;
    }
    if !opts.settle_only {
        worker::drain_spool(&ctx, workers).await?;
    }
    progress.abort();
    let _ = progress.await;

    // What is still in doubt decides whether the run is finished.
    let mut in_doubt = 0u64;
    journal.for_each_message(run.seq, |_, rec| {
        if matches!(rec.state, State::Sent | State::Acked) {
            in_doubt += 1;
        }
        Ok(())
    })?;
    let mut report = ctx.report().clone();
    report.in_doubt = in_doubt;
    report.set_elapsed(started.elapsed());
    let (code, outcome) = exit_code(&report, stop.is_set(), opts.settle_only);
    report.exit_code = code;
    report.outcome = outcome.to_string();
    // Stopped by a signal: the rest of the spool belongs to this run, so it stays open for
    // `drain resume` (same run id, same dedupe scope) even with nothing in doubt.
    run.status = if in_doubt == 0 && !stop.is_set() {
        RunStatus::Finished
    } else {
        RunStatus::Interrupted
    };
    run.ended_at = Some(Timestamp::now());
    run.exit_code = Some(code);
    run.summary = serde_json::to_value(&report).ok();
    let finished = run.status == RunStatus::Finished;
    journal.commit(vec![Op::PutRun(run)]).await?;
    if finished {
        // Receivers may forget this run's dedupe keys now (best effort: they also expire).
        for d in &ctx.dests {
            if let Err(e) = ctx.client.finish(d).await {
                tracing::info!(dest = %d, "could not tell {d} the run finished: {e}");
            }
        }
    }
    // Close the journal cleanly (every task holding the context has ended).
    drop(ctx);
    journal.close();
    Ok(report)
}

/// The exit code and a one-word outcome, as product.md defines them.
fn exit_code(r: &Report, stopped: bool, settle_only: bool) -> (i32, &'static str) {
    if stopped {
        (42, "stopped by signal")
    } else if !r.remove_failed.is_empty() {
        if r.undelivered.is_empty() && r.in_doubt == r.remove_failed.len() as u64 {
            (40, "delivered; removing some local copies failed")
        } else {
            (41, "partly delivered; removing some local copies failed")
        }
    } else if !r.undelivered.is_empty() || r.in_doubt > 0 {
        (12, "some messages could not be distributed")
    } else if !r.unreadable.is_empty() {
        (11, "some messages could not be read")
    } else if r.fallback.messages > 0 {
        (13, "the rest was moved to the fallback path")
    } else if settle_only {
        (0, "settled")
    } else {
        (0, "drained")
    }
}
