//! Prometheus metrics of `drain serve`. With `--metrics-listen ADDR:PORT` (or `metrics_listen`
//! in the config file) it answers `GET /metrics` in the Prometheus text exposition format
//! (version 0.0.4) over plain HTTP, on a listener of its own; the address actually bound is
//! written to `<data-dir>/metrics.addr`. There is no TLS and no authentication: bind it to an
//! address only the monitoring system reaches.
//!
//! | metric | type | meaning |
//! | --- | --- | --- |
//! | `drain_intake_messages_stored_total` | counter | messages taken in and stored durably (outcome `stored`) |
//! | `drain_intake_bytes_stored_total` | counter | their size in bytes: the spool files, the `size` of `drain spool ls --json` |
//! | `drain_intake_messages_already_held_total` | counter | dedupe hits: messages acknowledged again without storing (`already_held`, a repeated request) |
//! | `drain_intake_messages_parked_total` | counter | messages of transfers meant for another instance behind a balancer, parked here for their commit (outcome `parked`); counted again as stored when committed |
//! | `drain_intake_refusals_total{reason}` | counter | refusals, by `reason` (below) |
//! | `drain_intake_connections_refused_total{reason}` | counter | connections closed before any request: `tls_handshake` (the handshake failed), `timeout` (handshake or PROXY header not done in time), `proxy_untrusted` (a PROXY header from a peer not in `--trusted-proxy-ips`), `proxy_invalid` (a malformed PROXY header from a trusted proxy) |
//! | `drain_intake_transfer_duration_seconds` | histogram | time from a `POST /v1/transfer` reaching the handler to its answer (every answer, refusals included) |
//! | `drain_intake_connections_over_peer_limit_total` | counter | connections closed at accept because their peer address already had `max_connections_per_peer` open |
//! | `drain_intake_header_timeouts_total` | counter | connections closed because a request header did not arrive within `header_read_timeout` |
//! | `drain_intake_accepting` | gauge | 1 while intake takes messages, 0 while this instance is being drained or stopping |
//! | `drain_events_pending` | gauge | events in the queue not yet delivered to every endpoint |
//! | `drain_events_delivered_total` | counter | events delivered, counted once per endpoint that took them |
//! | `drain_event_delivery_failures_total` | counter | failed POSTs to an event endpoint (each is retried with backoff) |
//! | `drain_event_permanent_failures_total` | counter | events an endpoint refused for good (4xx other than 408/429), kept in `events/dead-letter/`, once per endpoint |
//!
//! `reason` of `drain_intake_refusals_total`: a whole request refused, on any endpoint, counts
//! one: `forbidden` (403, peer not in `accept_drain_from`), `too_large` (413), `bad_request`
//! (400: malformed body or headers, forwarding headers included), `unsupported_media_type`
//! (415: not the endpoint's `Content-Type`), `unavailable` (503: draining, shutting down, or a
//! query that must be asked again), `not_found` (404), `error` (500: storing failed),
//! `body_timeout` (408: the body made no progress for `body_idle_timeout`). A message rejected
//! inside an accepted transfer counts one: `hash_mismatch`, `malformed` (not a valid spool
//! file), `id_conflict` (a different message with that id is held here), `transient` (could
//! not check the copy held; the sender retries), `fenced` (a query or finish of its run came
//! while the transfer was arriving), `other`. A TLS handshake refused for the client's
//! certificate (`--client-ca`: none presented, or not issued by that CA) counts one
//! `client_certificate`, classified by the typed rustls error. Every reason is exported from
//! the start, at 0. Refusals are classified by the answer's status and the result's
//! [`RejectCode`], never by the human reason text.
//!
//! Counters start at 0 when `drain serve` starts. Kept and encoded by `prometheus-client`
//! (its Prometheus text encoder); the values read at scrape time (accepting, events pending,
//! the event processor's counters) come from a collector. Owned by `intake::serve`, shared by
//! the connections (which count) and the metrics listener (which renders).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::events::{EventQueue, processor};
use crate::wire::{ItemResult, Outcome, RejectCode};

/// Why something was refused: the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    Forbidden,
    TooLarge,
    BadRequest,
    UnsupportedMediaType,
    Unavailable,
    NotFound,
    Error,
    HashMismatch,
    Malformed,
    IdConflict,
    Transient,
    Other,
    ClientCertificate,
    BodyTimeout,
    Fenced,
}

