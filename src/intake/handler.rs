//! The wire protocol's endpoints on the server side: access checks, request parsing, and the
//! answers of `GET /v1/health`, `POST /v1/transfer`, `/v1/query` and `/v1/finish` (see `wire`
//! for the protocol itself).
//!
//! Owns [`State`], what every connection shares. Called by `connection` (routing); calls
//! `store` (durability), `access` (who may drain), `body` (reading bodies) and `metrics`.
//! Invariants: a transfer is answered `200` only once `store` says every acknowledged message
//! is durable; a refused request's body is read and discarded (in the background, bounded:
//! `body`), so the sender reads the refusal rather than a reset it would have to treat as
//! "maybe stored"; one declaring more than the limit gets 413 at once. A body is read whole,
//! within its own limits, before the transfer takes anything shared (a storing worker): a slow
//! or stalled peer delays only itself. A query or finish of a run never waits for a body still
//! arriving: it fences it (see `inflight`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::access::{Access, Forwarded};
use super::body::{self, BodyError};
use super::metrics::Metrics;
use super::options::Timeouts;
use super::parked::Parked;
use super::peers::Peers;
use super::reply::{Reject, Resp, json};
use super::store::{Fence, Store, Storing};
use crate::base::ContentHash;
use crate::wire::{
    self, HealthResponse, ItemResult, QueryRequest, QueryResponse, TransferResponse,
};

/// Largest query body accepted.
const MAX_QUERY_BYTES: usize = 2 << 20;
/// Longest a query waits for the transfers of its run that are storing what it asks about
/// (the disk, not a peer); then it answers 503 and the sender asks again.
const STORING_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

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

