//! The run's own record: starting a run or continuing an unfinished one, and closing it with
//! its report and exit code.
//!
//! Owns the rules of [`RunRecord`] in the engine: a run stays open (`running`/`interrupted`)
//! while anything is in doubt or after a stop, so `drain resume` continues it with the same run
//! id (the receivers' dedupe scope); it is `finished` only when nothing is in doubt. The
//! records themselves are written by the ledger. Uses `options`, `report`, `run` and `ledger`;
//! called by `engine::run` at its start and end.

use anyhow::Context;

use super::ledger;
use super::options::{DrainOptions, Mode};
use super::report::{self, Problem, Report};
use super::run::Run;
use crate::base::{Destination, MessageId, Timestamp};
use crate::journal::{self, Journal, MarkedRun, RunMarker, RunRecord, RunStatus, State};

/// A run begun (its record durable), or why there is none.
pub(crate) enum Begun {
    Run {
        record: RunRecord,
        /// An unfinished run is continued: what it left in doubt is settled first.
        continuing: bool,
        /// Every destination of the run, and which of them take new messages now.
        dests: Vec<Destination>,
        active: Vec<bool>,
    },
    /// `drain resume` with no unfinished run: this report (exit 0) says so.
    NothingToResume(Report),
}

/// Continues the unfinished run, or starts a new one, and journals its record (then the run's
/// marker: see `journal::marker`).
pub(crate) async fn begin(
    journal: &Journal,
    opts: &DrainOptions,
    sender: &str,
) -> anyhow::Result<Begun> {
    let last = journal.last_run()?;
    check_marker(journal, opts, last.as_ref())?;
    let unfinished = last.filter(|r| r.status != RunStatus::Finished);
    let continuing = unfinished.is_some();
    let record = match unfinished {
        Some(r) => continue_run(r, &opts.destinations),
        None if opts.mode.requires_unfinished() => {
            return Ok(Begun::NothingToResume(nothing_to_resume(journal)?));
        }
        None => new_run(journal, opts)?,
    };
    // Given destinations take new messages; a resumed run without any uses the run's own.
    let dests: Vec<Destination> = record
        .destinations
        .iter()
        .map(|d| Destination::parse(d).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()
        .context("the run's destinations in the journal")?;
    let active: Vec<bool> = dests
        .iter()
        .map(|d| opts.destinations.is_empty() || opts.destinations.contains(d))
        .collect();
    // The record first, then the marker, both before anything is sent: a kill between them
    // leaves a run the journal knows and nothing sent (the next drain continues it), never a
    // marker naming a run the journal does not know (which only a lost journal may mean).
    ledger::put_run(journal, record.clone()).await?;
    let marker = RunMarker::new(sender, &record.id, record.seq, record.destinations.clone());
    journal::write_marker(&opts.data_dir, &marker)?;
    Ok(Begun::Run {
        record,
        continuing,
        dests,
        active,
    })
}

/// A marker of an unfinished run that the journal does not know as unfinished means the
/// journal was lost or replaced: sending now could deliver messages twice. A marker of a run
/// the journal knows as finished is stale (a crash before it was removed): cleared.
fn check_marker(
    journal: &Journal,
    opts: &DrainOptions,
    last: Option<&RunRecord>,
) -> anyhow::Result<()> {
    let Some(m) = journal::read_marker(&opts.data_dir)? else {
        return Ok(());
    };
    match m.against(last) {
        MarkedRun::Finished => {
            journal::clear_marker(&opts.data_dir)?;
            Ok(())
        }
        MarkedRun::Unfinished => Ok(()),
        MarkedRun::Lost => anyhow::bail!(
            "drain run {} (#{}, started {}, to {}) did not finish, but the journal {} does not know \
             it (it was lost, removed or replaced): sending now could deliver messages twice. Run \
             `drain --data-dir {} recover` first: it asks those destinations about every message \
             still in the spool and removes the copies they already hold",
            m.run_id,
            m.run_seq,
            m.started_at,
            m.destinations.join(", "),
            journal.path().display(),
            opts.data_dir.display()
        ),
    }
}

/// The unfinished run `r`, running again, with any new destinations added.
fn continue_run(mut r: RunRecord, given: &[Destination]) -> RunRecord {
    r.resumed += 1;
    r.status = RunStatus::Running;
    r.ended_at = None;
    r.exit_code = None;
    for d in given {
        let d = d.to_string();
        if !r.destinations.contains(&d) {
            r.destinations.push(d);
        }
    }
    tracing::info!(run = %r.id, seq = r.seq, "continuing unfinished drain run #{}", r.seq);
    r
}

fn nothing_to_resume(journal: &Journal) -> anyhow::Result<Report> {
    let what = match journal.last_run()? {
        Some(r) => format!(
            "the last drain run (#{}, {}) finished with exit {}",
            r.seq,
            r.id,
            r.exit_code.map_or("?".to_string(), |c| c.to_string())
        ),
        None => "no drain has run on this data directory".to_string(),
    };
    Ok(Report {
        exit_code: 0,
        outcome: format!("nothing to resume: {what}"),
        ..Report::default()
    })
}

fn new_run(journal: &Journal, opts: &DrainOptions) -> anyhow::Result<RunRecord> {
    if opts.destinations.is_empty() {
        anyhow::bail!("no destination given");
    }
    Ok(RunRecord {
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
        compacted: None,
    })
}

/// A spool error as a problem of the final scan, named by its file.
fn unreadable(e: &crate::spool::SpoolError) -> Problem {
    Problem {
        what: e
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        reason: e.to_string(),
    }
}

/// Exit 0 promises an empty spool: the last look before saying so. Lists what is still there
/// (at most 1,000 names; a count beyond).
fn final_scan(run: &Run) -> Vec<Problem> {
    const MAX_LISTED: usize = 1000;
    let mut left = Vec::new();
    let mut more = 0u64;
    for entry in run.spool.scan() {
        if left.len() >= MAX_LISTED {
            more += 1;
            continue;
        }
        left.push(match entry {
            Ok(e) => Problem {
                what: e.path.display().to_string(),
                reason: "appeared after the last pass, or was kept for a reason not reported"
                    .to_string(),
            },
            Err(e) => unreadable(&e),
        });
    }
    if more > 0 {
        left.push(Problem {
            what: format!("{more} more files"),
            reason: "not listed".to_string(),
        });
    }
    // The scan skips staged copies (not messages yet); the start settled every one it could,
    // so one still here is unsettled, and never silently left behind.
    match run.spool.staged() {
        Ok(staged) => left.extend(staged.into_iter().map(|s| {
            Problem {
                what: s.path.display().to_string(),
                reason: "a received copy left staged, not settled (no intake database answers for \
                     it, or it cannot be read): start `drain serve` once to settle it, or look \
                     at it"
                    .to_string(),
            }
        })),
        Err(e) => left.push(unreadable(&e)),
    }
    if !left.is_empty() {
        tracing::error!(
            "the final scan found {} files still in the spool: not reporting the instance as drained",
            left.len()
        );
    }
    left
}

/// Ends this invocation: counts what is still in doubt, sets the exit code, journals the run's
/// record, and (when finished) tells the destinations. Returns the report.
pub(crate) async fn finish(run: &Run, mut record: RunRecord, mode: Mode) -> anyhow::Result<Report> {
    // What is still in doubt decides whether the run is finished.
    let mut in_doubt = 0u64;
    run.journal.for_each_message(record.seq, |_, rec| {
        if matches!(rec.state, State::Sent | State::Acked) {
            in_doubt += 1;
        }
        Ok(())
    })?;
    let stopped = run.stopped();
    let mut report = run.state.report().clone();
    report.in_doubt = in_doubt;
    report.set_elapsed(run.set.started.elapsed());
    if report::exit_code(&report, stopped, mode).0 == 0 && mode != Mode::SettleOnly {
        report.left_behind = final_scan(run);
    }
    let (code, outcome) = report::exit_code(&report, stopped, mode);
    report.exit_code = code;
    report.outcome = outcome.to_string();
    // Stopped by a signal: the rest of the spool belongs to this run, so it stays open for
    // `drain resume` (same run id, same dedupe scope) even with nothing in doubt. So does a run
    // whose removals are not known durable: a power cut may bring files back, which only this
    // run's journal can tell apart (delivered: removed again) from new mail.
    record.status = if in_doubt == 0 && !stopped && report.removals_not_durable.is_empty() {
        RunStatus::Finished
    } else {
        RunStatus::Interrupted
    };
    record.ended_at = Some(Timestamp::now());
    record.exit_code = Some(code);
    record.summary = serde_json::to_value(&report).ok();
    let finished = record.status == RunStatus::Finished;
    ledger::put_run(&run.journal, record).await?;
    if finished {
        journal::clear_marker(&run.set.data_dir)?;
        // Receivers may forget this run's dedupe keys now (best effort: they also expire).
        for d in &run.set.dests {
            if let Err(e) = run.client.finish(d).await {
                tracing::info!(dest = %d, "could not tell {d} the run finished: {e}");
            }
        }
    }
    Ok(report)
}
