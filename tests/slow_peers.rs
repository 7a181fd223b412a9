//! Slow and stalled peers against a real `drain serve`: a huge declared `Content-Length` is
//! refused at once, a stalled transfer neither blocks a query of its own run (it is fenced)
//! nor another sender's drain, a body that stops is aborted after `--body-idle-timeout`, and
//! connections over `--max-connections-per-peer` are closed.
//!
//! Requests are written by hand over TLS (tokio-rustls), so a test decides exactly which bytes
//! go out and when: a stall is simply not writing. Readiness is read from the server (the
//! `100 Continue` hyper sends once the handler starts reading the body), never slept for.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use drain::base::QueueKind;
use drain::spool::Message;
use drain::wire::{self, Outcome, QueryResponse, RejectCode, TransferResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

const SENDER: &str = "00000000000000000000000000000abc";
const RUN: &str = "11111111111111111111111111111111";
/// Longest any answer the server owes may take here ("at once", on a loaded machine).
const PROMPT: Duration = Duration::from_secs(5);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One HTTP/1.1 connection over TLS from a chosen loopback address, written by hand.
struct Raw {
    tls: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

/// Connects from `from` to `s` and completes the TLS handshake.
async fn connect(s: &Server, from: &str) -> std::io::Result<Raw> {
    drain::tls::install_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in drain::tls::load_certs(&s.cert).unwrap() {
        roots.add(c).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(from.parse().unwrap(), 0))?;
    let tcp = sock.connect(s.addr).await?;
    let name = rustls::pki_types::ServerName::from(s.addr.ip());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await?;
    Ok(Raw {
        tls,
        buf: Vec::new(),
    })
}

impl Raw {
    async fn send(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).await.unwrap();
        self.tls.flush().await.unwrap();
    }

    /// Reads one response head (status line and headers), within `limit`.
    async fn head(&mut self, limit: Duration) -> (u16, String) {
        let read = async {
            loop {
                if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                    let head = String::from_utf8(head).unwrap();
                    let status = head[9..12].parse().unwrap();
                    return (status, head);
                }
                let mut chunk = [0u8; 4096];
                let n = self.tls.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed before an answer");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(limit, read)
            .await
            .expect("no answer in time")
    }

    /// Reads one whole response (head, then a `Content-Length` body), within `limit`.
    async fn response(&mut self, limit: Duration) -> (u16, String) {
        let (status, head) = self.head(limit).await;
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_string)
            })
            .expect("content-length")
            .trim()
            .parse()
            .unwrap();
        while self.buf.len() < len {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(limit, self.tls.read(&mut chunk))
                .await
                .expect("body in time")
                .unwrap();
            assert!(n > 0, "connection closed in the answer's body");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = self.buf.drain(..len).collect();
        (status, String::from_utf8(body).unwrap())
    }

    /// Starts a transfer of `body` for `run`, writes the first `sent` bytes and stalls there.
    /// Returns once the server's handler is reading the body (its `100 Continue`), so the
    /// transfer is registered as arriving.
    async fn stalled_transfer(&mut self, run: &str, body: &[u8], sent: usize) {
        let head = format!(
            "POST {} HTTP/1.1\r\nhost: x\r\n{}: {SENDER}\r\n{}: {run}\r\ncontent-type: {}\r\n\
             content-length: {}\r\nexpect: 100-continue\r\n\r\n",
            wire::TRANSFER_PATH,
            wire::HDR_SENDER,
            wire::HDR_RUN,
            wire::BATCH_CONTENT_TYPE,
            body.len()
        );
        self.send(head.as_bytes()).await;
        let (status, _) = self.head(PROMPT).await;
        assert_eq!(status, 100);
        self.send(&body[..sent]).await;
    }
}

fn client(server: &Server, bind: &str) -> reqwest::Client {
    https_client(&server.cert, bind)
}

