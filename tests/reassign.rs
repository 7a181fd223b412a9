//! `--reassign-after`: messages pinned to a destination that stays unreachable after an
//! ambiguous request are released to another destination once the duration has passed, and each
//! one is flagged `possible_duplicate` in the journal. Without the flag they stay pinned (never
//! sent elsewhere) until the drain is stopped.
//!
//! Destination A sits behind a "black hole" proxy that terminates TLS (with A's certificate,
//! valid for the proxy's address too), forwards each request to A, and for the first transfer
//! request reads A's whole answer (so A has stored the messages durably) and then, instead of
//! returning it, closes its listening socket and cuts the connection. From then on every
//! connection to the proxy is refused: A looks dead, but it holds every message of that request.
//! Terminating TLS (rather than guessing from encrypted byte counts) makes the scenario exact:
//! the proxy knows which request is a transfer and which ids A stored.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use drain::journal::{Journal, MessageRecord, RunStatus, State};

/// One drain run may not take longer than this.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the proxy waits on either side of a connection before giving up.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A transfer request whose answer the proxy swallowed.
#[derive(Clone, Debug)]
struct CutTransfer {
    /// A's HTTP status.
    status: u16,
    /// Frames in A's answer.
    results: usize,
    /// Ids A answered `stored` or `already_held` for.
    stored: BTreeSet<String>,
}

#[derive(Default)]
struct ProxyState {
    /// `None` once the proxy has gone dark: new connections are refused.
    listener: Mutex<Option<TcpListener>>,
    connections: AtomicUsize,
    cut: Mutex<Vec<CutTransfer>>,
    /// Requests forwarded both ways ("METHOD PATH -> STATUS").
    forwarded: Mutex<Vec<String>>,
    errors: Mutex<Vec<String>>,
}

/// TLS-terminating proxy in front of A that never returns a transfer answer and goes dark after
/// the first one.
struct BlackHoleProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
}

