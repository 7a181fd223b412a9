//! A drain as a process runs it: the async runtime, the instance's exclusive lock (a fresh
//! drain first stops a running `drain serve` after its events are delivered), and bounded
//! shutdown on SIGTERM/SIGINT.
//!
//! Shutdown: the first signal cancels the run's token (take nothing new, finish requests in
//! flight, exit 42); a second signal, or requests still in flight after [`SHUTDOWN_GRACE`],
//! end the process at once with 42. Every journal record is durable before it is acted on, so
//! that is as safe as SIGKILL: `drain resume` settles what was in flight. Signals are handled
//! from the start: one during the wait for the serve's events ends the wait, gives intake back
//! and exits 42 with nothing moved ([`Ended::NotStarted`]).
//!
//! The top of the engine: uses `engine::run`, `options` and `report`; called by the CLI
//! (`drain`, `drain resume`) and the demo.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::options::DrainOptions;
use super::report::Report;
use crate::control::{EventWait, PrepareError};
use crate::instance::Instance;
use crate::signal::wait_for_signal;

/// How long a SIGTERM/SIGINT waits for requests in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How a drain invocation ended.
pub enum Ended {
    /// The run ended (its report carries the exit code).
    Ran(Box<Report>),
    /// The drain never began (events pending, a signal during the event wait, a serve that
    /// does not answer): nothing moved. The message and the exit code.
    NotStarted { message: String, code: i32 },
}

impl Ended {
    /// Prints the report on standard output (or the reason on standard error) and returns the
    /// process's exit code. A closed stdout does not change it: the exit code is the contract.
    pub fn print(&self, json: bool) -> anyhow::Result<i32> {
        match self {
            Ended::Ran(report) => {
                let text = report.render(json)?;
                let _ = std::io::stdout().write_all(text.as_bytes());
                Ok(report.exit_code)
            }
            Ended::NotStarted { message, code } => {
                let _ = writeln!(std::io::stderr(), "drain: {message}");
                Ok(*code)
            }
        }
    }
}

/// Runs a drain to its end on a new runtime, with the instance locked and signals handled.
/// `events`: wait for the instance's events and stop its `drain serve` first (a fresh drain);
/// `None`: just take the lock (`drain resume`).
pub fn drain(opts: DrainOptions, events: Option<EventWait>) -> anyhow::Result<Ended> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let inst = Instance::open(&opts.data_dir)?;
    // Signals are handled from the start: a SIGTERM while waiting for events ends the wait
    // cleanly (exit 42), as it ends a run.
    let stop = CancellationToken::new();
    rt.spawn(stop_on_signals(stop.clone()));
    // The instance's exclusive lock, held for the whole run.
    let _lock = match events {
        Some(wait) => match rt.block_on(crate::control::prepare(&inst, wait, &stop)) {
            Ok(lock) => lock,
            Err(
                e @ (PrepareError::EventsPending(_)
                | PrepareError::Stopped(_)
                | PrepareError::Unresponsive(_)
                | PrepareError::AlreadyDraining { .. }),
            ) => {
                return Ok(Ended::NotStarted {
                    code: e.exit_code(),
                    message: e.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        },
        None => inst.try_lock("drain resume")?,
    };
    if stop.is_cancelled() {
        return Ok(Ended::NotStarted {
            code: 42,
            message: "stopped by signal before the drain began; nothing moved (the instance's \
                      `drain serve` was already stopped: start it again, or re-run the drain)"
                .to_string(),
        });
    }
    let report = rt.block_on(super::run(opts, stop))?;
    Ok(Ended::Ran(Box::new(report)))
}

/// Cancels `stop` on the first signal; ends the process on a second one or after the grace.
async fn stop_on_signals(stop: CancellationToken) {
    wait_for_signal().await;
    tracing::warn!("signal received: finishing requests in flight, then stopping (exit 42)");
    stop.cancel();
    tokio::select! {
        _ = wait_for_signal() => {
            tracing::warn!("second signal: stopping now; run `drain resume` to settle");
        }
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!(
                "requests still in flight after {SHUTDOWN_GRACE:?}: stopping now; \
                 run `drain resume` to settle"
            );
        }
    }
    std::process::exit(42);
}