/// Asks which of `msgs` the server holds for `run`; also returns how long the answer took.
async fn query(
    c: &reqwest::Client,
    s: &Server,
    run: &str,
    msgs: &[&Message],
) -> (Vec<String>, Duration) {
    let q = wire::QueryRequest {
        messages: msgs
            .iter()
            .map(|m| wire::QueryItem {
                id: m.header.id,
                hash: m.hash,
            })
            .collect(),
    };
    let started = Instant::now();
    let resp = c
        .post(format!("https://{}{}", s.addr, wire::QUERY_PATH))
        .header(wire::HDR_SENDER, SENDER)
        .header(wire::HDR_RUN, run)
        .timeout(Duration::from_secs(60))
        .json(&q)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let r: QueryResponse = resp.json().await.unwrap();
    (
        r.held.iter().map(|h| h.to_string()).collect(),
        started.elapsed(),
    )
}

/// The server's metrics text (it must run with `--metrics-listen`).
async fn metrics(s: &Server) -> String {
    let addr = std::fs::read_to_string(s.data_dir.join("metrics.addr")).unwrap();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{}/metrics", addr.trim()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn serve(tmp: &TempDir, extra: &[&str]) -> Server {
    let mut cfg = ServeConfig::on("127.0.0.2");
    cfg.extra = extra.iter().map(|s| s.to_string()).collect();
    cfg.extra
        .extend(["--metrics-listen".into(), "127.0.0.2:0".into()]);
    Server::start(tmp, "a", cfg)
}

#[test]
fn a_huge_declared_length_gets_413_at_once() {
    let tmp = TempDir::new("cl413");
    let s = serve(&tmp, &[]);
    rt().block_on(async {
        let mut raw = connect(&s, "127.0.0.1").await.unwrap();
        let head = format!(
            "POST {} HTTP/1.1\r\nhost: x\r\n{}: {SENDER}\r\n{}: {RUN}\r\n\
             content-length: 999999999999\r\n\r\n",
            wire::TRANSFER_PATH,
            wire::HDR_SENDER,
            wire::HDR_RUN
        );
        let started = Instant::now();
        raw.send(head.as_bytes()).await;
        let (status, body) = raw.response(PROMPT).await;
        eprintln!("413 after {:?}", started.elapsed());
        assert_eq!(status, 413, "{body}");
        let e: wire::ErrorResponse = serde_json::from_str(&body).unwrap();
        assert_eq!(e.code, Some(RejectCode::TooLarge), "{body}");
        assert!(
            metrics(&s)
                .await
                .contains("drain_intake_refusals_total{reason=\"too_large\"} 1\n")
        );
    });
    assert!(s.ls().is_empty());
}

#[test]
fn a_query_fences_a_stalled_transfer_of_its_run_and_answers_at_once() {
    let tmp = TempDir::new("fence");
    let s = serve(&tmp, &["--body-idle-timeout", "1h"]);
    let m = message(QueueKind::BounceLite, 2, b"stalled on the way\r\n");
    let body = batch(&[(&m, m.hash)]);
    rt().block_on(async {
        let mut raw = connect(&s, "127.0.0.1").await.unwrap();
        raw.stalled_transfer(RUN, &body, body.len() / 2).await;
        // The sender gave up on that request and asks: answered at once, "not held".
        let c = client(&s, "127.0.0.1");
        let (held, took) = query(&c, &s, RUN, &[&m]).await;
        eprintln!("query answered in {took:?} while a transfer of its run is stalled");
        assert!(held.is_empty(), "{held:?}");
        assert!(took < PROMPT, "{took:?}");
        // The stalled body finally completes: refused (fenced), nothing stored.
        raw.send(&body[body.len() / 2..]).await;
        let (status, text) = raw.response(PROMPT).await;
        assert_eq!(status, 200, "{text}");
        let r: TransferResponse = serde_json::from_str(&text).unwrap();
        assert_eq!(r.results.len(), 1);
        assert_eq!(
            (r.results[0].outcome, r.results[0].code),
            (Outcome::RejectedTransient, Some(RejectCode::Fenced)),
            "{text}"
        );
        assert!(s.ls().is_empty(), "{:?}", s.ls());
        assert!(
            query(&c, &s, RUN, &[&m]).await.0.is_empty(),
            "still not held"
        );
        assert!(
            metrics(&s)
                .await
                .contains("drain_intake_refusals_total{reason=\"fenced\"} 1\n")
        );
        // Sent again, it is stored: the fence held only that transfer.
        let resp = c
            .post(format!("https://{}{}", s.addr, wire::TRANSFER_PATH))
            .header(wire::HDR_SENDER, SENDER)
            .header(wire::HDR_RUN, RUN)
            .header("content-type", wire::BATCH_CONTENT_TYPE)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let r: TransferResponse = resp.json().await.unwrap();
        assert_eq!(r.results[0].outcome, Outcome::Stored);
        assert_eq!(query(&c, &s, RUN, &[&m]).await.0, vec![m.hash.to_string()]);
        finish_fences_a_stalled_transfer(&c, &s).await;
    });
    assert_eq!(s.ls().len(), 1, "only the message sent again");
}

