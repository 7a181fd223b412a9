//! What every drain endpoint does with a request before its own work: the shared [`State`],
//! the caller's identity and access check ([`check_caller`]), the target instance
//! (`Drain-Target-Instance`, answered `421` when it is another: [`refuse_misdirected`]),
//! content type, reading a body within its limits and discarding a refused one, and the log
//! lines of an answer's per-message results.
//!
//! Called by `handler` (the endpoints) and `commit` (parking and committing); uses `access`,
//! `body`, `reply` and the parts `State` holds. Invariant: a refused request's body is
//! discarded in the background (bounded), so the sender reads the refusal rather than a reset.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bytes::Bytes;
use hyper::Request;
use hyper::body::Incoming;

use super::access::{Access, Forwarded};
use super::body::{self, BodyError};
use super::metrics::Metrics;
use super::options::Timeouts;
use super::parked::Parked;
use super::peers::Peers;
use super::reply::Reject;
use super::store::Store;
use crate::wire::{self, ItemResult};

/// Shared by every connection.
pub(crate) struct State {
    pub store: Store,
    pub access: Access,
    pub max_request_bytes: usize,
    /// Cleared while the instance is draining or shutting down: intake answers 503.
    pub accepting: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    /// How long a peer may take at each step.
    pub timeouts: Timeouts,
    /// Connections open per peer address (taken by `listener` at accept).
    pub peers: Arc<Peers>,
    /// This instance's id: sent on every answer (`Drain-Instance`) and compared with a
    /// request's `Drain-Target-Instance`.
    pub instance: String,
    /// Messages of transfers meant for another instance, waiting for their commit.
    pub parked: Parked,
}

/// The sender's identity, once the peer is known to be allowed.
pub(super) struct Caller {
    pub client: std::net::IpAddr,
    pub sender: String,
    pub run: String,
}

/// A header's value as text; `None` when absent.
pub(super) fn header<'r>(
    req: &'r Request<Incoming>,
    name: &str,
) -> Result<Option<&'r str>, Reject> {
    match req.headers().get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| Reject::bad_request(format!("header {name} is not valid text"))),
    }
}

/// A `Drain-Sender` / `Drain-Run` header: required, 32 hex digits, lower-cased.
fn token(req: &Request<Incoming>, name: &str) -> Result<String, Reject> {
    match header(req, name)? {
        Some(v) if wire::valid_token(v) => Ok(v.to_ascii_lowercase()),
        Some(v) => Err(Reject::bad_request(format!(
            "header {name}: {v:?} is not 32 hex digits"
        ))),
        None => Err(Reject::bad_request(format!("missing header {name}"))),
    }
}

/// Access policy and the `Drain-Sender` / `Drain-Run` headers.
pub(super) fn check_caller(
    state: &State,
    peer: SocketAddr,
    req: &Request<Incoming>,
) -> Result<Caller, Reject> {
    let fwd = Forwarded::from_headers(req.headers());
    let client = state
        .access
        .client_addr(peer.ip(), &fwd)
        .map_err(|e| Reject::bad_forwarding(e.to_string()))?;
    if !state.access.allowed(client) {
        tracing::warn!(
            client = %client,
            peer = %peer,
            "refused drain from {client}: not in accept_drain_from"
        );
        return Err(Reject::not_allowed(format!(
            "{client} may not drain into this instance (not in accept_drain_from)"
        )));
    }
    Ok(Caller {
        client,
        sender: token(req, wire::HDR_SENDER)?,
        run: token(req, wire::HDR_RUN)?,
    })
}

/// `421` when the request names another instance than this one (`Drain-Target-Instance`,
/// behind a load balancer): checked before anything else, so nothing is read or stored. A
/// request without the header (an older sender) is served.
pub(super) fn check_target(state: &State, req: &Request<Incoming>) -> Result<(), Reject> {
    match header(req, wire::HDR_TARGET_INSTANCE)? {
        Some(t) if !t.trim().eq_ignore_ascii_case(&state.instance) => {
            Err(Reject::misdirected(format!(
                "this is instance {}, not {}: nothing stored; ask again",
                state.instance,
                t.trim()
            )))
        }
        _ => Ok(()),
    }
}

/// Whether a transfer allows another instance than its target to park it (`Drain-Park: 1`).
pub(super) fn wants_park(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(wire::HDR_PARK)
        .is_some_and(|v| v.as_bytes() == b"1")
}

/// Refuses a request meant for another instance, discarding its body unread.
pub(super) fn refuse_misdirected(
    state: &State,
    req: Request<Incoming>,
) -> Result<Request<Incoming>, Reject> {
    match check_target(state, &req) {
        Ok(()) => Ok(req),
        Err(r) => {
            discard_body(req);
            Err(r)
        }
    }
}

/// `415` unless the body is of the endpoint's media type (`wire`'s table).
fn check_content_type(req: &Request<Incoming>, expected: &str) -> Result<(), Reject> {
    match header(req, "content-type")? {
        Some(v) if wire::media_type_is(v, expected) => Ok(()),
        got => Err(Reject::unsupported_type(format!(
            "Content-Type {} is not accepted here: send {expected}",
            got.map_or_else(|| "(none)".to_string(), |v| format!("{v:?}"))
        ))),
    }
}

/// The caller of a request with a body of `content_type`: its access check and identity
/// ([`check_caller`]) and its media type, or the refusal, with the body discarded unread.
pub(super) fn admit(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
    content_type: &str,
) -> Result<(Caller, Request<Incoming>), Reject> {
    let checked = check_caller(state, peer, &req)
        .and_then(|c| check_content_type(&req, content_type).map(|()| c));
    match checked {
        Ok(c) => Ok((c, req)),
        Err(r) => {
            discard_body(req);
            Err(r)
        }
    }
}

/// Reads a request's body within its own limits; a body that stopped arriving is logged (WARN,
/// with the peer) and answered 408.
pub(super) async fn read_body(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
    limit: usize,
) -> Result<Bytes, Reject> {
    let path = req.uri().path().to_string();
    body::read(req.into_body(), limit, state.timeouts.body_idle)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(_) => Reject::too_large(e.to_string()),
            BodyError::Idle(_) => {
                tracing::warn!(peer = %peer, "aborted {path} from {peer}: {e}; nothing stored");
                Reject::timeout(format!("{e}; nothing stored"))
            }
            BodyError::Read(_) => Reject::bad_request(e.to_string()),
        })
}

/// Discards a refused request's body in the background (`body`), so the client reads our
/// answer instead of a reset it would have to treat as "maybe stored".
pub(super) fn discard_body(req: Request<Incoming>) {
    body::discard(req.into_body());
}

pub(super) fn log_results(caller: &Caller, n: usize, results: &[ItemResult]) {
    let stored = results
        .iter()
        .filter(|r| r.outcome == wire::Outcome::Stored)
        .count();
    for r in results.iter().filter(|r| !r.outcome.is_acked()) {
        tracing::warn!(
            client = %caller.client,
            hash = %r.hash,
            "rejected a message from {}: {}",
            caller.client,
            r.reason.as_deref().unwrap_or("")
        );
    }
    tracing::debug!(client = %caller.client, run = %caller.run, messages = n, stored, "transfer");
    // One line per message this answer acknowledges (durable by now), for tracing a message
    // through a receiver (`RUST_LOG=drain::intake::handler=trace`; the power-loss harness's
    // mail servers deliver what they see here).
    for r in results.iter().filter(|r| r.outcome.is_acked()) {
        if let Some(id) = r.id {
            tracing::trace!(client = %caller.client, run = %caller.run, id = %id, "acknowledged");
        }
    }
}
