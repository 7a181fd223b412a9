//! The drain engine: moves every message of this instance's spool to the destinations.
//!
//! This file only orchestrates a run ([`run`]); each step of a message's way has one module:
//!
//! | step | module |
//! |------|--------|
//! | listed and read from the spool, hashed, within the byte budget | `scan` |
//! | journaled (`read`, `sent`, `acked`, `rejected`, `deleted`, ...) | `ledger` (the only writer of message records) |
//! | given a destination (round-robin, failover, backoff) | `route` |
//! | encoded, sent, the answer classified | `deliver` (over `client`), answers applied by `answer` |
//! | parked by another instance behind a balancer: journaled `parked`, then committed there | `commit` |
//! | acknowledged: `acked` durable, then the local copy removed, in groups off the workers' path | `retire` (through `ledger`; fed by `answer` and `settle`) |
//! | in doubt (ambiguous end, or left by a killed attempt): asked about | `settle`; at start-up `resume` |
//! | moved to `--fallback-path` when time is up | `fallback` (`fallback_dir` owns the directory) |
//! | counted and shown | `report`, `progress` |
//! | the run's own record and exit code | `lifecycle`, `report` |
//! | a run whose journal was lost, settled by asking its destinations | `recover` |
//!
//! Shared context: `run` (fixed `Settings`, shared services, mutable `RunState`); `options`
//! holds what the caller asks for ([`DrainOptions`], [`Mode`]); `item` is one message on its
//! way. A process-level wrapper with the instance lock and signal handling is [`session`].
//!
//! Imports flow one way (each module uses only those listed before it):
//! `options`, `report`, `client`, `item`, `fallback_dir` -> `run` -> `ledger` -> `retire` -> `answer` ->
//! `commit` -> `deliver`, `settle`, `fallback` -> `route` -> `scan`, `resume` -> `progress`, `lifecycle` ->
//! `mod.rs` (`run`) -> `session`.
//!
//! Invariants (product.md): a `sent` record is durable before a request leaves; a local file
//! is removed only after a durable acknowledgement; a message is never sent to a second
//! destination while the first may hold it (unless the operator opts in with
//! `--reassign-after`, and then it is flagged); memory is bounded by `--concurrency` and the
//! byte budget, not by the spool's size. Called by the CLI (`drain <DESTINATION>...` and
//! `drain resume`) and the demo, through [`session`].

mod answer;
pub mod client;
mod commit;
mod deliver;
mod failure;
mod fallback;
mod fallback_dir;
mod item;
mod ledger;
mod lifecycle;
mod options;
mod progress;
pub mod recover;
pub mod report;
mod resume;
mod retire;
mod route;
mod run;
mod scan;
pub mod session;
mod settle;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
pub use tokio_util::sync::CancellationToken;

pub use crate::base::Destination;
use crate::instance::Instance;
use crate::journal::{Journal, RunRecord};
use crate::spool::Spool;
use client::Client;
use fallback_dir::FallbackDir;
use lifecycle::Begun;
pub use options::{
    DEFAULT_JOURNAL_RETENTION, DrainOptions, Mode, ProgressMode, default_concurrency,
};
pub use report::Report;
use run::{Run, RunState, Settings};

