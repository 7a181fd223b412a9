//! The intake server run by `drain serve`: accepts drains from other instances over HTTPS.
//!
//! It owns the listening socket, TLS (rustls), the access policy (`accept_drain_from`,
//! trusted proxies) and the wire protocol's server side (`handler`); what it receives becomes
//! durable through `store`. Invariants: nothing is acknowledged before it is on disk (fsync);
//! a peer not in `accept_drain_from` gets 403 and a log line naming its address; the same
//! message of the same run is stored once however often it arrives. Called by the CLI.

pub mod access;
pub mod config;
mod handler;
pub mod metrics;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::control::ServeControl;
use crate::events::EventQueue;
use crate::events::processor::{self, Endpoint};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub use access::{Access, NetList};
pub use store::Store;

/// Everything `drain serve` needs to accept drains.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub access: Access,
    pub workers: usize,
    /// Largest transfer request body accepted (413 beyond).
    pub max_request_bytes: usize,
    /// Dedupe keys of runs that never said they finished are dropped after this.
    pub dedupe_retention: Duration,
    /// Where the event processor POSTs events.
    pub event_endpoints: Vec<String>,
    /// After a drain stopped this serve, keep the process alive (holding nothing) until a
    /// signal: for a container whose main process must outlive its preStop hook.
    pub wait_after_drain: bool,
    /// Where to serve Prometheus metrics (plain HTTP, `GET /metrics`); none: not served.
    pub metrics_listen: Option<SocketAddr>,
}

/// Shared by every connection.
pub(crate) struct State {
    pub store: Store,
    pub access: Access,
    pub max_request_bytes: usize,
    /// Cleared while the instance is draining or shutting down: intake answers 503.
    pub accepting: Arc<AtomicBool>,
    pub metrics: Arc<metrics::Metrics>,
    /// Request bodies held in memory at once: memory is bounded by this times
    /// `max_request_bytes`, however many senders connect.
    pub bodies: Arc<tokio::sync::Semaphore>,
}

/// Invariant 6: an instance whose last drain run is unfinished does not serve, because a
/// message it still holds may also be on a destination until `drain resume` settles it.
fn refuse_if_draining(data_dir: &std::path::Path) -> anyhow::Result<()> {
    if !data_dir.join("journal.redb").exists() {
        return Ok(());
    }
    let journal = crate::journal::Journal::open(data_dir).map_err(|e| {
        anyhow::anyhow!("cannot check this instance's drain journal (is a drain running?): {e}")
    })?;
    let last = journal.last_run();
    journal.close();
    if let Some(run) = last?
        && run.status != crate::journal::RunStatus::Finished
    {
        anyhow::bail!(
            "refusing to serve: drain run #{} ({}) on {} is unfinished ({:?}); settle it first with \
             `drain --data-dir {} resume` (or `drain --data-dir {} resume --settle-only` to settle \
             the messages in doubt and keep the rest here)",
            run.seq,
            run.id,
            data_dir.display(),
            run.status,
            data_dir.display(),
            data_dir.display()
        );
    }
    Ok(())
}

