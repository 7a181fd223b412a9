//! Progress while a drain runs: a live bar on a terminal, or one structured log line every few
//! seconds when standard error is not a terminal (systemd, Kubernetes), or nothing (`--quiet`).
//! The totals come from a quick counting pass over the spool (names and sizes only, streamed),
//! so "left" and the ETA appear once it is done.
//!
//! Owns the display only: it reads the run's report and totals and changes nothing. Uses
//! `options` and `run`; started and aborted by `engine::run`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::options::ProgressMode;
use super::run::Run;
use crate::base::units::human_bytes;

/// Counts the spool in the background (streaming; memory does not grow with it).
pub(crate) fn count_spool(run: &Run) {
    // Holds only the spool and the totals: it may outlive the run by a little.
    let (spool, totals) = (run.spool.clone(), run.state.totals.clone());
    let stop = run.stop.clone();
    tokio::task::spawn_blocking(move || {
        let (mut n, mut b) = (0u64, 0u64);
        for e in spool.scan().flatten() {
            // The process waits for this task before it exits: a stop must not wait for a
            // count of a million files.
            if stop.is_cancelled() {
                return;
            }
            n += 1;
            b += std::fs::metadata(&e.path).map(|m| m.len()).unwrap_or(0);
        }
        totals.bytes.store(b, Ordering::Relaxed);
        totals.messages.store(n, Ordering::Relaxed);
    });
}

/// One snapshot of where the run is.
struct Snapshot {
    done: u64,
    done_bytes: u64,
    failed: u64,
    left: Option<u64>,
    left_bytes: Option<u64>,
    rate: f64,
    byte_rate: f64,
    eta: Option<Duration>,
    per_dest: String,
    failing: String,
}

fn snapshot(run: &Run) -> Snapshot {
    let (done, done_bytes, failed, per_dest) = {
        let r = run.state.report();
        let t = r.total();
        let per: Vec<String> = r
            .delivered
            .iter()
            .map(|(d, c)| format!("{d}={}", c.messages))
            .chain((r.fallback.messages > 0).then(|| format!("fallback={}", r.fallback.messages)))
            .collect();
        (
            t.messages + r.fallback.messages,
            t.bytes + r.fallback.bytes,
            (r.unreadable.len() + r.undelivered.len()) as u64,
            per.join(","),
        )
    };
    let secs = run.set.started.elapsed().as_secs_f64().max(0.001);
    let (tm, tb) = (
        run.state.totals.messages.load(Ordering::Relaxed),
        run.state.totals.bytes.load(Ordering::Relaxed),
    );
    let known = tm != u64::MAX;
    let left = known.then(|| tm.saturating_sub(done + failed));
    let left_bytes = known.then(|| tb.saturating_sub(done_bytes));
    let rate = done as f64 / secs;
    let eta = left
        .filter(|_| rate > 0.0)
        .map(|l| Duration::from_secs_f64(l as f64 / rate));
    Snapshot {
        done,
        done_bytes,
        failed,
        left,
        left_bytes,
        rate,
        byte_rate: done_bytes as f64 / secs,
        eta,
        per_dest,
        failing: run.state.failing(),
    }
}

/// Shows progress until aborted.
pub(crate) async fn show(run: Arc<Run>, mode: ProgressMode) {
    match mode {
        ProgressMode::Off => {}
        ProgressMode::Log(every) => loop {
            tokio::time::sleep(every).await;
            let s = snapshot(&run);
            tracing::info!(
                done = s.done,
                done_bytes = s.done_bytes,
                failed = s.failed,
                left = s.left,
                left_bytes = s.left_bytes,
                rate_msgs = (s.rate * 10.0).round() / 10.0,
                rate_bytes = s.byte_rate.round() as u64,
                eta_secs = s.eta.map(|d| d.as_secs()),
                per_destination = %s.per_dest,
                failing = %s.failing,
                "progress"
            );
        },
        ProgressMode::Bar => {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} msgs {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let _clear = ClearOnDrop(bar.clone());
            loop {
                let s = snapshot(&run);
                bar.set_length(s.left.map_or(s.done, |l| s.done + s.failed + l));
                bar.set_position(s.done + s.failed);
                bar.set_message(format!(
                    "{} ({}/s, {:.0} msg/s){}{} {}{}",
                    human_bytes(s.done_bytes),
                    human_bytes(s.byte_rate as u64),
                    s.rate,
                    s.left_bytes
                        .map(|b| format!(", {} left", human_bytes(b)))
                        .unwrap_or_default(),
                    s.eta
                        .map(|d| format!(", ETA {}s", d.as_secs()))
                        .unwrap_or_default(),
                    s.per_dest,
                    if s.failing.is_empty() {
                        String::new()
                    } else {
                        format!(" | failing: {}", s.failing)
                    }
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Clears the bar when the task is aborted, so the report starts on a clean line.
struct ClearOnDrop(indicatif::ProgressBar);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
