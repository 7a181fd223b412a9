//! The wire protocol's endpoints on the server side: the answers of `GET /v1/health`,
//! `POST /v1/transfer`, `/v1/query` and `/v1/finish` (see `wire` for the protocol itself).
//!
//! Called by `connection` (routing); every endpoint starts with `request` (the shared
//! [`State`], caller, target and body checks); calls `store` (durability), `commit` (a transfer
//! meant for another instance that allows parking) and `metrics`. Invariants: a transfer is
//! answered `200` only once `store` says every acknowledged message is durable; a refused
//! request's body is discarded (`request`); one declaring more than the limit gets 413 at once.
//! A body is read whole, within its own limits, before the transfer takes anything shared (a
//! storing worker): a slow or stalled peer delays only itself. A query or finish of a run never
//! waits for a body still arriving: it fences it (see `inflight`), after dropping what is
//! parked for it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::body;
use super::reply::{Reject, Resp, json};
use super::request::{
    Caller, State, admit, check_caller, check_target, discard_body, log_results, read_body,
    refuse_misdirected, wants_park,
};
use super::store::{Fence, Storing};
use crate::base::ContentHash;
use crate::wire::{self, HealthResponse, QueryRequest, QueryResponse, TransferResponse};

/// Largest query body accepted.
const MAX_QUERY_BYTES: usize = 2 << 20;
/// Longest a query waits for the transfers of its run that are storing what it asks about
/// (the disk, not a peer); then it answers 503 and the sender asks again.
const STORING_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

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
    let (caller, req) = admit(state, peer, req, wire::BATCH_CONTENT_TYPE)?;
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

/// `POST /v1/query`.
pub(crate) async fn query(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Resp, Reject> {
    let req = refuse_misdirected(state, req)?;
    let (caller, req) = admit(state, peer, req, wire::QUERY_CONTENT_TYPE)?;
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
        .map_err(|e| {
            tracing::warn!(client = %caller.client, run = %caller.run, "finish refused: {e}");
            Reject::failed(format!("finish failed: {e}"))
        })?;
    tracing::info!(client = %caller.client, run = %caller.run, "drain run finished; its dedupe keys are dropped");
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"version": wire::VERSION, "forgotten": true}),
    ))
}
