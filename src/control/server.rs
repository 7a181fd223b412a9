//! The serve's side of the control socket: answers requests, stops and restarts intake for a
//! drain, and notices a drainer that went away.
//!
//! Owns [`ServeControl`] (shared with the intake's listener, which waits on
//! [`ServeControl::shutdown_requested`]) and [`serve_socket`]. Invariant: intake is stopped for
//! a drain only while that drain is alive: the connection that began it still open and its pid
//! running. Started by `intake::tasks`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{Answer, Request, socket_path};
use crate::instance::pid_alive;

/// The drain that stopped intake.
struct Drainer {
    /// How it names itself ("pid N (drain)").
    by: String,
    pid: Option<u32>,
    /// Which connection began it (so only that connection's close ends it).
    token: u64,
}

#[derive(Default)]
struct CtlState {
    drainer: Option<Drainer>,
    next_token: u64,
    /// A drain asked this serve to stop: intake stays off whatever happens to the drainer.
    stopping: bool,
}

/// What the server side shares with the intake and the serve loop.
pub struct ServeControl {
    pub accepting: Arc<AtomicBool>,
    pub endpoints: usize,
    state: Mutex<CtlState>,
    shutdown: tokio::sync::Notify,
}

impl ServeControl {
    pub fn new(accepting: Arc<AtomicBool>, endpoints: usize) -> Arc<ServeControl> {
        Arc::new(ServeControl {
            accepting,
            endpoints,
            state: Mutex::new(CtlState::default()),
            shutdown: tokio::sync::Notify::new(),
        })
    }

    /// Resolves when a drain asked this serve to stop.
    pub async fn shutdown_requested(&self) {
        self.shutdown.notified().await
    }

    /// The drain this serve stopped for, as it names itself ("pid N (drain)"), if any: the
    /// serve writes it into the instance's lock file before releasing it.
    pub fn drainer(&self) -> Option<String> {
        self.lock().drainer.as_ref().map(|d| d.by.clone())
    }

    fn lock(&self) -> MutexGuard<'_, CtlState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers one request; for a drain begun, also the token of its connection.
    fn answer(&self, req: Request) -> (Answer, Option<u64>) {
        let mut st = self.lock();
        let mut a = Answer {
            ok: true,
            pid: std::process::id(),
            endpoints: self.endpoints,
            ..Answer::default()
        };
        let mut token = None;
        match req {
            Request::Status => {}
            Request::BeginDrain { by, pid } => match self.begin(&mut st, by, pid) {
                Ok(t) => token = Some(t),
                Err(e) => {
                    a.ok = false;
                    a.error = Some(e);
                }
            },
            Request::CancelDrain => {
                if !st.stopping {
                    tracing::info!("the drain was called off: intake accepts messages again");
                    self.accepting.store(true, Ordering::SeqCst);
                }
                st.drainer = None;
            }
            Request::Shutdown => {
                let by = st.drainer.as_ref().map_or("a drain", |d| d.by.as_str());
                tracing::warn!("stopping at the request of {by}");
                st.stopping = true;
                self.accepting.store(false, Ordering::SeqCst);
                self.shutdown.notify_one();
            }
        }
        a.accepting = self.accepting.load(Ordering::SeqCst);
        a.draining_by = st.drainer.as_ref().map(|d| d.by.clone());
        (a, token)
    }

    /// Stops intake for drainer `by`, unless another drainer that is still running did.
    fn begin(&self, st: &mut CtlState, by: String, pid: Option<u32>) -> Result<u64, String> {
        if let Some(other) = &st.drainer
            && other.by != by
        {
            if other.pid.is_none_or(pid_alive) {
                return Err(format!(
                    "this instance is already being drained by {}",
                    other.by
                ));
            }
            tracing::warn!("{} is gone; {by} takes the drain over", other.by);
        }
        tracing::warn!("{by} is draining this instance: intake now answers 503");
        self.accepting.store(false, Ordering::SeqCst);
        st.next_token += 1;
        let token = st.next_token;
        st.drainer = Some(Drainer { by, pid, token });
        Ok(token)
    }

    /// The connection that began drain `token` closed: the drainer is gone (killed, or done
    /// without stopping us); unless we are stopping for it, intake accepts again.
    fn connection_closed(&self, token: u64) {
        let mut st = self.lock();
        if st.stopping || st.drainer.as_ref().is_none_or(|d| d.token != token) {
            return;
        }
        let gone = st.drainer.take().map(|d| d.by).unwrap_or_default();
        tracing::warn!(
            "{gone} went away without finishing (its control connection closed): intake \
             accepts messages again"
        );
        self.accepting.store(true, Ordering::SeqCst);
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
        tokio::spawn(serve_connection(stream, ctl.clone()));
    }
}

/// One request, one answer; a drain begun on this connection lasts until it closes.
async fn serve_connection(stream: UnixStream, ctl: Arc<ServeControl>) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    if r.read_line(&mut line).await.is_err() {
        return;
    }
    let (answer, token) = match serde_json::from_str::<Request>(line.trim()) {
        Ok(req) => ctl.answer(req),
        Err(e) => (
            Answer {
                error: Some(format!("bad control request: {e}")),
                ..Answer::default()
            },
            None,
        ),
    };
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    out.push(b'\n');
    let sent = w.write_all(&out).await;
    let Some(token) = token else { return };
    if sent.is_ok() {
        // Anything more the drainer writes is ignored; end of file (or an error) is its end.
        let mut sink = [0u8; 64];
        while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {}
    }
    ctl.connection_closed(token);
}
