//! [`ServeOptions`]: everything `drain serve` runs with, once the settings are resolved
//! (`config::Settings::into_options`). Built by the CLI, read by `intake::serve`; plain data.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::access::Access;

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
    /// How long one POST to an event endpoint may take.
    pub event_timeout: Duration,
    /// After a drain stopped this serve, keep the process alive (holding nothing) until a
    /// signal: for a container whose main process must outlive its preStop hook.
    pub wait_after_drain: bool,
    /// Where to serve Prometheus metrics (plain HTTP, `GET /metrics`); none: not served.
    pub metrics_listen: Option<SocketAddr>,
}
