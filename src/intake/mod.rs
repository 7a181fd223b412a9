//! The intake server run by `drain serve`: accepts drains from other instances over HTTPS.
//!
//! It owns the listening socket, TLS (rustls), the access policy (`accept_drain_from`,
//! trusted proxies) and the wire protocol's server side; what it receives becomes durable
//! through `store`. Invariants: nothing is acknowledged before it is on disk (fsync); a peer
//! not in `accept_drain_from` gets 403 and a log line naming its address; the same message of
//! the same run is stored once however often it arrives. Called by the CLI (`serve`,
//! `config`, [`ServeOptions`], [`NetList`]).
//!
//! Layout (imports flow down this list, never up):
//! - `serve` (here) assembles the rest: start-up checks, storage, side tasks, listener;
//! - `tasks`: control socket, event processor, metrics listener, dedupe expiry;
//! - `listener`: accept loop, PROXY header (`proxy_header`), TLS handshake, graceful
//!   shutdown, rate-limited warnings about failed connections (`peer_warn`);
//! - `connection`: HTTP on one connection, routing to the endpoints;
//! - `handler`: the endpoints; `commit`: parking a transfer meant for another instance and
//!   `POST /v1/commit` (the parked messages themselves are kept by `parked`); both start with
//!   `request`: the [`request::State`] they share, the caller and target checks, bodies;
//!   `reply`: answers; `body`:
//!   reading a body within its own size and idle limits, discarding refused ones; `peers`:
//!   connections per address; `peer_warn`: rate-limited warnings per peer; `proxy_header`: the
//!   PROXY protocol;
//! - `store` (with `inflight`: transfers in progress and the query fence, `claims`,
//!   `verdicts`: the per-frame checks and results, and `staging`: publishing a copy only once
//!   its dedupe record is durable, settling what a stop left staged):
//!   durability and dedupe; `access`: who may drain;
//!   `metrics`: counting and the Prometheus exposition; `config`: the settings.

pub mod access;
mod body;
mod claims;
mod commit;
pub mod config;
mod connection;
mod handler;
mod inflight;
mod listener;
pub mod metrics;
mod options;
mod parked;
mod peer_warn;
mod peers;
pub mod proxy_header;
mod reply;
mod request;
mod staging;
pub mod store;
mod tasks;
mod verdicts;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::control::ServeControl;
use crate::events::EventQueue;
use crate::events::processor::{self, Endpoint};

pub use access::{Access, NetList};
pub use options::{ServeOptions, Timeouts};
pub use staging::{Settled, settle_data_dir};
pub use store::Store;

use listener::{Listener, Stop};
use request::State;
use tasks::Tasks;