impl Refusal {
    pub const ALL: [Refusal; 15] = [
        Refusal::Forbidden,
        Refusal::TooLarge,
        Refusal::BadRequest,
        Refusal::UnsupportedMediaType,
        Refusal::Unavailable,
        Refusal::NotFound,
        Refusal::Error,
        Refusal::HashMismatch,
        Refusal::Malformed,
        Refusal::IdConflict,
        Refusal::Transient,
        Refusal::Other,
        Refusal::ClientCertificate,
        Refusal::BodyTimeout,
        Refusal::Fenced,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::Forbidden => "forbidden",
            Refusal::TooLarge => "too_large",
            Refusal::BadRequest => "bad_request",
            Refusal::UnsupportedMediaType => "unsupported_media_type",
            Refusal::Unavailable => "unavailable",
            Refusal::NotFound => "not_found",
            Refusal::Error => "error",
            Refusal::HashMismatch => "hash_mismatch",
            Refusal::Malformed => "malformed",
            Refusal::IdConflict => "id_conflict",
            Refusal::Transient => "transient",
            Refusal::Other => "other",
            Refusal::ClientCertificate => "client_certificate",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::Fenced => "fenced",
        }
    }

    /// A whole-request refusal, from the answer's status; `None` for a success.
    pub fn of_status(status: StatusCode) -> Option<Refusal> {
        match status.as_u16() {
            200..=299 => None,
            403 => Some(Refusal::Forbidden),
            408 => Some(Refusal::BodyTimeout),
            413 => Some(Refusal::TooLarge),
            400 => Some(Refusal::BadRequest),
            415 => Some(Refusal::UnsupportedMediaType),
            503 => Some(Refusal::Unavailable),
            404 | 405 => Some(Refusal::NotFound),
            500 => Some(Refusal::Error),
            _ => Some(Refusal::Other),
        }
    }

    /// A message rejected inside a transfer, from its result's code.
    pub fn of_rejection(r: &ItemResult) -> Refusal {
        if r.code == Some(RejectCode::Fenced) {
            return Refusal::Fenced;
        }
        if r.outcome == Outcome::RejectedTransient {
            return Refusal::Transient;
        }
        match r.code {
            Some(RejectCode::HashMismatch) => Refusal::HashMismatch,
            Some(RejectCode::Malformed) => Refusal::Malformed,
            Some(RejectCode::IdConflict) => Refusal::IdConflict,
            _ => Refusal::Other,
        }
    }
}

impl EncodeLabelValue for Refusal {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.label())
    }
}

/// `drain_intake_refusals_total`: one counter per reason, encoded in [`Refusal::ALL`] order
/// (a `Family` would list them in hash order, different at every start).
#[derive(Debug, Default)]
struct Refusals([Counter; Refusal::ALL.len()]);

impl Collector for Refusals {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "drain_intake_refusals",
            "Refused requests and rejected messages, by reason.",
            None,
            MetricType::Counter,
        )?;
        for r in Refusal::ALL {
            self.0[r as usize].encode(family.encode_family(&[("reason", r)])?)?;
        }
        Ok(())
    }
}

/// Why a connection was closed before any request: the `reason` label of
/// `drain_intake_connections_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnRefusal {
    /// The TLS handshake failed (not TLS, no common protocol, a bad certificate, ...).
    TlsHandshake,
    /// The TLS handshake (or the PROXY header before it) did not finish in time.
    Timeout,
    /// A PROXY protocol header from a peer not in `--trusted-proxy-ips`.
    ProxyUntrusted,
    /// A malformed or oversized PROXY protocol header from a trusted proxy.
    ProxyInvalid,
}

impl ConnRefusal {
    pub const ALL: [ConnRefusal; 4] = [
        ConnRefusal::TlsHandshake,
        ConnRefusal::Timeout,
        ConnRefusal::ProxyUntrusted,
        ConnRefusal::ProxyInvalid,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ConnRefusal::TlsHandshake => "tls_handshake",
            ConnRefusal::Timeout => "timeout",
            ConnRefusal::ProxyUntrusted => "proxy_untrusted",
            ConnRefusal::ProxyInvalid => "proxy_invalid",
        }
    }
}

