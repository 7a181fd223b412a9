//! The tasks `drain serve` runs beside its listener: the control socket (a drain of this
//! instance stops intake through it), the event processor, the metrics listener and the hourly
//! expiry of dedupe keys.
//!
//! Started and stopped by `intake::serve`, in the order it documents: the control socket and
//! the sweeper stop with the listener, the event processor and the metrics listener only once
//! the requests in flight finished (their events and counts still matter).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::metrics::{self, Metrics};
use super::store::Store;
use crate::control::ServeControl;
use crate::events::EventQueue;
use crate::events::processor::{self, Endpoint};

/// How often expired dedupe keys are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// What the event processor needs: the queue, where to deliver, its counters.
pub struct EventDelivery {
    pub queue: EventQueue,
    pub endpoints: Vec<Endpoint>,
    pub stats: Arc<processor::Stats>,
    /// How long one POST may take (`event_timeout`).
    pub timeout: Duration,
}

/// Handles of the running side tasks.
pub struct Tasks {
    control: JoinHandle<()>,
    processor: JoinHandle<()>,
    metrics: Option<JoinHandle<()>>,
    sweeper: Option<JoinHandle<()>>,
    data_dir: PathBuf,
}

impl Tasks {
    /// Starts the control socket, the event processor and (if asked) the metrics listener,
    /// whose address file exists before `serve.addr` does.
    pub async fn start(
        data_dir: &Path,
        control: &Arc<ServeControl>,
        events: EventDelivery,
        metrics_listen: Option<std::net::SocketAddr>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Tasks> {
        let control = {
            let (dir, ctl) = (data_dir.to_path_buf(), control.clone());
            tokio::spawn(async move {
                if let Err(e) = crate::control::serve_socket(&dir, ctl).await {
                    tracing::error!("{e}; a drain of this instance will have to stop it by signal");
                }
            })
        };
        let processor = tokio::spawn(processor::run(
            events.queue,
            events.endpoints,
            events.stats,
            events.timeout,
        ));
        let metrics = match metrics_listen {
            Some(addr) => Some(start_metrics(addr, data_dir, metrics).await?),
            None => None,
        };
        Ok(Tasks {
            control,
            processor,
            metrics,
            sweeper: None,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// Drops dedupe keys older than `retention` every hour (the first sweep, before the first
    /// request, is `serve`'s).
    pub fn start_sweeper(&mut self, store: Store, retention: Duration) {
        self.sweeper = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.tick().await; // the first tick is immediate: done before listening
            loop {
                tick.tick().await;
                expire(&store, retention).await;
            }
        }));
    }

    /// Stops what must not outlive the listener: the sweeper and the control socket.
    pub fn stop_with_listener(&mut self) {
        if let Some(s) = self.sweeper.take() {
            s.abort();
        }
        self.control.abort();
    }

    /// Stops the event processor and the metrics listener (removing `metrics.addr`).
    pub fn stop(self) {
        self.processor.abort();
        if let Some(t) = self.metrics {
            t.abort();
            let _ = std::fs::remove_file(self.data_dir.join("metrics.addr"));
        }
    }
}

/// Drops expired dedupe keys; a failure is logged and retried at the next sweep.
pub async fn expire(store: &Store, retention: Duration) {
    if let Err(e) = store.expire(retention).await {
        tracing::warn!("expiring old dedupe keys failed: {e}");
    }
}

async fn start_metrics(
    addr: std::net::SocketAddr,
    data_dir: &Path,
    metrics: Arc<Metrics>,
) -> anyhow::Result<JoinHandle<()>> {
    let l = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let local = l.local_addr()?;
    crate::base::write_atomic(
        &data_dir.join("metrics.addr"),
        format!("{local}\n").as_bytes(),
    )?;
    tracing::info!(addr = %local, "metrics: http://{local}/metrics");
    Ok(tokio::spawn(metrics::serve(l, metrics)))
}
