//! Before a drain moves anything: stop the running `drain serve`'s intake, wait for its events
//! to be delivered, stop it, and take the instance's exclusive lock ([`prepare`]).
//!
//! Owns [`EventWait`] and [`PrepareError`] (with the exit code each failure means). Invariants:
//! nothing here touches the spool; every wait is bounded (`--max-event-wait` when given, each
//! control request by [`DEFAULT_TIMEOUT`] otherwise); a drain that gives up or is stopped by a
//! signal gives intake back before it returns. Uses `client`; called by `engine::session`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::client::{
    ControlError, DEFAULT_TIMEOUT, DrainHold, begin_drain, request_within, seconds,
};
use super::{Request, socket_path};
use crate::events::EventQueue;
use crate::instance::{Holder, Instance, InstanceLock, LockError};

/// How a drain treats pending events.
#[derive(Clone, Copy, Debug)]
pub struct EventWait {
    /// `--no-wait-on-events` turns this off.
    pub wait: bool,
    /// `--max-event-wait`.
    pub max: Option<Duration>,
}

/// Why a drain could not start. In every case nothing was moved and the spool is untouched.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// Events still pending when `--max-event-wait` expired, or nothing can deliver them
    /// (no serve, no endpoint, the serve gone): exit 10.
    #[error("{0}")]
    EventsPending(String),
    /// SIGTERM/SIGINT while waiting for events; intake was given back: exit 42.
    #[error("{0}")]
    Stopped(String),
    /// The serve holding the instance does not answer its control socket in time: exit 1.
    #[error("{0}")]
    Unresponsive(String),
    /// Another drain, still running, has stopped the serve's intake: exit 1.
    #[error(
        "data directory {} is already being drained by {by}; wait for that drain to end, or \
         stop it first",
        dir.display()
    )]
    AlreadyDraining { dir: PathBuf, by: String },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("{0}")]
    Other(String),
}

impl PrepareError {
    /// The process's exit code (product.md's table).
    pub fn exit_code(&self) -> i32 {
        match self {
            PrepareError::EventsPending(_) => 10,
            PrepareError::Stopped(_) => 42,
            _ => 1,
        }
    }
}

/// Time left for talking to the serve: until `--max-event-wait` expires when given.
struct Limits {
    deadline: Option<Instant>,
}

impl Limits {
    /// The limit of the next request: what is left of `--max-event-wait` (at least a moment),
    /// at most [`DEFAULT_TIMEOUT`].
    fn next(&self) -> Duration {
        match self.deadline {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(100), DEFAULT_TIMEOUT),
            None => DEFAULT_TIMEOUT,
        }
    }

    fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// Makes the instance ready to drain and returns its exclusive lock: stops a running
/// `drain serve` (after its events are delivered, unless told not to wait) or, with none
/// running, takes the lock directly. A cancelled `stop` (a signal) ends the event wait.
pub async fn prepare(
    inst: &Instance,
    wait: EventWait,
    stop: &CancellationToken,
) -> Result<InstanceLock, PrepareError> {
    let events =
        EventQueue::open(&inst.data_dir).map_err(|e| PrepareError::Other(e.to_string()))?;
    let limits = Limits {
        deadline: wait.max.map(|m| Instant::now() + m),
    };
    let holder = match inst.try_lock("drain") {
        Ok(lock) => {
            let n = events.count().unwrap_or(0);
            if wait.wait && n > 0 {
                return Err(PrepareError::EventsPending(format!(
                    "{n} events are pending in {} and no `drain serve` is running to deliver \
                     them; start it, or pass --no-wait-on-events (the spool is untouched)",
                    events.dir().display()
                )));
            }
            return Ok(lock);
        }
        Err(LockError::Held { holder, .. }) => holder,
        Err(e) => return Err(e.into()),
    };
    let serve = Serve { inst, holder };
    let hold = serve.stop_intake(&limits).await?;
    if wait.wait {
        serve.wait_for_events(&events, wait, &limits, stop).await?;
    }
    let lock = serve.stop().await;
    drop(hold);
    lock
}

/// The running serve (the lock's holder) as a drain talks to it.
struct Serve<'a> {
    inst: &'a Instance,
    holder: Holder,
}