impl EncodeLabelValue for ConnRefusal {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.label())
    }
}

/// `drain_intake_connections_refused_total`, one counter per reason in [`ConnRefusal::ALL`]
/// order.
#[derive(Debug, Default)]
struct ConnRefusals([Counter; ConnRefusal::ALL.len()]);

impl Collector for ConnRefusals {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "drain_intake_connections_refused",
            "Connections closed before any request (TLS handshake, PROXY header), by reason.",
            None,
            MetricType::Counter,
        )?;
        for r in ConnRefusal::ALL {
            self.0[r as usize].encode(family.encode_family(&[("reason", r)])?)?;
        }
        Ok(())
    }
}

/// Upper bounds (seconds) of the transfer latency histogram's buckets; `+Inf` follows.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The counters of one `drain serve`, shared by its connections and its metrics listener.
pub struct Metrics {
    registry: Registry,
    stored_messages: Counter,
    stored_bytes: Counter,
    already_held: Counter,
    parked: Counter,
    refusals: Arc<Refusals>,
    conn_refusals: Arc<ConnRefusals>,
    transfer_seconds: Histogram,
    over_peer_limit: Counter,
    header_timeouts: Counter,
}

impl Metrics {
    pub fn new(
        accepting: Arc<AtomicBool>,
        events: Arc<processor::Stats>,
        queue: EventQueue,
    ) -> Metrics {
        let mut registry = Registry::default();
        // Names without `_total`: the encoder appends it to counters. Help without the final
        // full stop: the registry appends it.
        let stored_messages = Counter::default();
        registry.register(
            "drain_intake_messages_stored",
            "Messages taken in and stored durably",
            stored_messages.clone(),
        );
        let stored_bytes = Counter::default();
        registry.register(
            "drain_intake_bytes_stored",
            "Bytes of the messages stored (spool file sizes)",
            stored_bytes.clone(),
        );
        let already_held = Counter::default();
        registry.register(
            "drain_intake_messages_already_held",
            "Dedupe hits: messages acknowledged again without storing them twice",
            already_held.clone(),
        );
        let parked = Counter::default();
        registry.register(
            "drain_intake_messages_parked",
            "Messages parked for another instance's commit (behind a balancer)",
            parked.clone(),
        );
        registry.register_collector(Box::new(AtScrape {
            accepting,
            events,
            queue,
        }));
        // Every reason is exported from the start, at 0.
        let refusals = Arc::new(Refusals::default());
        registry.register_collector(Box::new(refusals.clone()));
        let conn_refusals = Arc::new(ConnRefusals::default());
        registry.register_collector(Box::new(conn_refusals.clone()));
        let transfer_seconds = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "drain_intake_transfer_duration_seconds",
            "Time to answer a transfer request",
            transfer_seconds.clone(),
        );
        let (over_peer_limit, header_timeouts) = register_slow_peers(&mut registry);
        Metrics {
            registry,
            stored_messages,
            stored_bytes,
            already_held,
            parked,
            refusals,
            conn_refusals,
            transfer_seconds,
            over_peer_limit,
            header_timeouts,
        }
    }

    /// A connection closed at accept: its peer address already had the most allowed open.
    pub fn over_peer_limit(&self) {
        self.over_peer_limit.inc();
    }

    /// A connection closed because a request header did not arrive in time.
    pub fn header_timeout(&self) {
        self.header_timeouts.inc();
    }

    pub fn refused(&self, reason: Refusal) {
        self.refusals.0[reason as usize].inc();
    }

    /// Counts a failed TLS handshake when it failed on the client's certificate.
    pub fn handshake_failed(&self, e: &std::io::Error) {
        if crate::tls::is_client_cert_failure(e) {
            self.refused(Refusal::ClientCertificate);
        }
    }

    /// Counts a connection closed before any request.
    pub fn connection_refused(&self, reason: ConnRefusal) {
        self.conn_refusals.0[reason as usize].inc();
    }

    /// Counts a whole request's answer (a refusal unless 2xx).
    pub fn answered(&self, status: StatusCode) {
        if let Some(r) = Refusal::of_status(status) {
            self.refused(r);
        }
    }

    pub fn transfer_took(&self, d: Duration) {
        self.transfer_seconds.observe(d.as_secs_f64());
    }

    /// Counts a transfer's per-message results; `sizes[i]` is frame `i`'s file length.
    pub fn transfer_results(&self, results: &[ItemResult], sizes: &[u64]) {
        for (r, size) in results.iter().zip(sizes) {
            match r.outcome {
                Outcome::Stored => {
                    self.stored_messages.inc();
                    self.stored_bytes.inc_by(*size);
                }
                Outcome::AlreadyHeld => {
                    self.already_held.inc();
                }
                Outcome::RejectedPermanent | Outcome::RejectedTransient => {
                    self.refused(Refusal::of_rejection(r))
                }
                // Not stored here (yet): counted as stored when its commit stores it.
                Outcome::Parked => {
                    self.parked.inc();
                }
            }
        }
    }

    /// The text exposition (Prometheus text format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!("encoding the metrics failed: {e}");
        }
        out
    }
}

