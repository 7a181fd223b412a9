//! A TLS-terminating proxy in front of one `drain serve` destination that loses transfer
//! answers on purpose: the sender's "stored, but the answer never came" case, made exact.
//!
//! It terminates TLS with the destination's certificate (which must name the proxy's address
//! too) and serves HTTP with hyper; each request is forwarded to the destination over its own
//! TLS connection, and the destination's whole answer is read before anything else happens, so
//! whatever the destination stored is durable. For each transfer request (in arrival order) a
//! caller-given rule decides: forward the answer, cut (the client's connection is dropped without
//! a word), or cut and go dark (the listener is closed, so later connections are refused, and
//! every open connection is dropped: the destination looks dead although it holds the messages).
//! The proxy records what the destination answered for every transfer it cut.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::response::Parts as ResponseParts;
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::Server;

/// What the proxy does with one transfer request, decided when it arrives (numbered from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Return the destination's answer.
    Forward,
    /// Drop the client's connection instead of answering.
    Cut,
    /// Cut, and from then on refuse every connection and drop the open ones.
    CutAndGoDark,
}

/// A transfer request whose answer the proxy swallowed.
#[derive(Clone, Debug)]
pub struct CutTransfer {
    /// The destination's HTTP status.
    pub status: u16,
    /// Frames in the destination's answer.
    pub results: usize,
    /// Ids the destination answered `stored` or `already_held` for.
    pub stored: BTreeSet<String>,
}

type Rule = Box<dyn FnMut(usize) -> Verdict + Send>;

/// What the proxy saw, shared between its tasks and the test.
struct Shared {
    upstream: SocketAddr,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    rule: Mutex<Rule>,
    /// True once the proxy went dark.
    dark: watch::Sender<bool>,
    connections: AtomicUsize,
    transfers: AtomicUsize,
    cut: Mutex<Vec<CutTransfer>>,
    /// Requests answered through the proxy ("METHOD PATH -> STATUS").
    forwarded: Mutex<Vec<String>>,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn error(&self, e: String) {
        self.errors.lock().unwrap().push(e);
    }
}

/// The running proxy; dropping it stops it.
pub struct AnswerDropProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
}

impl AnswerDropProxy {
    /// Listens on `listen_ip` (a free port) in front of `upstream`, whose certificate must be
    /// valid for `listen_ip`; `rule` decides the fate of each transfer.
    pub fn start(
        listen_ip: &str,
        upstream: &Server,
        rule: impl FnMut(usize) -> Verdict + Send + 'static,
    ) -> AnswerDropProxy {
        drain::tls::install_provider();
        let server_cfg = drain::tls::server_config(&upstream.cert, &upstream.key).expect("tls");
        let mut roots = rustls::RootCertStore::empty();
        for c in drain::tls::load_certs(&upstream.cert).expect("upstream cert") {
            roots.add(c).expect("root");
        }
        let mut client_cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client_cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = rt
            .block_on(TcpListener::bind(format!("{listen_ip}:0")))
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared {
            upstream: upstream.addr,
            acceptor: TlsAcceptor::from(server_cfg),
            connector: TlsConnector::from(Arc::new(client_cfg)),
            rule: Mutex::new(Box::new(rule)),
            dark: watch::Sender::new(false),
            connections: AtomicUsize::new(0),
            transfers: AtomicUsize::new(0),
            cut: Mutex::new(Vec::new()),
            forwarded: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
        });
        rt.spawn(accept_loop(listener, shared.clone()));
        AnswerDropProxy {
            addr,
            shared,
            rt: Some(rt),
        }
    }

    /// `IP:PORT` as a destination argument.
    pub fn dest(&self) -> String {
        self.addr.to_string()
    }

    /// Every transfer whose answer was swallowed, in order.
    pub fn cut(&self) -> Vec<CutTransfer> {
        self.shared.cut.lock().unwrap().clone()
    }

    /// Messages the destination stored although their answer was swallowed.
    pub fn stored_but_unanswered(&self) -> BTreeSet<String> {
        self.cut().into_iter().flat_map(|c| c.stored).collect()
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub fn transfers(&self) -> usize {
        self.shared.transfers.load(Ordering::SeqCst)
    }

    pub fn is_dark(&self) -> bool {
        *self.shared.dark.borrow()
    }

    /// Everything it saw, for a failure message.
    pub fn describe(&self) -> String {
        format!(
            "proxy: {} connections, {} transfers, cut {:?}, forwarded {:?}, errors {:?}, dark: {}",
            self.connections(),
            self.transfers(),
            self.cut(),
            self.shared.forwarded.lock().unwrap(),
            self.shared.errors.lock().unwrap(),
            self.is_dark()
        )
    }
}