/// `/v1/finish` does not wait for a stalled transfer of its run either: every message of it is
/// fenced.
async fn finish_fences_a_stalled_transfer(c: &reqwest::Client, s: &Server) {
    let m = message(QueueKind::BounceLite, 2, b"stalled before the finish");
    let body = batch(&[(&m, m.hash)]);
    let mut raw = connect(s, "127.0.0.1").await.unwrap();
    raw.stalled_transfer(RUN, &body, body.len() / 2).await;
    let started = Instant::now();
    let resp = c
        .post(format!("https://{}{}", s.addr, wire::FINISH_PATH))
        .header(wire::HDR_SENDER, SENDER)
        .header(wire::HDR_RUN, RUN)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let took = started.elapsed();
    eprintln!("finish answered in {took:?} while a transfer of its run is stalled");
    assert!(took < PROMPT, "{took:?}");
    raw.send(&body[body.len() / 2..]).await;
    let (status, text) = raw.response(PROMPT).await;
    assert_eq!(status, 200, "{text}");
    let r: TransferResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(r.results[0].code, Some(RejectCode::Fenced), "{text}");
}

#[test]
fn twenty_stalled_connections_do_not_delay_another_senders_drain() {
    let tmp = TempDir::new("stall20");
    // Two workers: before, 20 stalled bodies held every body permit (2 x workers) forever.
    let s = serve(
        &tmp,
        &["--incoming-drain-workers", "2", "--body-idle-timeout", "1h"],
    );
    let src = tmp.sub("src");
    let expected = fill(&src, 200);
    let ca = ca_bundle(&tmp, &[&s]);
    let runtime = rt();
    let stalled = runtime.block_on(async {
        let mut stalled = Vec::new();
        for i in 0..20 {
            let m = message(QueueKind::BounceLite, 1, format!("stall {i}").as_bytes());
            let body = batch(&[(&m, m.hash)]);
            let mut raw = connect(&s, "127.0.0.5").await.unwrap();
            raw.stalled_transfer("22222222222222222222222222222222", &body, body.len() / 2)
                .await;
            stalled.push(raw);
        }
        // Another sender's query is not delayed either.
        let (held, took) = query(&client(&s, "127.0.0.1"), &s, RUN, &[]).await;
        assert!(held.is_empty() && took < PROMPT, "{took:?}");
        stalled
    });
    let started = Instant::now();
    let ran = run_logged(
        &src,
        &[
            "--ca-cert",
            ca.to_str().unwrap(),
            "--bind-ip",
            "127.0.0.1",
            &s.dest(),
        ],
        &tmp.path().join("drain"),
        Duration::from_secs(120),
    );
    eprintln!(
        "drain of 200 with 20 stalled connections open: {:?}",
        started.elapsed()
    );
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert_census(&[&s], &src, &expected);
    drop(stalled);
}