/// The counters of connections closed for slow or too many peers.
fn register_slow_peers(registry: &mut Registry) -> (Counter, Counter) {
    let over_peer_limit = Counter::default();
    registry.register(
        "drain_intake_connections_over_peer_limit",
        "Connections closed at accept: their peer address had max_connections_per_peer open",
        over_peer_limit.clone(),
    );
    let header_timeouts = Counter::default();
    registry.register(
        "drain_intake_header_timeouts",
        "Connections closed: a request header did not arrive within header_read_timeout",
        header_timeouts.clone(),
    );
    (over_peer_limit, header_timeouts)
}

/// The values read when scraped rather than counted: whether intake accepts, the event
/// queue's length, and the event processor's counters.
#[derive(Debug)]
struct AtScrape {
    accepting: Arc<AtomicBool>,
    events: Arc<processor::Stats>,
    queue: EventQueue,
}

impl AtScrape {
    /// Events waiting, counted without holding their names (the queue may be large).
    fn events_pending(&self) -> Option<u64> {
        self.queue.count().ok().map(|n| n as u64)
    }
}

impl Collector for AtScrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let accepting = ConstGauge::new(i64::from(self.accepting.load(Ordering::Relaxed)));
        accepting.encode(encoder.encode_descriptor(
            "drain_intake_accepting",
            "1 while intake takes messages, 0 while draining or stopping.",
            None,
            accepting.metric_type(),
        )?)?;
        let pending = encoder.encode_descriptor(
            "drain_events_pending",
            "Events not yet delivered to every endpoint.",
            None,
            MetricType::Gauge,
        )?;
        match self.events_pending() {
            Some(n) => ConstGauge::new(n as i64).encode(pending)?,
            // Unknown, not zero, when the queue cannot be listed.
            None => ConstGauge::new(f64::NAN).encode(pending)?,
        }
        let delivered = ConstCounter::new(self.events.delivered.get());
        delivered.encode(encoder.encode_descriptor(
            "drain_events_delivered",
            "Events delivered, once per endpoint that took them.",
            None,
            delivered.metric_type(),
        )?)?;
        let failures = ConstCounter::new(self.events.failures.get());
        failures.encode(encoder.encode_descriptor(
            "drain_event_delivery_failures",
            "Failed POSTs to an event endpoint (retried).",
            None,
            failures.metric_type(),
        )?)?;
        let permanent = ConstCounter::new(self.events.permanent.get());
        permanent.encode(encoder.encode_descriptor(
            "drain_event_permanent_failures",
            "Events an endpoint refused for good (kept in the dead-letter directory).",
            None,
            permanent.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Most metrics connections open at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;

/// Serves `GET /metrics` on `listener` until the task is dropped (which closes every
/// connection too).
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("metrics listener: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if conns.len() >= MAX_CONNECTIONS {
                    tracing::debug!(peer = %peer, "metrics listener: too many connections");
                    continue;
                }
                let m = metrics.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let m = m.clone();
                        async move { Ok::<_, Infallible>(answer(&m, &req)) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(tcp), svc);
                    if let Err(e) = conn.await {
                        tracing::debug!(peer = %peer, "metrics connection ended: {e}");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn answer<B>(m: &Metrics, req: &Request<B>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => (
            StatusCode::OK,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            m.render(),
        ),
        (&Method::GET | &Method::HEAD, "/") => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "drain serve: metrics at /metrics\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: the metrics are at GET /metrics\n".to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    r
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