impl Drop for AnswerDropProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Accepts until the proxy goes dark; then drops the listener, so connections are refused.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut dark = shared.dark.subscribe();
    loop {
        tokio::select! {
            // Dark first: a client that saw its connection cut (always after the switch) must
            // never be accepted again.
            biased;
            _ = dark.wait_for(|d| *d) => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve_conn(tcp, shared.clone()));
                }
                Err(e) => shared.error(format!("accept: {e}")),
            },
        }
    }
}

/// Serves one client connection until it ends, a request of it is cut, or the proxy goes dark.
/// Dropping the connection closes the socket without an answer.
async fn serve_conn(tcp: TcpStream, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    let cut = Arc::new(Notify::new());
    let mut dark = shared.dark.subscribe();
    let serve = {
        let (shared, cut) = (shared.clone(), cut.clone());
        async move {
            let tls = shared
                .acceptor
                .accept(tcp)
                .await
                .map_err(|e| format!("TLS accept: {e}"))?;
            let svc = service_fn(move |req| handle(req, shared.clone(), cut.clone()));
            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await
                .map_err(|e| format!("client connection: {e}"))
        }
    };
    tokio::select! {
        biased;
        _ = dark.wait_for(|d| *d) => {}
        _ = cut.notified() => {}
        served = serve => if let Err(e) = served { shared.error(e) },
    }
}

/// One request: forwarded to the destination; a transfer's answer may be swallowed.
async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    cut: Arc<Notify>,
) -> Result<Response<Full<Bytes>>, String> {
    let line = format!("{} {}", req.method(), req.uri().path());
    if *shared.dark.borrow() {
        // The destination looks dead: the request never reaches it.
        cut.notify_one();
        return std::future::pending().await;
    }
    let verdict = if req.uri().path() == drain::wire::TRANSFER_PATH {
        let n = shared.transfers.fetch_add(1, Ordering::SeqCst);
        (shared.rule.lock().unwrap())(n)
    } else {
        Verdict::Forward
    };
    let (parts, body) = match forward(&shared, req).await {
        Ok(a) => a,
        Err(e) => {
            shared.error(format!("{line}: {e}"));
            return Err(e);
        }
    };
    let status = parts.status.as_u16();
    if verdict == Verdict::Forward {
        shared
            .forwarded
            .lock()
            .unwrap()
            .push(format!("{line} -> {status}"));
        return Ok(Response::from_parts(parts, Full::new(body)));
    }
    // The destination answered, so whatever it stored is durable: swallow the answer.
    shared.cut.lock().unwrap().push(cut_transfer(status, &body));
    if verdict == Verdict::CutAndGoDark {
        shared.dark.send_replace(true);
    }
    cut.notify_one();
    std::future::pending().await
}

/// What the destination answered to a transfer.
fn cut_transfer(status: u16, body: &[u8]) -> CutTransfer {
    let (results, stored) = match serde_json::from_slice::<drain::wire::TransferResponse>(body) {
        Ok(r) => (
            r.results.len(),
            r.results
                .iter()
                .filter(|i| i.outcome.is_acked())
                .filter_map(|i| i.id.map(|id| id.to_string()))
                .collect(),
        ),
        Err(_) => (0, BTreeSet::new()),
    };
    CutTransfer {
        status,
        results,
        stored,
    }
}

/// Sends `req` to the destination over a new TLS connection and reads its whole answer.
async fn forward(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<(ResponseParts, Bytes), String> {
    let (mut parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("request body: {e}"))?
        .to_bytes();
    let tcp = TcpStream::connect(shared.upstream)
        .await
        .map_err(|e| format!("connect upstream: {e}"))?;
    let name = rustls::pki_types::ServerName::IpAddress(shared.upstream.ip().into());
    let tls = shared
        .connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("upstream TLS: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("upstream handshake: {e}"))?;
    tokio::spawn(conn);
    parts.version = Version::HTTP_11;
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|e| format!("uri: {e}"))?;
    let host = HeaderValue::from_str(&shared.upstream.to_string()).map_err(|e| e.to_string())?;
    parts.headers.insert(header::HOST, host);
    let answer = send
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await
        .map_err(|e| format!("upstream request: {e}"))?;
    let (mut parts, body) = answer.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("upstream answer body: {e}"))?
        .to_bytes();
    strip_hop_by_hop(&mut parts.headers);
    Ok((parts, body))
}

/// Headers about one connection, not the message: the proxy's client gets its own.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        h.remove(name);
    }
    h.remove("keep-alive");
}
