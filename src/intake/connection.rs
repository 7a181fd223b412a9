//! One accepted connection: serves HTTP (1.1 or 2, hyper) on its TLS stream and routes each
//! request to its endpoint in `handler`, counting every answer in the metrics. [`builder`]
//! makes the HTTP server with the header timeout (HTTP/1) and keep-alive pings (HTTP/2); a
//! connection closed for a late header is counted.
//!
//! Called by `listener` once the TLS handshake is done; the connection is watched by the
//! listener's graceful shutdown, so a request in flight is finished, not cut, when `drain
//! serve` stops.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::Watcher;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::handler;
use super::options::Timeouts;
use super::reply::{Reject, Resp};
use super::request::State;
use crate::wire;

/// The HTTP server every connection uses: over HTTP/1 a request's header must arrive within
/// `header_read` (from the end of the previous request on a kept-alive connection); over
/// HTTP/2 the peer is pinged every `header_read` and must answer within it.
pub(crate) fn builder(t: &Timeouts) -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(t.header_read);
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(t.header_read)
        .keep_alive_timeout(t.header_read);
    b
}

/// Serves one connection until the peer closes it or the shutdown watcher ends it.
pub(crate) async fn serve(
    tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    state: Arc<State>,
    builder: Builder<TokioExecutor>,
    watcher: Watcher,
) {
    // The protocol agreed in the handshake: detecting it from the first bytes instead would
    // wait, with no timeout, for a peer that sends none.
    let builder = match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => builder.http2_only(),
        Some(b"http/1.1") => builder.http1_only(),
        _ => builder,
    };
    let metrics = state.metrics.clone();
    let svc = hyper::service::service_fn(move |req| route(state.clone(), peer, req));
    let conn = builder
        .serve_connection(TokioIo::new(tls), svc)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
        {
            metrics.header_timeout();
            tracing::debug!(peer = %peer, "connection closed: no request header in time");
        } else {
            tracing::debug!(peer = %peer, "connection ended: {e}");
        }
    }
}

/// Routes one request; every answer is counted (a refusal unless 2xx) and names this instance
/// (`Drain-Instance`), and a transfer's latency is observed whatever its answer.
async fn route(
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let answer = match (&method, path.as_str()) {
        (&Method::GET, wire::HEALTH_PATH) => Ok(handler::health(&state)),
        (&Method::POST, wire::TRANSFER_PATH) => handler::transfer(&state, peer, req).await,
        (&Method::POST, wire::QUERY_PATH) => handler::query(&state, peer, req).await,
        (&Method::POST, wire::FINISH_PATH) => handler::finish(&state, peer, req).await,
        (&Method::POST, wire::COMMIT_PATH) => super::commit::commit(&state, peer, req).await,
        _ => Err(Reject::not_found(format!(
            "no such endpoint: {method} {path}"
        ))),
    };
    let mut resp = answer.unwrap_or_else(Resp::from);
    // Every answer names this instance, so a sender behind a load balancer knows who answered.
    if let Ok(v) = hyper::header::HeaderValue::from_str(&state.instance) {
        resp.headers_mut().insert(wire::HDR_INSTANCE, v);
    }
    state.metrics.answered(resp.status());
    if method == Method::POST && path == wire::TRANSFER_PATH {
        state.metrics.transfer_took(started.elapsed());
    }
    Ok(resp)
}
