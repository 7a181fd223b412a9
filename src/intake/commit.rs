//! Parking and committing (`wire`, "Parking"): a transfer meant for another instance is kept
//! here, invisible, until its sender commits it with `POST /v1/commit` naming this instance.
//!
//! Owns the two steps' answers; the parked frames themselves live in `parked`, and a commit
//! stores through `store` exactly like a transfer (durable before `200`). Invariants: a commit
//! registers with the query fence ([`Store::arriving`](super::store::Store::arriving)) before
//! it takes anything parked, so a query of its run either fences it or waits for it; a message
//! that was not parked here is answered `already_held` only if the store holds it, else
//! `not_parked` (definitively not stored). Called by `handler` (a misdirected transfer that
//! allows parking) and `connection` (the commit endpoint).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::reply::{Reject, Resp, json};
use super::request::{
    Caller, State, admit, discard_body, log_results, read_body, refuse_misdirected,
};
use super::verdicts::{check_frame, held_already, not_parked, parked};
use crate::base::{ContentHash, MessageId};
use crate::wire::{self, Frame, ItemResult, QueryRequest, TransferResponse};

/// Largest commit body accepted (as a query's).
const MAX_COMMIT_BYTES: usize = 2 << 20;

/// Parks a decoded transfer meant for another instance: each frame that passes its own checks
/// is answered `parked`, the others as a transfer would reject them. `421` (as without
/// parking) when this instance already parks as much as it may.
pub(super) async fn park(
    state: &State,
    caller: &Caller,
    frames: Vec<Frame>,
) -> Result<Resp, Reject> {
    // Hashing is CPU work: off the connection tasks' threads, as storing is.
    let (results, keep) = tokio::task::spawn_blocking(move || check_all(frames))
        .await
        .map_err(|e| Reject::failed(format!("checking a transfer failed: {e}")))?;
    let n = keep.len();
    // Sizes count only stored bytes, and nothing here is stored.
    let sizes = vec![0; results.len()];
    if !state.parked.park(&caller.sender, &caller.run, keep) {
        return Err(Reject::misdirected(format!(
            "this is instance {}, not the one named, and it parks as much as it may: \
             nothing stored; ask again",
            state.instance
        )));
    }
    state.metrics.transfer_results(&results, &sizes);
    tracing::debug!(client = %caller.client, run = %caller.run, messages = n, "parked a transfer meant for another instance");
    Ok(json(
        StatusCode::OK,
        &TransferResponse {
            version: wire::VERSION,
            results,
        },
    ))
}

/// Each frame's own checks: the answers, and the frames that passed (to park).
fn check_all(frames: Vec<Frame>) -> (Vec<ItemResult>, Vec<Frame>) {
    let mut keep = Vec::with_capacity(frames.len());
    let results = frames
        .into_iter()
        .map(|f| match check_frame(f.clone()) {
            Ok(msg) => {
                let r = parked(f.hash, msg.header.id);
                keep.push(f);
                r
            }
            Err(rejected) => rejected,
        })
        .collect();
    (results, keep)
}

/// `POST /v1/commit`.
pub(crate) async fn commit(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Resp, Reject> {
    let req = refuse_misdirected(state, req)?;
    let (caller, req) = admit(state, peer, req, wire::QUERY_CONTENT_TYPE)?;
    // Registered before anything parked is taken: a query of this run fences or waits for it.
    let arriving = state.store.arriving(&caller.sender, &caller.run);
    if !state.accepting.load(Ordering::Relaxed) {
        discard_body(req);
        return Err(Reject::not_accepting(
            "this instance is not accepting messages (draining or shutting down)".into(),
        ));
    }
    let body = read_body(state, peer, req, MAX_COMMIT_BYTES).await?;
    let q: QueryRequest = serde_json::from_slice(&body)
        .map_err(|e| Reject::bad_request(format!("malformed commit: {e}")))?;
    if q.messages.is_empty() || q.messages.len() > wire::MAX_FRAMES {
        return Err(Reject::bad_request(format!(
            "a commit names 1 to {} messages",
            wire::MAX_FRAMES
        )));
    }
    let asked: Vec<(MessageId, [u8; 32])> = q.messages.iter().map(|m| (m.id, m.hash.0)).collect();
    let hashes: Vec<[u8; 32]> = asked.iter().map(|(_, h)| *h).collect();
    let slots = state.parked.take(&caller.sender, &caller.run, &hashes);
    let frames: Vec<Frame> = slots.iter().flatten().cloned().collect();
    let missing: Vec<(MessageId, [u8; 32])> = asked
        .iter()
        .zip(&slots)
        .filter(|(_, s)| s.is_none())
        .map(|(a, _)| *a)
        .collect();
    let storing = arriving.into_storing(frames.iter().map(|f| f.hash.0));
    let sizes: Vec<u64> = frames.iter().map(|f| f.file.len() as u64).collect();
    let mut stored = if frames.is_empty() {
        Vec::new()
    } else {
        state
            .store
            .transfer(&caller.sender, &caller.run, frames, storing)
            .await
            .map_err(|e| {
                tracing::error!(client = %caller.client, "storing a commit failed: {e}");
                Reject::failed(format!("storing failed: {e}"))
            })?
    };
    state.metrics.transfer_results(&stored, &sizes);
    let held = if missing.is_empty() {
        Vec::new()
    } else {
        state
            .store
            .held(&caller.sender, &caller.run, missing)
            .await
            .map_err(|e| Reject::failed(format!("commit failed: {e}")))?
    };
    let mut stored = stored.drain(..);
    let results = asked
        .into_iter()
        .zip(slots)
        .map(|((id, hash), slot)| match slot {
            Some(_) => stored.next(),
            None if held.contains(&hash) => Some(held_already(ContentHash(hash), id)),
            None => Some(not_parked(ContentHash(hash), id)),
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Reject::failed("a commit's results do not match its messages".into()))?;
    log_results(&caller, results.len(), &results);
    Ok(json(
        StatusCode::OK,
        &TransferResponse {
            version: wire::VERSION,
            results,
        },
    ))
}