/// Invariant 6: an instance whose last drain run is unfinished does not serve, because a
/// message it still holds may also be on a destination until `drain resume` settles it.
fn refuse_if_draining(data_dir: &std::path::Path) -> anyhow::Result<()> {
    // Read-only: never creates, repairs or locks the sender's journal.
    let d = data_dir.display();
    let recover = format!(
        "run `drain --data-dir {d} recover` (it keeps a damaged journal aside, asks the run's \
         destinations about every message still here and removes the copies they hold), then \
         start the serve again"
    );
    let last = crate::journal::last_run_status(data_dir).map_err(|e| {
        anyhow::anyhow!(
            "refusing to serve: this instance's drain journal cannot be read ({e}); a drain of \
             this instance may be unfinished: {recover}"
        )
    })?;
    let marker = crate::journal::read_marker(data_dir)
        .map_err(|e| anyhow::anyhow!("refusing to serve: {e}"))?;
    if let Some(m) = marker
        && m.against(last.as_ref()) == crate::journal::MarkedRun::Lost
    {
        anyhow::bail!(
            "refusing to serve: drain run {} (#{}, to {}) on {d} did not finish and the journal \
             does not know it (lost or replaced): {recover}",
            m.run_id,
            m.run_seq,
            m.destinations.join(", ")
        );
    }
    if let Some(run) = last
        && run.status != crate::journal::RunStatus::Finished
    {
        anyhow::bail!(
            "refusing to serve: drain run #{} ({}) on {} is unfinished ({}); settle it first with \
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
    let tls =
        crate::tls::server_config_mtls(&opts.tls_cert, &opts.tls_key, opts.client_ca.as_deref())?;
    if let Some(w) = crate::tls::key_exposure_warning(&opts.tls_key, "--tls-key") {
        tracing::warn!("{w}");
    }
    let events = EventQueue::open(&opts.data_dir)?;
    let event_stats = Arc::new(processor::Stats::default());
    let state = Arc::new(open_state(&opts, &inst.id, &events, event_stats.clone())?);
    let control = ServeControl::new(state.accepting.clone(), endpoints.len());
    let delivery = tasks::EventDelivery {
        queue: events,
        endpoints,
        stats: event_stats,
        timeout: opts.event_timeout,
    };
    let metrics = state.metrics.clone();
    let mut tasks = Tasks::start(
        &opts.data_dir,
        &control,
        delivery,
        opts.metrics_listen,
        metrics,
    )
    .await?;
    // Expired dedupe keys go before the first request (then hourly).
    tasks::expire(&state.store, opts.dedupe_retention).await;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = Listener::bind(opts.listen, &opts.data_dir, acceptor, state.clone()).await?;
    announce(&opts, listener.local_addr()?);
    tasks.start_sweeper(state.store.clone(), opts.dedupe_retention);

    let mut shutdown = std::pin::pin!(shutdown);
    let stop = listener.run(shutdown.as_mut(), &control).await;
    tasks.stop_with_listener();
    listener.finish().await;
    tasks.stop();
    let _ = std::fs::remove_file(opts.data_dir.join("serve.addr"));
    let _ = std::fs::remove_file(crate::control::socket_path(&opts.data_dir));
    // Close the dedupe store cleanly when no connection still holds it.
    if let Ok(state) = Arc::try_unwrap(state) {
        state.store.close();
    }
    if stop == Stop::Drain
        && let Some(by) = control.drainer()
    {
        // Whoever finds the lock taken from now on reads the drain that takes it next.
        lock.hand_over(&by);
    }
    drop(lock);
    tracing::info!("drain serve: stopped");
    if stop == Stop::Drain && opts.wait_after_drain {
        // In a container whose main process this is, exiting now would kill the preStop hook
        // that is draining us; stay, holding nothing, until the container is stopped.
        tracing::info!("stopped for a drain; waiting for SIGTERM/SIGINT (--wait-after-drain)");
        shutdown.as_mut().await;
    }
    Ok(())
}

/// What every connection shares: the store (opened here), the access policy, the limits, the
/// accepting flag (also the control socket's) and the metrics.
fn open_state(
    opts: &ServeOptions,
    instance: &str,
    events: &EventQueue,
    event_stats: Arc<processor::Stats>,
) -> anyhow::Result<State> {
    let store = Store::open(
        &opts.data_dir,
        opts.workers,
        opts.spool_sync,
        instance,
        events.clone(),
    )?;
    let accepting = Arc::new(AtomicBool::new(true));
    let metrics = Arc::new(metrics::Metrics::new(
        accepting.clone(),
        event_stats,
        events.clone(),
    ));
    let peers = Arc::new(peers::Peers::new(
        opts.max_connections_per_peer,
        opts.access.trusted_proxies.clone(),
        metrics.clone(),
    ));
    Ok(State {
        store,
        access: opts.access.clone(),
        max_request_bytes: opts.max_request_bytes,
        accepting,
        metrics,
        timeouts: opts.timeouts,
        peers,
        instance: instance.to_string(),
        parked: parked::Parked::new(parked::PARK_LIMIT),
    })
}

/// The log lines that say intake is up (tests and operators wait for the first).
fn announce(opts: &ServeOptions, local: SocketAddr) {
    tracing::info!(addr = %local, workers = opts.workers, "drain serve: listening");
    if opts.access.accept_from.0.is_empty() {
        tracing::warn!("accept_drain_from is empty: every drain will be refused with 403");
    }
}
