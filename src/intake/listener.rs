//! The intake's listening socket: binds it (and announces the bound address in
//! `<data-dir>/serve.addr`), accepts TCP connections (at most `max_connections_per_peer` per
//! address, see `peers`), does each TLS handshake (bounded by `tls_handshake_timeout`) and
//! hands the stream to `connection`; on shutdown it stops accepting and lets the
//! requests in flight finish (up to [`GRACE`]).
//!
//! Called by `intake::serve`. Invariant: `serve.addr` exists only while the socket is bound
//! (written once it accepts, removed by `serve` after [`Listener::finish`]).

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

use super::connection;
use super::handler::State;
use super::peers::PeerSlot;
use crate::control::ServeControl;

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

    /// Handshakes and serves one connection in its own task.
    fn spawn_connection(&self, tcp: TcpStream, peer: SocketAddr, slot: PeerSlot) {
        let _ = tcp.set_nodelay(true);
        let acceptor = self.tls.clone();
        let state = self.state.clone();
        let builder = self.builder.clone();
        let watcher = self.graceful.watcher();
        let handshake = state.timeouts.tls_handshake;
        tokio::spawn(async move {
            let _slot = slot; // counted against its peer until the connection ends
            let tls = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    state.metrics.handshake_failed(&e);
                    tracing::debug!(peer = %peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %peer, "TLS handshake timed out");
                    return;
                }
            };
            connection::serve(tls, peer, state, builder, watcher).await;
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
