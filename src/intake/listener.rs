//! The intake's listening socket: binds it (and announces the bound address in
//! `<data-dir>/serve.addr`), accepts TCP connections (at most `max_connections_per_peer` per
//! address, see `peers`), reads a PROXY protocol header when a trusted balancer sends one
//! (`proxy_header`), does each TLS handshake (the two bounded together by
//! `tls_handshake_timeout`) and hands the stream to `connection` with the client's address; on
//! shutdown it stops accepting and lets the requests in flight finish (up to [`GRACE`]).
//!
//! Called by `intake::serve`. Invariants: `serve.addr` exists only while the socket is bound
//! (written once it accepts, removed by `serve` after [`Listener::finish`]); a PROXY header is
//! honoured only from a TCP peer in `--trusted-proxy-ips` (from anyone else it closes the
//! connection), and once honoured its source address is the peer for everything after
//! (access, logs); every connection closed before a request is counted in the metrics and
//! logged at WARN, at most once per peer per [`WARN_INTERVAL`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::connection;
use super::metrics::ConnRefusal;
use super::peer_warn::{PeerWarn, held_back_note};
use super::peers::PeerSlot;
use super::proxy_header::{self, Start};
use super::request::State;
use crate::control::ServeControl;

/// At most one warning per peer this often about its failed connections.
pub const WARN_INTERVAL: Duration = Duration::from_secs(60);
/// How long requests in flight may take to finish once shutdown began.
pub const GRACE: Duration = Duration::from_secs(30);
/// Pause after a failed accept (e.g. out of file descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why the accept loop stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The shutdown future completed (a signal).
    Signal,
    /// A drain of this instance asked over the control socket.
    Drain,
}

/// The bound socket and what each connection needs.
pub struct Listener {
    tcp: TcpListener,
    tls: TlsAcceptor,
    state: Arc<State>,
    builder: Builder<TokioExecutor>,
    graceful: GracefulShutdown,
    warn: Arc<PeerWarn>,
}