#[test]
fn a_body_idle_past_the_timeout_is_aborted_and_nothing_stored() {
    let tmp = TempDir::new("idle");
    let s = serve(&tmp, &["--body-idle-timeout", "500ms"]);
    let m = message(QueueKind::BounceLite, 2, b"never finished");
    let body = batch(&[(&m, m.hash)]);
    rt().block_on(async {
        let mut raw = connect(&s, "127.0.0.7").await.unwrap();
        let started = Instant::now();
        raw.stalled_transfer(RUN, &body, body.len() / 2).await;
        let (status, text) = raw.response(Duration::from_secs(30)).await;
        eprintln!("aborted after {:?}", started.elapsed());
        assert_eq!(status, 408, "{text}");
        let e: wire::ErrorResponse = serde_json::from_str(&text).unwrap();
        assert_eq!(e.code, Some(RejectCode::Timeout), "{text}");
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert!(
            metrics(&s)
                .await
                .contains("drain_intake_refusals_total{reason=\"body_timeout\"} 1\n")
        );
    });
    assert!(s.ls().is_empty());
    let log = s.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("aborted /v1/transfer from 127.0.0.7:")),
        "{log}"
    );
}

#[test]
fn connections_over_the_per_peer_limit_are_closed() {
    let tmp = TempDir::new("perpeer");
    let s = serve(&tmp, &["--max-connections-per-peer", "3"]);
    rt().block_on(async {
        let mut open = Vec::new();
        for _ in 0..3 {
            open.push(connect(&s, "127.0.0.8").await.unwrap());
        }
        assert!(
            connect(&s, "127.0.0.8").await.is_err(),
            "a fourth is closed"
        );
        let _other = connect(&s, "127.0.0.9")
            .await
            .expect("another address is not limited");
        let text = metrics(&s).await;
        assert!(
            text.contains("drain_intake_connections_over_peer_limit_total 1\n"),
            "{text}"
        );
        // Once one closes, its place is free again (as soon as the server saw it close).
        drop(open.pop());
        let deadline = Instant::now() + PROMPT;
        while connect(&s, "127.0.0.8").await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the closed connection's place was not freed"
            );
            tokio::task::yield_now().await;
        }
    });
    let log = s.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("closed a connection from 127.0.0.8")
            && l.contains("max_connections_per_peer")),
        "{log}"
    );
}

#[test]
fn silent_connections_are_closed_after_the_handshake_and_header_timeouts() {
    let tmp = TempDir::new("silent");
    let s = serve(
        &tmp,
        &[
            "--tls-handshake-timeout",
            "300ms",
            "--header-read-timeout",
            "300ms",
        ],
    );
    rt().block_on(async {
        // No TLS handshake at all: closed after --tls-handshake-timeout.
        let mut tcp = TcpStream::connect(s.addr).await.unwrap();
        let started = Instant::now();
        let mut b = [0u8; 16];
        let n = tokio::time::timeout(PROMPT, tcp.read(&mut b))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0);
        eprintln!("no handshake: closed after {:?}", started.elapsed());
        assert!(started.elapsed() >= Duration::from_millis(300));
        // A handshake, then no request: closed after --header-read-timeout, and counted.
        let mut raw = connect(&s, "127.0.0.1").await.unwrap();
        let started = Instant::now();
        let n = tokio::time::timeout(PROMPT, raw.tls.read(&mut b))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0);
        eprintln!("no request header: closed after {:?}", started.elapsed());
        assert!(started.elapsed() >= Duration::from_millis(300));
        let deadline = Instant::now() + PROMPT;
        while !metrics(&s)
            .await
            .contains("drain_intake_header_timeouts_total 1\n")
        {
            assert!(Instant::now() < deadline, "{}", metrics(&s).await);
        }
    });
}