/// Runs the server until `shutdown` completes, then lets requests in flight finish (up to 30
/// seconds). Writes `<data-dir>/serve.addr` with the bound address once it accepts.
pub async fn serve(
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let endpoints = opts
        .event_endpoints
        .iter()
        .map(|u| Endpoint::new(u).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let inst = crate::instance::Instance::open(&opts.data_dir)?;
    // Held for as long as we serve: a drain of this directory must stop us first.
    let lock = inst.try_lock("drain serve")?;
    refuse_if_draining(&opts.data_dir)?;
    crate::spool::Spool::open(&opts.data_dir)?.clean_stale_tmp(Duration::from_secs(3600));
    let tls = crate::tls::server_config(&opts.tls_cert, &opts.tls_key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let events = EventQueue::open(&opts.data_dir)?;
    let store = Store::open(&opts.data_dir, opts.workers, &inst.id, events.clone())?;
    let accepting = Arc::new(AtomicBool::new(true));
    let event_stats = Arc::new(processor::Stats::default());
    let metrics = Arc::new(metrics::Metrics::new(
        accepting.clone(),
        event_stats.clone(),
        events.dir().to_path_buf(),
    ));
    let state = Arc::new(State {
        store,
        access: opts.access.clone(),
        max_request_bytes: opts.max_request_bytes,
        accepting: accepting.clone(),
        metrics: metrics.clone(),
        bodies: Arc::new(tokio::sync::Semaphore::new(2 * opts.workers.max(1))),
    });
    let control = ServeControl::new(accepting, endpoints.len());
    let control_task = {
        let (dir, ctl) = (opts.data_dir.clone(), control.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::control::serve_socket(&dir, ctl).await {
                tracing::error!("{e}; a drain of this instance will have to stop it by signal");
            }
        })
    };
    let processor_task = tokio::spawn(processor::run(events, endpoints, event_stats));
    // The metrics listener first: its address file exists once serve.addr does.
    let metrics_task = match opts.metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            let local = l.local_addr()?;
            crate::instance::write_atomic(
                &opts.data_dir.join("metrics.addr"),
                format!("{local}\n").as_bytes(),
            )?;
            tracing::info!(addr = %local, "metrics: http://{local}/metrics");
            Some(tokio::spawn(metrics::serve(l, metrics)))
        }
        None => None,
    };
    // Expired dedupe keys go before the first request (then hourly, below).
    if let Err(e) = state.store.expire(opts.dedupe_retention).await {
        tracing::warn!("expiring old dedupe keys failed: {e}");
    }
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let local = listener.local_addr()?;
    crate::instance::write_atomic(
        &opts.data_dir.join("serve.addr"),
        format!("{local}\n").as_bytes(),
    )?;
    tracing::info!(addr = %local, workers = opts.workers, "drain serve: listening");
    if opts.access.accept_from.0.is_empty() {
        tracing::warn!("accept_drain_from is empty: every drain will be refused with 403");
    }

    let sweeper = {
        let store = state.store.clone();
        let retention = opts.dedupe_retention;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            tick.tick().await; // the first tick is immediate: done above
            loop {
                tick.tick().await;
                if let Err(e) = store.expire(retention).await {
                    tracing::warn!("expiring old dedupe keys failed: {e}");
                }
            }
        })
    };
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut stopped_by_drain = false;
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let (tcp, peer) = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let state = state.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(peer = %peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        handler::handle(state.clone(), peer, req)
                    });
                    let conn = builder.serve_connection(TokioIo::new(tls), svc).into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(peer = %peer, "connection ended: {e}");
                    }
                });
            }
            _ = shutdown.as_mut() => break,
            _ = control.shutdown_requested() => {
                stopped_by_drain = true;
                break;
            }
        }
    }
    drop(listener);
    sweeper.abort();
    control_task.abort();
    tracing::info!("drain serve: shutting down, finishing requests in flight");
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after 30s; stopping anyway");
    }
    processor_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
        let _ = std::fs::remove_file(opts.data_dir.join("metrics.addr"));
    }
    let _ = std::fs::remove_file(opts.data_dir.join("serve.addr"));
    let _ = std::fs::remove_file(crate::control::socket_path(&opts.data_dir));
    // Close the dedupe store cleanly when no connection still holds it.
    if let Ok(state) = Arc::try_unwrap(state) {
        state.store.close();
    }
    drop(lock);
    tracing::info!("drain serve: stopped");
    if stopped_by_drain && opts.wait_after_drain {
        // In a container whose main process this is, exiting now would kill the preStop hook
        // that is draining us; stay, holding nothing, until the container is stopped.
        tracing::info!("stopped for a drain; waiting for SIGTERM/SIGINT (--wait-after-drain)");
        shutdown.as_mut().await;
    }
    Ok(())
}
