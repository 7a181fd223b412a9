//! The local control socket of `drain serve` (`<data-dir>/control.sock`), and what a drain does
//! with it before moving anything: stop the instance's intake (it answers 503, so senders try
//! their next destination) and everything else except event delivery, wait for the event queue
//! to empty, then stop `drain serve` and take the instance's exclusive lock.
//!
//! Protocol: one JSON request line, one JSON answer line.
//! `{"cmd":"status"}` -> `{"ok":true,"pid":..,"accepting":..,"endpoints":N,"draining_by":..}`;
//! `{"cmd":"begin-drain","by":"..."}` stops intake (refused if another drain already did);
//! `{"cmd":"cancel-drain"}` re-enables intake; `{"cmd":"shutdown"}` stops `drain serve`.
//!
//! Server side ([`ServeControl`], [`serve_socket`]) run by `intake::serve`; client side
//! ([`prepare`], [`request`]) used by a drain before it takes the instance. Invariant: a drain
//! owns the instance only through its exclusive lock, which the serve releases on exit.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::events::EventQueue;
use crate::instance::{Instance, InstanceLock, LockError};

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Status,
    BeginDrain { by: String },
    CancelDrain,
    Shutdown,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub accepting: bool,
    #[serde(default)]
    pub endpoints: usize,
    #[serde(default)]
    pub draining_by: Option<String>,
}

/// What the server side shares with the intake and the serve loop.
pub struct ServeControl {
    pub accepting: Arc<AtomicBool>,
    pub endpoints: usize,
    draining_by: Mutex<Option<String>>,
    shutdown: tokio::sync::Notify,
}

impl ServeControl {
    pub fn new(accepting: Arc<AtomicBool>, endpoints: usize) -> Arc<ServeControl> {
        Arc::new(ServeControl {
            accepting,
            endpoints,
            draining_by: Mutex::new(None),
            shutdown: tokio::sync::Notify::new(),
        })
    }

    /// Resolves when a drain asked this serve to stop.
    pub async fn shutdown_requested(&self) {
        self.shutdown.notified().await
    }

    fn answer(&self, req: Request) -> Answer {
        let mut by = self.draining_by.lock().unwrap_or_else(|p| p.into_inner());
        let mut a = Answer {
            ok: true,
            pid: std::process::id(),
            endpoints: self.endpoints,
            ..Answer::default()
        };
        match req {
            Request::Status => {}
            Request::BeginDrain { by: who } => match by.as_ref() {
                Some(other) if *other != who => {
                    a.ok = false;
                    a.error = Some(format!("this instance is already being drained by {other}"));
                }
                _ => {
                    tracing::warn!("{who} is draining this instance: intake now answers 503");
                    self.accepting.store(false, Ordering::SeqCst);
                    *by = Some(who);
                }
            },
            Request::CancelDrain => {
                tracing::info!("the drain was called off: intake accepts messages again");
                self.accepting.store(true, Ordering::SeqCst);
                *by = None;
            }
            Request::Shutdown => {
                tracing::warn!(
                    "stopping at the request of {}",
                    by.as_deref().unwrap_or("a drain")
                );
                self.accepting.store(false, Ordering::SeqCst);
                self.shutdown.notify_one();
            }
        }
        a.accepting = self.accepting.load(Ordering::SeqCst);
        a.draining_by = by.clone();
        a
    }
}

/// Serves the control socket until the task is dropped. The caller holds the instance lock, so
/// a socket file left by a dead serve can be replaced.
pub async fn serve_socket(data_dir: &Path, ctl: Arc<ServeControl>) -> anyhow::Result<()> {
    let path = socket_path(data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on the control socket {}: {e}",
            path.display()
        )
    })?;
    // Owner only, like every file in the data directory.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            &path,
            std::fs::Permissions::from_mode(crate::base::durable::FILE_MODE),
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let ctl = ctl.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(r).read_line(&mut line).await.is_err() {
                return;
            }
            let answer = match serde_json::from_str::<Request>(line.trim()) {
                Ok(req) => ctl.answer(req),
                Err(e) => Answer {
                    error: Some(format!("bad control request: {e}")),
                    ..Answer::default()
                },
            };
            let mut out = serde_json::to_vec(&answer).unwrap_or_default();
            out.push(b'\n');
            let _ = w.write_all(&out).await;
        });
    }
}

/// Sends one control request to the serve of `data_dir`.
pub async fn request(data_dir: &Path, req: &Request) -> std::io::Result<Answer> {
    let mut stream = UnixStream::connect(socket_path(data_dir)).await?;
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).await?;
    serde_json::from_str(answer.trim()).map_err(std::io::Error::other)
}

