//! The wire protocol's server side: routes, access checks, request parsing, answers.
//! See `wire` for the protocol itself.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::State;
use super::access::Forwarded;
use crate::base::ContentHash;
use crate::wire::{self, ErrorResponse, QueryRequest, QueryResponse, TransferResponse};

type Resp = Response<Full<Bytes>>;

/// A whole-request refusal: status and message, turned into an [`ErrorResponse`].
struct Reject(StatusCode, String);

impl From<Reject> for Resp {
    fn from(r: Reject) -> Resp {
        error(r.0, r.1)
    }
}

/// Largest query body accepted.
const MAX_QUERY_BYTES: usize = 2 << 20;

pub(crate) async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    let started = std::time::Instant::now();
    let route = (req.method().clone(), req.uri().path().to_string());
    let resp = match (&route.0, route.1.as_str()) {
        (&Method::GET, wire::HEALTH_PATH) => json(
            StatusCode::OK,
            &serde_json::json!({
                "version": wire::VERSION,
                "accepting": state.accepting.load(Ordering::Relaxed),
            }),
        ),
        (&Method::POST, wire::TRANSFER_PATH) => transfer(&state, peer, req).await,
        (&Method::POST, wire::QUERY_PATH) => query(&state, peer, req).await,
        (&Method::POST, wire::FINISH_PATH) => finish(&state, peer, req).await,
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {} {}", route.0, route.1),
        ),
    };
    state.metrics.answered(resp.status());
    if route.0 == Method::POST && route.1 == wire::TRANSFER_PATH {
        state.metrics.transfer_took(started.elapsed());
    }
    Ok(resp)
}

/// The sender's identity, once the peer is known to be allowed.
struct Caller {
    client: std::net::IpAddr,
    sender: String,
    run: String,
}

/// Access policy and the `Drain-Sender` / `Drain-Run` headers; an error is the answer to send.
fn check_caller(
    state: &State,
    peer: SocketAddr,
    req: &Request<Incoming>,
) -> Result<Caller, Reject> {
    let h = req.headers();
    let text = |name: &str| -> Result<Option<&str>, Reject> {
        match h.get(name) {
            None => Ok(None),
            Some(v) => v.to_str().map(Some).map_err(|_| {
                Reject(
                    StatusCode::BAD_REQUEST,
                    format!("header {name} is not valid text"),
                )
            }),
        }
    };
    let fwd = Forwarded {
        x_forwarded_for: text("x-forwarded-for")?,
        client_ip: text("client-ip")?,
    };
    let client = state
        .access
        .client_addr(peer.ip(), &fwd)
        .map_err(|e| Reject(StatusCode::BAD_REQUEST, e))?;
    if !state.access.allowed(client) {
        tracing::warn!(
            client = %client,
            peer = %peer,
            "refused drain from {client}: not in accept_drain_from"
        );
        return Err(Reject(
            StatusCode::FORBIDDEN,
            format!("{client} may not drain into this instance (not in accept_drain_from)"),
        ));
    }
    let token = |name: &str| -> Result<String, Reject> {
        match text(name)? {
            Some(v) if wire::valid_token(v) => Ok(v.to_ascii_lowercase()),
            Some(v) => Err(Reject(
                StatusCode::BAD_REQUEST,
                format!("header {name}: {v:?} is not 32 hex digits"),
            )),
            None => Err(Reject(
                StatusCode::BAD_REQUEST,
                format!("missing header {name}"),
            )),
        }
    };
    Ok(Caller {
        client,
        sender: token(wire::HDR_SENDER)?,
        run: token(wire::HDR_RUN)?,
    })
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Reject> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds {limit} bytes"),
        )),
        Err(e) => Err(Reject(
            StatusCode::BAD_REQUEST,
            format!("reading the request body failed: {e}"),
        )),
    }
}

/// Reads and drops a refused request's body (bounded), so the client reads our answer instead
/// of a connection reset it would have to treat as "maybe stored".
async fn discard_body(req: Request<Incoming>) {
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        Limited::new(req.into_body(), 64 << 20).collect(),
    )
    .await;
}

async fn transfer(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Resp {
    let caller = match check_caller(state, peer, &req) {
        Ok(c) => c,
        Err(r) => {
            discard_body(req).await;
            return r.into();
        }
    };
    // From here until the messages are durable (or refused), queries wait for this request.
    let guard = state.store.begin_transfer();
    if !state.accepting.load(Ordering::Relaxed) {
        discard_body(req).await;
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this instance is not accepting messages (draining or shutting down)".into(),
        );
    }
    // Bounded: senders beyond this wait here (their requests are not yet read).
    let Ok(_body_permit) = state.bodies.clone().acquire_owned().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into());
    };
    let body = match read_body(req, state.max_request_bytes).await {
        Ok(b) => b,
        Err(r) => return r.into(),
    };
    let frames = match wire::decode_batch(body) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed batch: {e}")),
    };
    let n = frames.len();
    let sizes: Vec<u64> = frames.iter().map(|f| f.file.len() as u64).collect();
    match state
        .store
        .transfer(&caller.sender, &caller.run, frames, guard)
        .await
    {
        Ok(results) => {
            state.metrics.transfer_results(&results, &sizes);
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
            json(
                StatusCode::OK,
                &TransferResponse {
                    version: wire::VERSION,
                    results,
                },
            )
        }
        Err(e) => {
            tracing::error!(client = %caller.client, "storing a transfer failed: {e}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("storing failed: {e}"),
            )
        }
    }
}

async fn query(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Resp {
    let caller = match check_caller(state, peer, &req) {
        Ok(c) => c,
        Err(r) => return r.into(),
    };
    let body = match read_body(req, MAX_QUERY_BYTES).await {
        Ok(b) => b,
        Err(r) => return r.into(),
    };
    let q: QueryRequest = match serde_json::from_slice(&body) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed query: {e}")),
    };
    if q.messages.len() > wire::MAX_QUERY {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {} messages per query", wire::MAX_QUERY),
        );
    }
    let asked: Vec<_> = q.messages.iter().map(|m| (m.id, m.hash.0)).collect();
    // A transfer that started before this query (perhaps the very one the sender lost) must
    // finish first, or "not held" could be followed by a late store.
    if tokio::time::timeout(
        std::time::Duration::from_secs(30),
        state.store.wait_for_earlier_transfers(),
    )
    .await
    .is_err()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "transfers still in progress; ask again".into(),
        );
    }
    match state.store.held(&caller.sender, &caller.run, asked).await {
        Ok(held) => json(
            StatusCode::OK,
            &QueryResponse {
                version: wire::VERSION,
                held: held.into_iter().map(ContentHash).collect(),
            },
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("query failed: {e}"),
        ),
    }
}

async fn finish(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Resp {
    let caller = match check_caller(state, peer, &req) {
        Ok(c) => c,
        Err(r) => return r.into(),
    };
    state.store.wait_for_earlier_transfers().await;
    match state.store.forget_run(&caller.sender, &caller.run).await {
        Ok(()) => {
            tracing::info!(client = %caller.client, run = %caller.run, "drain run finished; its dedupe keys are dropped");
            json(
                StatusCode::OK,
                &serde_json::json!({"version": wire::VERSION, "forgotten": true}),
            )
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("finish failed: {e}"),
        ),
    }
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, msg: String) -> Resp {
    json(
        status,
        &ErrorResponse {
            version: wire::VERSION,
            error: msg,
            code: None,
        },
    )
}