/// `GET /v1/health`: `200` while accepting, `503` (same body) while not, so a balancer's
/// health check takes a draining instance out.
pub(crate) fn health(state: &State) -> Resp {
    let accepting = state.accepting.load(Ordering::Relaxed);
    let status = if accepting {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        &HealthResponse {
            version: wire::VERSION,
            accepting,
        },
    )
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
fn check_target(state: &State, req: &Request<Incoming>) -> Result<(), Reject> {
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
fn wants_park(req: &Request<Incoming>) -> bool {
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
pub(super) fn check_content_type(req: &Request<Incoming>, expected: &str) -> Result<(), Reject> {
    match header(req, "content-type")? {
        Some(v) if wire::media_type_is(v, expected) => Ok(()),
        got => Err(Reject::unsupported_type(format!(
            "Content-Type {} is not accepted here: send {expected}",
            got.map_or_else(|| "(none)".to_string(), |v| format!("{v:?}"))
        ))),
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

/// `POST /v1/transfer`.
pub(crate) async fn transfer(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Resp, Reject> {
    // Meant for another instance: parked if the sender allows it, else refused unread.
    let park = match check_target(state, &req) {
        Ok(()) => false,
        Err(_) if wants_park(&req) => true,
        Err(r) => {
            discard_body(req);
            return Err(r);
        }
    };
    let limit = state.max_request_bytes;
    // Refused before a byte of the body is read: waiting for it could take forever.
    if body::declared_over(req.body(), limit) {
        discard_body(req);
        return Err(Reject::too_large(format!(
            "request body declares more than {limit} bytes (Content-Length)"
        )));
    }
    let checked = check_caller(state, peer, &req)
        .and_then(|c| check_content_type(&req, wire::BATCH_CONTENT_TYPE).map(|()| c));
    let caller = match checked {
        Ok(c) => c,
        Err(r) => {
            discard_body(req);
            return Err(r);
        }
    };
    // From here until its body is decoded, a query of this run fences this transfer.
    let arriving = state.store.arriving(&caller.sender, &caller.run);
    if !state.accepting.load(Ordering::Relaxed) {
        discard_body(req);
        if park {
            // Not ours anyway: "ask again" rather than a failure of the whole destination.
            return Err(Reject::misdirected(format!(
                "this is instance {}, not the one named, and it is not accepting messages: \
                 nothing stored; ask again",
                state.instance
            )));
        }
        return Err(Reject::not_accepting(
            "this instance is not accepting messages (draining or shutting down)".into(),
        ));
    }
    let body = read_body(state, peer, req, limit).await?;
    let frames = wire::decode_batch(body)
        .map_err(|e| Reject::bad_request(format!("malformed batch: {e}")))?;
    if park {
        return super::commit::park(state, &caller, frames).await;
    }
    // The fence point: what a query fenced until now is refused, the rest is stored.
    let storing = arriving.into_storing(frames.iter().map(|f| f.hash.0));
    store_transfer(state, &caller, frames, storing).await
}

/// Stores a decoded transfer and answers with its per-message results.
pub(super) async fn store_transfer(
    state: &State,
    caller: &Caller,
    frames: Vec<wire::Frame>,
    guard: Storing,
) -> Result<Resp, Reject> {
    let n = frames.len();
    let sizes: Vec<u64> = frames.iter().map(|f| f.file.len() as u64).collect();
    let results = state
        .store
        .transfer(&caller.sender, &caller.run, frames, guard)
        .await
        .map_err(|e| {
            tracing::error!(client = %caller.client, "storing a transfer failed: {e}");
            Reject::failed(format!("storing failed: {e}"))
        })?;
    state.metrics.transfer_results(&results, &sizes);
    log_results(caller, n, &results);
    Ok(json(
        StatusCode::OK,
        &TransferResponse {
            version: wire::VERSION,
            results,
        },
    ))
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

/// `POST /v1/query`.
pub(crate) async fn query(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Resp, Reject> {
    let req = refuse_misdirected(state, req)?;
    let checked = check_caller(state, peer, &req)
        .and_then(|c| check_content_type(&req, wire::QUERY_CONTENT_TYPE).map(|()| c));
    let caller = match checked {
        Ok(c) => c,
        Err(r) => {
            discard_body(req);
            return Err(r);
        }
    };
    let body = read_body(state, peer, req, MAX_QUERY_BYTES).await?;
    let q: QueryRequest = serde_json::from_slice(&body)
        .map_err(|e| Reject::bad_request(format!("malformed query: {e}")))?;
    if q.messages.len() > wire::MAX_QUERY {
        return Err(Reject::too_large(format!(
            "at most {} messages per query",
            wire::MAX_QUERY
        )));
    }
    let asked: Vec<_> = q.messages.iter().map(|m| (m.id, m.hash.0)).collect();
    // A transfer of this run that started before this query (perhaps the very one the sender
    // lost) must not store an asked message after we answered "not held": one still arriving
    // is fenced (it will refuse them), one already storing them is waited for (the disk).
    // First drop what is parked for them: no commit can take them after this point, and one
    // that took them before is arriving or storing, so the fence below covers it.
    state
        .parked
        .abort(&caller.sender, &caller.run, asked.iter().map(|(_, h)| *h));
    let fence = Fence::Hashes(asked.iter().map(|(_, h)| *h).collect());
    if tokio::time::timeout(
        STORING_WAIT,
        state.store.fence(&caller.sender, &caller.run, &fence),
    )
    .await
    .is_err()
    {
        return Err(Reject::not_accepting(
            "transfers still in progress; ask again".into(),
        ));
    }
    // Kept only to trace what the answer acknowledges (see `log_results`).
    let traced = tracing::enabled!(tracing::Level::TRACE).then(|| asked.clone());
    let held = state
        .store
        .held(&caller.sender, &caller.run, asked)
        .await
        .map_err(|e| Reject::failed(format!("query failed: {e}")))?;
    for (id, h) in traced.iter().flatten() {
        if held.contains(h) {
            tracing::trace!(client = %caller.client, run = %caller.run, id = %id, "acknowledged");
        }
    }
    Ok(json(
        StatusCode::OK,
        &QueryResponse {
            version: wire::VERSION,
            held: held.into_iter().map(ContentHash).collect(),
        },
    ))
}

/// `POST /v1/finish`.
pub(crate) async fn finish(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Resp, Reject> {
    let req = refuse_misdirected(state, req)?;
    let caller = check_caller(state, peer, &req)?;
    // No transfer or commit of the run still arriving may store anything once its keys are
    // forgotten.
    state.parked.abort_run(&caller.sender, &caller.run);
    state
        .store
        .fence(&caller.sender, &caller.run, &Fence::All)
        .await;
    state
        .store
        .forget_run(&caller.sender, &caller.run)
        .await
        .map_err(|e| Reject::failed(format!("finish failed: {e}")))?;
    tracing::info!(client = %caller.client, run = %caller.run, "drain run finished; its dedupe keys are dropped");
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"version": wire::VERSION, "forgotten": true}),
    ))
}