impl Listener {
    /// Binds `addr` and writes the bound address to `<data_dir>/serve.addr`.
    pub async fn bind(
        addr: SocketAddr,
        data_dir: &Path,
        tls: TlsAcceptor,
        state: Arc<State>,
    ) -> anyhow::Result<Listener> {
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = tcp.local_addr()?;
        crate::base::write_atomic(
            &data_dir.join("serve.addr"),
            format!("{local}\n").as_bytes(),
        )?;
        Ok(Listener {
            tcp,
            tls,
            builder: connection::builder(&state.timeouts),
            state,
            graceful: GracefulShutdown::new(),
            warn: Arc::new(PeerWarn::new(WARN_INTERVAL)),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Accepts connections until `shutdown` completes or a drain asks this serve to stop.
    pub async fn run(
        &self,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
        control: &ServeControl,
    ) -> Stop {
        loop {
            tokio::select! {
                conn = self.tcp.accept() => match conn {
                    // Slow peers: over its per-address limit, a connection is closed at once.
                    Ok((tcp, peer)) => match self.state.peers.admit(peer.ip()) {
                        Some(slot) => self.spawn_connection(tcp, peer, slot),
                        None => drop(tcp),
                    },
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                _ = shutdown.as_mut() => return Stop::Signal,
                _ = control.shutdown_requested() => return Stop::Drain,
            }
        }
    }

    /// Reads the PROXY header if any, handshakes and serves one connection in its own task.
    fn spawn_connection(&self, tcp: TcpStream, peer: SocketAddr, slot: PeerSlot) {
        let _ = tcp.set_nodelay(true);
        let acceptor = self.tls.clone();
        let state = self.state.clone();
        let builder = self.builder.clone();
        let watcher = self.graceful.watcher();
        let warn = self.warn.clone();
        tokio::spawn(async move {
            let _slot = slot; // counted against its peer until the connection ends
            match open(tcp, peer, &acceptor, &state).await {
                Ok((tls, client)) => connection::serve(tls, client, state, builder, watcher).await,
                Err(c) => c.report(peer, &state, &warn),
            }
        });
    }

    /// Closes the socket, then waits (up to [`GRACE`]) for the requests in flight.
    pub async fn finish(self) {
        let Listener { tcp, graceful, .. } = self;
        drop(tcp);
        tracing::info!("drain serve: shutting down, finishing requests in flight");
        if tokio::time::timeout(GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("requests still in flight after 30s; stopping anyway");
        }
    }
}

/// The PROXY header if any, then the TLS handshake, within `tls_handshake_timeout` together:
/// the TLS stream and the client's address.
async fn open(
    mut tcp: TcpStream,
    peer: SocketAddr,
    acceptor: &TlsAcceptor,
    state: &State,
) -> Result<(TlsStream<TcpStream>, SocketAddr), Closed> {
    let opening = async {
        let client = prelude(&mut tcp, peer, state).await?;
        match acceptor.accept(tcp).await {
            Ok(tls) => Ok((tls, client)),
            Err(e) => {
                state.metrics.handshake_failed(&e);
                Err(Closed {
                    why: ConnRefusal::TlsHandshake,
                    client,
                    what: format!("TLS handshake failed: {e}"),
                })
            }
        }
    };
    let limit = state.timeouts.tls_handshake;
    tokio::time::timeout(limit, opening)
        .await
        .unwrap_or_else(|_| {
            Err(Closed {
                why: ConnRefusal::Timeout,
                client: peer,
                what: format!(
                    "TLS handshake not done within {}",
                    humantime::format_duration(limit)
                ),
            })
        })
}

/// A connection closed before any request: why, and whom it came from.
struct Closed {
    why: ConnRefusal,
    /// The client as far as known: the PROXY header's source once read, else the TCP peer.
    client: SocketAddr,
    what: String,
}

impl Closed {
    /// Counts it, and logs it unless this peer was logged less than [`WARN_INTERVAL`] ago.
    fn report(&self, tcp_peer: SocketAddr, state: &State, warn: &PeerWarn) {
        state.metrics.connection_refused(self.why);
        let Some(held_back) = warn.admit(self.client.ip(), std::time::Instant::now()) else {
            return;
        };
        let note = held_back_note(held_back);
        let (ip, what) = (self.client.ip(), &self.what);
        if self.client == tcp_peer {
            tracing::warn!(peer = %self.client, "connection from {ip}: {what}{note}");
        } else {
            tracing::warn!(
                peer = %self.client,
                proxy = %tcp_peer,
                "connection from {ip} (through {}): {what}{note}",
                tcp_peer.ip()
            );
        }
    }
}

/// Before TLS: a PROXY header, if the first byte says one comes. From a trusted proxy it is
/// read (exactly its bytes) and its source becomes the client; from anyone else it closes the
/// connection. Returns the client's address.
async fn prelude(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    state: &State,
) -> Result<SocketAddr, Closed> {
    let closed = |why, what: String| Closed {
        why,
        client: peer,
        what,
    };
    // Up to a v2 signature's length, without consuming: TLS then starts from the first byte.
    let mut first = [0u8; 12];
    let n = tcp
        .peek(&mut first)
        .await
        .map_err(|e| closed(ConnRefusal::TlsHandshake, format!("reading failed: {e}")))?;
    if n == 0 || proxy_header::classify(first[0]) == Start::Other {
        return Ok(peer);
    }
    if !state.access.trusted_proxies.contains(peer.ip()) {
        if proxy_header::looks_like_proxy(&first[..n]) {
            return Err(closed(
                ConnRefusal::ProxyUntrusted,
                "PROXY protocol header from a peer not in --trusted-proxy-ips; closed".into(),
            ));
        }
        // Neither TLS nor PROXY: the handshake fails and says so.
        return Ok(peer);
    }
    match proxy_header::read(tcp).await {
        Ok(h) => Ok(h.addresses.map_or(peer, |a| a.source)),
        Err(e) => Err(closed(ConnRefusal::ProxyInvalid, format!("{e}; closed"))),
    }
}