impl BlackHoleProxy {
    fn start(listen_ip: &str, upstream: &Server) -> BlackHoleProxy {
        drain::tls::install_provider();
        let server_cfg = drain::tls::server_config(&upstream.cert, &upstream.key).expect("tls");
        let mut roots = rustls::RootCertStore::empty();
        for c in drain::tls::load_certs(&upstream.cert).expect("A's cert") {
            roots.add(c).expect("root");
        }
        let mut client_cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client_cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client_cfg = Arc::new(client_cfg);

        let listener = TcpListener::bind(format!("{listen_ip}:0")).expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(ProxyState {
            listener: Mutex::new(Some(listener)),
            ..ProxyState::default()
        });
        let st = state.clone();
        let up = upstream.addr;
        std::thread::spawn(move || {
            loop {
                let accepted = {
                    let guard = st.listener.lock().unwrap();
                    let Some(l) = guard.as_ref() else { return };
                    l.accept()
                };
                match accepted {
                    Ok((tcp, _)) => {
                        st.connections.fetch_add(1, Ordering::SeqCst);
                        let (st, sc, cc) = (st.clone(), server_cfg.clone(), client_cfg.clone());
                        std::thread::spawn(move || {
                            if let Err(e) = serve_conn(tcp, up, sc, cc, &st) {
                                st.errors.lock().unwrap().push(e);
                            }
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => {
                        st.errors.lock().unwrap().push(format!("accept: {e}"));
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        });
        BlackHoleProxy { addr, state }
    }

    fn cut(&self) -> Vec<CutTransfer> {
        self.state.cut.lock().unwrap().clone()
    }

    fn describe(&self) -> String {
        format!(
            "proxy: {} connections, cut {:?}, forwarded {:?}, errors {:?}, dark: {}",
            self.state.connections.load(Ordering::SeqCst),
            self.cut(),
            self.state.forwarded.lock().unwrap(),
            self.state.errors.lock().unwrap(),
            self.state.listener.lock().unwrap().is_none()
        )
    }
}

impl Drop for BlackHoleProxy {
    fn drop(&mut self) {
        self.state.listener.lock().unwrap().take();
    }
}

/// One HTTP/1.1 message as it travelled (`raw`), with what the proxy needs from it.
struct HttpMsg {
    raw: Vec<u8>,
    /// Request: "METHOD PATH"; response: "HTTP/1.1 STATUS ...".
    start_line: String,
    body: Vec<u8>,
}

impl HttpMsg {
    fn path(&self) -> &str {
        let target = self.start_line.split(' ').nth(1).unwrap_or("");
        target.split('?').next().unwrap_or("")
    }

    fn status(&self) -> u16 {
        self.start_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads more bytes into `buf`; false on end of stream (a peer closing without close_notify
/// counts as the end too).
fn fill_more(s: &mut impl Read, buf: &mut Vec<u8>) -> Result<bool, String> {
    let mut tmp = [0u8; 16 * 1024];
    match s.read(&mut tmp) {
        Ok(0) => Ok(false),
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Parses a chunked body at the start of `b`: (bytes consumed, decoded body), or None if
/// incomplete.
fn parse_chunked(b: &[u8]) -> Result<Option<(usize, Vec<u8>)>, String> {
    let mut pos = 0;
    let mut body = Vec::new();
    loop {
        let Some(eol) = find(&b[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&b[pos..pos + eol]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("chunk size {line:?}: {e}"))?;
        pos += eol + 2;
        if size == 0 {
            // Trailers (none expected), then the final CRLF.
            let Some(end) = find(&b[pos..], b"\r\n") else {
                return Ok(None);
            };
            if end != 0 {
                return Err("trailers are not supported".into());
            }
            return Ok(Some((pos + 2, body)));
        }
        if b.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&b[pos..pos + size]);
        pos += size + 2;
    }
}

/// Reads one HTTP/1.1 message (Content-Length or chunked body). None: the peer closed the
/// connection between messages.
fn read_message(s: &mut impl Read, buf: &mut Vec<u8>) -> Result<Option<HttpMsg>, String> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !fill_more(s, buf)? {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(format!(
                "connection closed inside a message head ({} bytes)",
                buf.len()
            ));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let start_line = lines.next().unwrap_or("").to_string();
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                length = Some(v.parse::<usize>().map_err(|e| format!("{l}: {e}"))?);
            } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            }
        }
    }
    let (total, body) = if chunked {
        loop {
            if let Some((n, body)) = parse_chunked(&buf[head_end..])? {
                break (head_end + n, body);
            }
            if !fill_more(s, buf)? {
                return Err("connection closed inside a chunked body".into());
            }
        }
    } else {
        let len = length.unwrap_or(0);
        while buf.len() < head_end + len {
            if !fill_more(s, buf)? {
                return Err(format!("connection closed inside a body of {len} bytes"));
            }
        }
        (head_end + len, buf[head_end..head_end + len].to_vec())
    };
    let raw: Vec<u8> = buf.drain(..total).collect();
    Ok(Some(HttpMsg {
        raw,
        start_line,
        body,
    }))
}

/// Serves one client connection: requests go to A; a transfer's answer is swallowed, the proxy
/// goes dark (listener closed) and the connection is cut.
fn serve_conn(
    tcp: TcpStream,
    upstream: SocketAddr,
    server_cfg: Arc<rustls::ServerConfig>,
    client_cfg: Arc<rustls::ClientConfig>,
    st: &ProxyState,
) -> Result<(), String> {
    tcp.set_nonblocking(false).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let conn = rustls::ServerConnection::new(server_cfg).map_err(|e| e.to_string())?;
    let mut down = rustls::StreamOwned::new(conn, tcp);

    let up_tcp = TcpStream::connect(upstream).map_err(|e| format!("connect A: {e}"))?;
    up_tcp
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::IpAddress(upstream.ip().into());
    let conn = rustls::ClientConnection::new(client_cfg, name).map_err(|e| e.to_string())?;
    let mut up = rustls::StreamOwned::new(conn, up_tcp);

    let (mut dbuf, mut ubuf) = (Vec::new(), Vec::new());
    loop {
        let Some(req) = read_message(&mut down, &mut dbuf).map_err(|e| format!("client: {e}"))?
        else {
            return Ok(());
        };
        up.write_all(&req.raw)
            .and_then(|_| up.flush())
            .map_err(|e| format!("write to A: {e}"))?;
        let resp = read_message(&mut up, &mut ubuf)
            .map_err(|e| format!("A: {e}"))?
            .ok_or_else(|| format!("A closed without answering {}", req.start_line))?;
        if req.path() == drain::wire::TRANSFER_PATH {
            // A answered, so whatever it stored is durable. Go dark first (later connections
            // are refused), then cut this one without a word.
            st.listener.lock().unwrap().take();
            let (results, stored) =
                match serde_json::from_slice::<drain::wire::TransferResponse>(&resp.body) {
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
            st.cut.lock().unwrap().push(CutTransfer {
                status: resp.status(),
                results,
                stored,
            });
            let _ = down.sock.shutdown(Shutdown::Both);
            let _ = up.sock.shutdown(Shutdown::Both);
            return Ok(());
        }
        st.forwarded
            .lock()
            .unwrap()
            .push(format!("{} -> {}", req.start_line, resp.status()));
        down.write_all(&resp.raw)
            .and_then(|_| down.flush())
            .map_err(|e| format!("write to client: {e}"))?;
    }
}

/// A (behind the proxy) and B, on loopback addresses `base`, `base+1` (A), `base+2` (B).
struct Setup {
    tmp: TempDir,
    a: Server,
    b: Server,
    proxy: BlackHoleProxy,
    ca: PathBuf,
    src: PathBuf,
    originals: BTreeMap<String, (String, String)>,
}

impl Setup {
    fn new(tag: &str, base: u8, messages: usize) -> Setup {
        let tmp = TempDir::new(tag);
        let proxy_ip = format!("127.0.0.{base}");
        let a_ip = format!("127.0.0.{}", base + 1);
        let b_ip = format!("127.0.0.{}", base + 2);
        let a = Server::start_with_names(&tmp, "a", ServeConfig::on(&a_ip), &[&a_ip, &proxy_ip]);
        let b = Server::start(&tmp, "b", ServeConfig::on(&b_ip));
        let proxy = BlackHoleProxy::start(&proxy_ip, &a);
        let ca = ca_bundle(&tmp, &[&a, &b]);
        let src = tmp.sub("src");
        let originals = fill(&src, messages);
        assert_eq!(originals.len(), messages);
        Setup {
            tmp,
            a,
            b,
            proxy,
            ca,
            src,
            originals,
        }
    }

    fn proxy_dest(&self) -> String {
        self.proxy.addr.to_string()
    }

    /// `drain` started in the background, stdout and stderr to files.
    fn spawn_drain(&self, extra: &[&str], name: &str) -> (Child, PathBuf, PathBuf) {
        let out = self.tmp.path().join(format!("{name}.out"));
        let err = self.tmp.path().join(format!("{name}.err"));
        let child = Command::new(BIN)
            .arg("--data-dir")
            .arg(&self.src)
            .arg("--ca-cert")
            .arg(&self.ca)
            .args(["--concurrency", "2", "--batch-size", "20", "--json"])
            .args(extra)
            // A first: the round robin starts there, so the first request carries the batch.
            .arg(self.proxy_dest())
            .arg(self.b.dest())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("run drain");
        (child, out, err)
    }

    fn context(&self, stderr: &str) -> String {
        format!(
            "\ndrain stderr:\n{stderr}\nA log:\n{}\nB log:\n{}\n{}",
            self.a.log(),
            self.b.log(),
            self.proxy.describe()
        )
    }
}

/// Waits for `child` to exit, killing it (and panicking) after `limit`.
fn wait_exit(child: &mut Child, limit: Duration, err: &Path) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("wait drain") {
            return s.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "drain did not exit within {limit:?}\nstderr:\n{}",
                std::fs::read_to_string(err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every message record of the source's last run, by id, and that run.
fn journal_of(src: &Path) -> (drain::journal::RunRecord, BTreeMap<String, MessageRecord>) {
    let j = Journal::open(src).expect("open the sender's journal");
    let run = j
        .last_run()
        .expect("last run")
        .expect("a run was journaled");
    let mut recs = BTreeMap::new();
    j.for_each_message(run.seq, |id, rec| {
        recs.insert(id.to_string(), rec);
        Ok(())
    })
    .expect("read message records");
    (run, recs)
}

fn ids(entries: &[LsEntry]) -> BTreeSet<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

/// Checks each listed message against the original (hash, queue); no unknown message.
fn check_copies(where_: &str, entries: &[LsEntry], originals: &BTreeMap<String, (String, String)>) {
    let mut seen = BTreeSet::new();
    for e in entries {
        assert!(seen.insert(&e.id), "{where_} lists {} twice", e.id);
        let (queue, hash) = originals
            .get(&e.id)
            .unwrap_or_else(|| panic!("{where_} holds an unknown message {}", e.id));
        assert_eq!(&e.hash, hash, "{where_}: hash of {}", e.id);
        assert_eq!(&e.queue, queue, "{where_}: queue of {}", e.id);
    }
}

#[test]
fn reassign_after_releases_pinned_messages_flagged_as_possible_duplicates() {
    let started = Instant::now();
    let s = Setup::new("reassign", 60, 20);
    let proxy_dest = s.proxy_dest();
    let b_dest = s.b.dest();

    let (mut child, out, err) = s.spawn_drain(&["--reassign-after", "2s"], "drain");
    let code = wait_exit(&mut child, RUN_TIMEOUT, &err);
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let ctx = s.context(&stderr);
    assert_eq!(code, 0, "drain exit\nstdout:\n{stdout}{ctx}");

    // The proxy swallowed exactly one transfer answer, after A stored all of it.
    let cut = s.proxy.cut();
    assert_eq!(cut.len(), 1, "transfers cut{ctx}");
    let cut = &cut[0];
    assert_eq!(cut.status, 200, "A's answer to the cut transfer{ctx}");
    assert!(cut.results > 0, "A's answer lists no message{ctx}");
    assert_eq!(
        cut.stored.len(),
        cut.results,
        "A stored every message it got{ctx}"
    );
    assert!(
        stderr.contains("ended ambiguously"),
        "the cut was not seen as ambiguous{ctx}"
    );
    assert!(
        stderr.contains("stayed unreachable past --reassign-after"),
        "no reassignment logged{ctx}"
    );

    // The report: everything delivered to B, nothing in doubt.
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("report is not JSON ({e}):\n{stdout}{ctx}"));
    assert_eq!(report["in_doubt"], 0, "{report}");
    assert_eq!(report["removed"], 20, "{report}");
    assert_eq!(
        report["delivered"][&b_dest]["messages"], 20,
        "every message acknowledged by B: {report}"
    );
    assert!(
        report["delivered"].get(&proxy_dest).is_none(),
        "nothing can be acknowledged by the proxy: {report}"
    );

    // Census: every message on B; the ones A stored are on A too; the source is empty.
    let on_a = s.a.ls();
    let on_b = s.b.ls();
    let left = spool_ls(&s.src);
    check_copies("A", &on_a, &s.originals);
    check_copies("B", &on_b, &s.originals);
    let (a_ids, b_ids) = (ids(&on_a), ids(&on_b));
    let all: BTreeSet<String> = s.originals.keys().cloned().collect();
    assert!(
        left.is_empty(),
        "the source spool still holds {left:?}{ctx}"
    );
    assert_eq!(b_ids, all, "B must hold every message{ctx}");
    assert_eq!(
        a_ids, cut.stored,
        "A holds exactly what it answered stored{ctx}"
    );
    assert!(
        !a_ids.is_empty(),
        "A stored nothing: no duplicate was provoked{ctx}"
    );
    let missing: Vec<_> = all
        .iter()
        .filter(|id| !a_ids.contains(*id) && !b_ids.contains(*id) && !ids(&left).contains(*id))
        .collect();
    assert!(missing.is_empty(), "lost messages: {missing:?}");

    // The journal: finished, every message deleted after B's ack; the duplicates are flagged.
    let (run, recs) = journal_of(&s.src);
    assert_eq!(run.status, RunStatus::Finished, "{run:?}");
    assert_eq!(run.exit_code, Some(0), "{run:?}");
    assert_eq!(
        recs.keys().cloned().collect::<BTreeSet<_>>(),
        all,
        "journaled messages"
    );
    let flagged: BTreeSet<String> = recs
        .iter()
        .filter(|(_, r)| r.possible_duplicate)
        .map(|(id, _)| id.clone())
        .collect();
    let on_both: BTreeSet<String> = a_ids.intersection(&b_ids).cloned().collect();
    let unflagged_dups: Vec<_> = on_both.difference(&flagged).collect();
    assert!(
        unflagged_dups.is_empty(),
        "on A and B but not flagged possible_duplicate: {unflagged_dups:?}"
    );
    assert_eq!(
        flagged, on_both,
        "flagged messages are exactly the ones the cut request carried (all stored by A)"
    );
    for (id, r) in &recs {
        assert_eq!(r.state, State::Deleted, "{id}: {r:?}");
        assert_eq!(r.dest.as_deref(), Some(b_dest.as_str()), "{id}: {r:?}");
        let reassigned: Vec<_> = r
            .history
            .iter()
            .enumerate()
            .filter(|(_, t)| {
                t.state == State::Read
                    && t.note.as_deref().is_some_and(|n| n.contains("reassigned"))
            })
            .collect();
        if !r.possible_duplicate {
            assert!(
                reassigned.is_empty(),
                "{id}: reassigned but not flagged: {r:?}"
            );
            continue;
        }
        assert_eq!(
            reassigned.len(),
            1,
            "{id}: one reassignment expected: {r:?}"
        );
        let (i, t) = reassigned[0];
        assert_eq!(t.dest.as_deref(), Some(proxy_dest.as_str()), "{id}: {r:?}");
        // Before it: sent to the proxy (in doubt); it was released no sooner than 2 s later.
        let sent = r.history[..i]
            .iter()
            .rev()
            .find(|t| t.state == State::Sent)
            .unwrap_or_else(|| panic!("{id}: reassigned without a prior send: {r:?}"));
        assert_eq!(
            sent.dest.as_deref(),
            Some(proxy_dest.as_str()),
            "{id}: {r:?}"
        );
        assert!(
            t.at.0 - sent.at.0 >= time::Duration::seconds(2),
            "{id}: released {} after it was sent, before --reassign-after 2s: {r:?}",
            t.at.0 - sent.at.0
        );
        // After it: sent to B and acknowledged there.
        let after: Vec<_> = r.history[i + 1..]
            .iter()
            .map(|t| (t.state, t.dest.clone()))
            .collect();
        assert!(
            after.contains(&(State::Sent, Some(b_dest.clone())))
                && after.contains(&(State::Acked, Some(b_dest.clone()))),
            "{id}: not re-sent to B after the reassignment: {r:?}"
        );
    }
    eprintln!(
        "reassign: {} messages, {} stored by A and reassigned to B (flagged), {} straight to B, \
         {:.1?}",
        all.len(),
        flagged.len(),
        all.len() - flagged.len(),
        started.elapsed()
    );
}

#[test]
fn without_reassign_after_pinned_messages_wait_for_their_destination() {
    let started = Instant::now();
    let s = Setup::new("pinned", 63, 20);
    let proxy_dest = s.proxy_dest();

    let (mut child, out, err) = s.spawn_drain(&[], "drain");
    // Wait until it has asked A (through the dead proxy) at least twice.
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        if stderr.matches("cannot confirm").count() >= 2 {
            break;
        }
        if let Some(status) = child.try_wait().expect("wait drain") {
            panic!("drain exited early ({status}){}", s.context(&stderr));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("drain never retried the query{}", s.context(&stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&child, libc::SIGTERM);
    let code = wait_exit(&mut child, Duration::from_secs(60), &err);
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let ctx = s.context(&stderr);
    assert_eq!(code, 42, "exit after SIGTERM\nstdout:\n{stdout}{ctx}");
    assert!(
        !stderr.contains("stayed unreachable past --reassign-after"),
        "reassigned without --reassign-after{ctx}"
    );

    let cut = s.proxy.cut();
    assert_eq!(cut.len(), 1, "transfers cut{ctx}");
    assert!(!cut[0].stored.is_empty(), "A stored nothing{ctx}");

    let on_a = s.a.ls();
    let on_b = s.b.ls();
    let left = spool_ls(&s.src);
    check_copies("A", &on_a, &s.originals);
    check_copies("B", &on_b, &s.originals);
    check_copies("source", &left, &s.originals);
    let (a_ids, b_ids, src_ids) = (ids(&on_a), ids(&on_b), ids(&left));
    assert_eq!(
        a_ids, cut[0].stored,
        "A holds exactly what it answered stored{ctx}"
    );

    let (run, recs) = journal_of(&s.src);
    assert_eq!(run.status, RunStatus::Interrupted, "{run:?}");
    assert_eq!(run.exit_code, Some(42), "{run:?}");
    let pinned: BTreeSet<String> = recs
        .iter()
        .filter(|(_, r)| r.state == State::Sent)
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(
        pinned, a_ids,
        "in doubt: exactly what the cut request carried{ctx}"
    );
    for id in &pinned {
        let r = &recs[id];
        assert_eq!(r.dest.as_deref(), Some(proxy_dest.as_str()), "{id}: {r:?}");
        assert!(
            !r.possible_duplicate,
            "{id} flagged without --reassign-after: {r:?}"
        );
        assert!(
            r.history
                .iter()
                .all(|t| t.dest.as_deref() != Some(s.b.dest().as_str())),
            "{id}: offered to B while pinned to A: {r:?}"
        );
        assert!(
            !b_ids.contains(id),
            "{id} is pinned to A but B holds it{ctx}"
        );
        assert!(
            src_ids.contains(id),
            "{id} is in doubt but gone from the source{ctx}"
        );
    }
    // Nothing lost, nothing on two destinations.
    for id in s.originals.keys() {
        assert!(
            src_ids.contains(id) || b_ids.contains(id),
            "{id} is neither in the source nor on B{ctx}"
        );
        assert!(
            !(a_ids.contains(id) && b_ids.contains(id)),
            "{id} on A and B{ctx}"
        );
    }
    eprintln!(
        "pinned: {} messages in doubt with the dead proxy stayed in the source, B got {}, {:.1?}",
        pinned.len(),
        b_ids.len(),
        started.elapsed()
    );
}
