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
    /// Senders must present a certificate chained to a CA in this PEM file (mutual TLS).
    pub client_ca: Option<PathBuf>,
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
    /// How long a peer may take at each step of a request.
    pub timeouts: Timeouts,
    /// Most connections open at once from one peer address (trusted proxies exempt); more are
    /// closed at accept.
    pub max_connections_per_peer: usize,
    /// How received copies are made durable (`spool::sync`); resolved against the data
    /// directory's file system when the store opens.
    pub spool_sync: crate::spool::SpoolSync,
}

/// How long a slow or stalled peer is waited for, at each step. None of these waits holds
/// anything another request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// The TLS handshake, from the TCP accept.
    pub tls_handshake: Duration,
    /// HTTP/1: a request's header, from its first byte or the end of the previous request
    /// (so also how long an idle kept-alive connection stays open). HTTP/2: the keep-alive
    /// ping interval, and how long its answer may take.
    pub header_read: Duration,
    /// The longest a request body may go without a byte arriving; then it is aborted (408),
    /// nothing stored.
    pub body_idle: Duration,
}