/// How a drain treats pending events.
#[derive(Clone, Copy, Debug)]
pub struct EventWait {
    /// `--no-wait-on-events` turns this off.
    pub wait: bool,
    /// `--max-event-wait`.
    pub max: Option<Duration>,
}

/// Why a drain could not start.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// Exit 10: events still pending when `--max-event-wait` expired (or nobody delivers them).
    #[error("{0}")]
    EventsPending(String),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("{0}")]
    Other(String),
}

/// Makes the instance ready to drain and returns its exclusive lock: stops a running
/// `drain serve` (after its events are delivered, unless told not to wait) or, with none
/// running, takes the lock directly.
pub async fn prepare(inst: &Instance, wait: EventWait) -> Result<InstanceLock, PrepareError> {
    let events =
        EventQueue::open(&inst.data_dir).map_err(|e| PrepareError::Other(e.to_string()))?;
    match inst.try_lock("drain") {
        Ok(lock) => {
            let n = events.count().unwrap_or(0);
            if wait.wait && n > 0 {
                return Err(PrepareError::EventsPending(format!(
                    "{n} events are pending and no `drain serve` is running to deliver them; \
                     start it, or pass --no-wait-on-events (the spool is untouched)"
                )));
            }
            return Ok(lock);
        }
        Err(LockError::Held { holder, .. }) => stop_intake(inst, holder).await?,
        Err(e) => return Err(e.into()),
    }
    if wait.wait {
        wait_for_events(inst, &events, wait).await?;
    }
    stop_serve(inst).await
}

/// A running serve holds the lock (`holder`): asks it to stop taking messages. Anything else
/// holding the lock (no control socket answers) is final.
async fn stop_intake(inst: &Instance, holder: String) -> Result<(), PrepareError> {
    let me = format!("pid {} (drain)", std::process::id());
    let status = request(&inst.data_dir, &Request::Status)
        .await
        .map_err(|_| {
            PrepareError::Lock(LockError::Held {
                dir: inst.data_dir.clone(),
                holder: holder.clone(),
            })
        })?;
    let begin = request(&inst.data_dir, &Request::BeginDrain { by: me })
        .await
        .map_err(|e| PrepareError::Other(format!("control socket: {e}")))?;
    if !begin.ok {
        return Err(PrepareError::Lock(LockError::Held {
            dir: inst.data_dir.clone(),
            holder: begin.error.unwrap_or(holder),
        }));
    }
    tracing::info!(
        pid = status.pid,
        "drain serve (pid {}) stopped taking messages",
        status.pid
    );
    Ok(())
}

/// Waits until the serve's event processor delivered every pending event; gives up (and lets
/// intake accept again) when `--max-event-wait` expires or nothing can deliver them.
async fn wait_for_events(
    inst: &Instance,
    events: &EventQueue,
    wait: EventWait,
) -> Result<(), PrepareError> {
    let started = Instant::now();
    let mut last_log = Instant::now();
    loop {
        let n = events.count().unwrap_or(0);
        if n == 0 {
            return Ok(());
        }
        let endpoints = request(&inst.data_dir, &Request::Status)
            .await
            .map(|a| a.endpoints)
            .unwrap_or(0);
        let expired = wait.max.is_some_and(|m| started.elapsed() >= m);
        if expired || endpoints == 0 {
            let _ = request(&inst.data_dir, &Request::CancelDrain).await;
            let why = if endpoints == 0 {
                format!(
                    "{n} events are pending and drain serve has no --event-endpoint to deliver them"
                )
            } else {
                format!(
                    "{n} events still pending after --max-event-wait {:?}",
                    wait.max.unwrap_or_default()
                )
            };
            return Err(PrepareError::EventsPending(format!(
                "{why}; the spool is untouched and intake is accepting again"
            )));
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            tracing::info!(
                pending = n,
                "waiting for the event processor to deliver {n} events"
            );
            last_log = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Tells the serve to stop and takes the lock it releases once its requests in flight are
/// done (up to a minute).
async fn stop_serve(inst: &Instance) -> Result<InstanceLock, PrepareError> {
    request(&inst.data_dir, &Request::Shutdown)
        .await
        .map_err(|e| PrepareError::Other(format!("control socket: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match inst.try_lock("drain") {
            Ok(lock) => return Ok(lock),
            Err(LockError::Held { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => return Err(e.into()),
        }
    }
}