impl Serve<'_> {
    /// "drain serve (pid N)" as the messages name it.
    fn name(&self) -> String {
        match self.holder.pid {
            Some(p) => format!("drain serve (pid {p})"),
            None => format!("drain serve ({})", self.holder),
        }
    }

    /// A request that failed before the drain began: nothing was changed.
    fn failed_at_start(&self, e: ControlError) -> PrepareError {
        match e {
            // Whatever holds the lock is not a serve answering its socket.
            ControlError::Unreachable { .. } => PrepareError::Lock(LockError::Held {
                dir: self.inst.data_dir.clone(),
                holder: self.holder.clone(),
            }),
            ControlError::Timeout { path, after } => PrepareError::Unresponsive(format!(
                "{} holds {} but gave no answer on its control socket {} within {} (is it \
                 stopped, e.g. by SIGSTOP, or hung?); nothing was changed, the spool is untouched",
                self.name(),
                self.inst.data_dir.display(),
                path.display(),
                seconds(after)
            )),
            e @ ControlError::Protocol { .. } => {
                PrepareError::Other(format!("{}: {e}", self.name()))
            }
        }
    }

    /// Asks the serve to stop taking messages for as long as the returned hold lives.
    async fn stop_intake(&self, limits: &Limits) -> Result<DrainHold, PrepareError> {
        let dir = &self.inst.data_dir;
        request_within(dir, &Request::Status, limits.next())
            .await
            .map_err(|e| self.failed_at_start(e))?;
        let me = format!("pid {} (drain)", std::process::id());
        match begin_drain(dir, &me, std::process::id(), limits.next())
            .await
            .map_err(|e| self.failed_at_start(e))?
        {
            Ok(hold) => {
                tracing::info!(
                    pid = hold.answer.pid,
                    "drain serve (pid {}) stopped taking messages",
                    hold.answer.pid
                );
                Ok(hold)
            }
            Err(refused) => Err(PrepareError::AlreadyDraining {
                dir: dir.clone(),
                by: refused
                    .draining_by
                    .unwrap_or_else(|| refused.error.unwrap_or_default()),
            }),
        }
    }

    /// Waits until the serve's event processor delivered every pending event; gives up (and
    /// lets intake accept again) when `--max-event-wait` expires, nothing can deliver them, or
    /// a signal stops the drain.
    async fn wait_for_events(
        &self,
        events: &EventQueue,
        wait: EventWait,
        limits: &Limits,
        stop: &CancellationToken,
    ) -> Result<(), PrepareError> {
        let mut last_log: Option<Instant> = None;
        loop {
            let n = events.count().unwrap_or(0);
            if n == 0 {
                return Ok(());
            }
            let status = request_within(&self.inst.data_dir, &Request::Status, limits.next());
            let why = match status.await {
                Err(e) => Some(format!(
                    "{n} events are pending and {}: {e}; nothing delivers them",
                    self.name()
                )),
                Ok(a) if a.endpoints == 0 => Some(format!(
                    "{n} events are pending and {} has no --event-endpoint to deliver them",
                    self.name()
                )),
                Ok(_) if limits.expired() => Some(format!(
                    "{n} events still pending after --max-event-wait {:?}",
                    wait.max.unwrap_or_default()
                )),
                Ok(_) => None,
            };
            if let Some(why) = why {
                self.cancel().await;
                return Err(PrepareError::EventsPending(format!(
                    "{why}; the spool is untouched and intake is accepting again"
                )));
            }
            if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                tracing::info!(
                    pending = n,
                    "waiting for the event processor of {} to deliver {n} events",
                    self.name()
                );
                last_log = Some(Instant::now());
            }
            tokio::select! {
                _ = stop.cancelled() => {
                    self.cancel().await;
                    return Err(PrepareError::Stopped(format!(
                        "stopped by signal while waiting for {n} events to be delivered; nothing \
                         moved, the spool is untouched and intake is accepting again"
                    )));
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Gives intake back (best effort, briefly: closing the drain's connection does it too).
    async fn cancel(&self) {
        let dir = &self.inst.data_dir;
        let _ = request_within(dir, &Request::CancelDrain, Duration::from_secs(1)).await;
    }

    /// Tells the serve to stop and takes the lock it releases once its requests in flight are
    /// done (up to a minute).
    async fn stop(&self) -> Result<InstanceLock, PrepareError> {
        let dir = &self.inst.data_dir;
        request_within(dir, &Request::Shutdown, DEFAULT_TIMEOUT)
            .await
            .map_err(|e| {
                PrepareError::Other(format!(
                    "{} did not take the request to stop: {e} ({})",
                    self.name(),
                    socket_path(dir).display()
                ))
            })?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.inst.try_lock("drain") {
                Ok(lock) => return Ok(lock),
                Err(LockError::Held { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}