/// Runs (or continues) a drain until it ends or `stop` is cancelled (then requests in flight
/// finish first). Returns the report; `report.exit_code` is the process's exit.
pub async fn run(opts: DrainOptions, stop: CancellationToken) -> anyhow::Result<Report> {
    let started = Instant::now();
    let inst = Instance::open(&opts.data_dir)?;
    let spool = Spool::open(&opts.data_dir)?;
    spool.clean_stale_tmp(Duration::from_secs(3600));
    // Copies this instance's serve answered for but had not published yet are messages to
    // drain too; the ones it never answered for go (their senders send them again).
    crate::intake::settle_data_dir(&opts.data_dir, &inst.id)?;
    // Checked before a run is recorded, so a wrong --bind-ip leaves nothing to resume.
    if let Some(ip) = opts.bind_ip {
        crate::base::check_bind_ip(ip, &opts.destinations).map_err(anyhow::Error::msg)?;
    }
    // Likewise an unreadable or mismatched --client-cert/--client-key.
    if let Some(id) = &opts.client_identity {
        id.load_pem()
            .map_err(|e| anyhow::anyhow!("--client-cert/--client-key: {e}"))?;
    }
    let journal = Journal::open(&opts.data_dir)?;
    compact_old_runs(&journal, opts.journal_retention).await;
    let (record, continuing, dests, active) =
        match lifecycle::begin(&journal, &opts, &inst.id).await? {
            Begun::Run {
                record,
                continuing,
                dests,
                active,
            } => (record, continuing, dests, active),
            Begun::NothingToResume(report) => return Ok(report),
        };
    let set = Settings::new(&opts, record.seq, dests, active, started);
    let (retire_tx, retire_rx) = tokio::sync::mpsc::channel(retire::QUEUE);
    let run = Arc::new(assemble(&opts, &inst, &record, set, &journal, spool, stop)?);
    *run.retiring.lock().unwrap_or_else(|p| p.into_inner()) = Some(retire_tx);
    tracing::info!(
        run = %record.id,
        destinations = %run.set.dests.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","),
        concurrency = opts.concurrency.max(1),
        batch = run.set.batch_max,
        "drain run #{} started",
        record.seq
    );
    progress::count_spool(&run);
    let progress = tokio::spawn(progress::show(run.clone(), opts.progress));
    let retiring = retire::start(&run, retire_rx);

    let moved = async {
        if continuing {
            resume::resume_in_doubt(&run).await?;
        }
        if opts.mode != Mode::SettleOnly {
            scan::drain_spool(&run).await?;
        }
        // Messages in doubt are settled beside the scan; the run ends when they are placed.
        wait_for_settling(&run).await
    }
    .await;
    // Everything acknowledged is retired before the report is counted, even after an error.
    let retired = retire::close(&run, retiring).await;
    progress.abort();
    let _ = progress.await;
    moved?;
    if let Some(p) = retired? {
        run.state.report().removals_not_durable.push(p);
    }

    let mut report = lifecycle::finish(&run, record, opts.mode).await?;
    report.events = crate::events::EventCounts::of(&opts.data_dir);
    // Close the journal cleanly (every task holding the run has ended).
    drop(run);
    journal.close();
    Ok(report)
}

/// Keeps only the audit of finished runs older than `retention` (`inspect::compact`); a
/// failure is logged, never fatal: the journal only goes on growing until it succeeds.
async fn compact_old_runs(journal: &Journal, retention: std::time::Duration) {
    match crate::inspect::compact::compact(journal, retention).await {
        Ok(c) if !c.runs.is_empty() => tracing::info!(
            "journal: {} finished run(s) older than {} compacted to their audit ({} message records dropped)",
            c.runs.len(),
            humantime::format_duration(retention),
            c.messages
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("compacting old runs of the journal failed: {e}"),
    }
}

/// Waits for every settling task (a task may start others); the first error stops the run.
async fn wait_for_settling(run: &Run) -> anyhow::Result<()> {
    let mut first_err = None;
    while let Some(h) = run.state.take_settling() {
        let r = match h.await {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("a settling task failed: {e}")),
        };
        if let Err(e) = r {
            run.stop.cancel();
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Opens the run's services (fallback directory, HTTPS client, byte budget) around `set`.
fn assemble(
    opts: &DrainOptions,
    inst: &Instance,
    record: &RunRecord,
    set: Settings,
    journal: &Journal,
    spool: Spool,
    stop: CancellationToken,
) -> anyhow::Result<Run> {
    let fallback = match &opts.fallback {
        Some((dir, after)) => Some(FallbackDir::open(dir, set.started + *after)?),
        None => None,
    };
    // A --bind-ip this machine does not have, or of the wrong family, would fail every
    // connection as "network unreachable", retried forever: refuse it before anything moves.
    if let Some(ip) = opts.bind_ip {
        crate::base::check_bind_ip(ip, &set.dests).map_err(anyhow::Error::msg)?;
    }
    let client = Client::new(
        opts.bind_ip,
        opts.ca_cert.as_deref(),
        opts.client_identity.as_ref(),
        &inst.id,
        &record.id,
        set.workers,
    )?;
    let state = RunState::new(Report {
        run_id: record.id.clone(),
        run_seq: record.seq,
        ..Report::default()
    });
    Ok(Run {
        budget: Arc::new(Semaphore::new(set.budget_units as usize)),
        set,
        journal: journal.clone(),
        spool,
        client,
        stop,
        fallback,
        state,
        retiring: std::sync::Mutex::new(None),
    })
}
