//! `drain serve --metrics-listen`: Prometheus metrics scraped over plain HTTP from a real serve
//! after a real drain into it, and after raw protocol requests (a dedupe hit, a hash mismatch,
//! a refused peer); the event counters against a real event endpoint.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use drain::base::QueueKind;
use drain::wire::{self, Outcome, TransferResponse};

/// A plain `GET path` over TCP: (status code, content type, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, ctype, body.to_string())
}

/// Every sample of a scrape, by `name{labels}`.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, ctype, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("name value");
            (k.to_string(), v.parse().expect("a number"))
        })
        .collect()
}

fn metric(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no {key} in {:#?}", m.keys().collect::<Vec<_>>()))
}

/// POST /v1/transfer from `bind`: (status, body).
fn transfer(server: &Server, bind: &str, body: Vec<u8>) -> (u16, String) {
    drain::tls::install_provider();
    let pem = std::fs::read(&server.cert).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
            .local_address(bind.parse::<IpAddr>().unwrap())
            .no_proxy()
            .build()
            .unwrap();
        let r = c
            .post(format!("https://{}{}", server.addr, wire::TRANSFER_PATH))
            .header(wire::HDR_SENDER, "00000000000000000000000000000abc")
            .header(wire::HDR_RUN, "22222222222222222222222222222222")
            .header("content-type", wire::BATCH_CONTENT_TYPE)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    })
}

fn outcomes(text: &str) -> Vec<Outcome> {
    serde_json::from_str::<TransferResponse>(text)
        .unwrap_or_else(|e| panic!("{e}: {text}"))
        .results
        .iter()
        .map(|r| r.outcome)
        .collect()
}

/// Polls the metrics until `ok` holds (or fails after 60 s).
fn wait_for(addr: SocketAddr, what: &str, ok: impl Fn(&HashMap<String, f64>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = scrape(addr);
        if ok(&m) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {m:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Messages in the real drain.
const N: usize = 60;

#[test]
fn metrics_count_what_a_drain_brought_in() {
    let tmp = TempDir::new("metrics");
    let sink = EventSink::start("127.0.0.113");
    sink.status.store(500, Ordering::SeqCst);
    let (dest, maddr) = start_destination(&tmp, &sink);
    check_every_counter_at_zero(maddr);
    let transfers = drain_into(&tmp, &dest, maddr);
    send_raw_requests(&dest);
    check_counts_after_the_raw_requests(&dest, maddr, transfers);
    check_event_counters(maddr, &sink);
}

/// A serve accepting drains from .111 and .112, with metrics and a (failing) event endpoint;
/// returns it and its metrics address.
fn start_destination(tmp: &TempDir, sink: &EventSink) -> (Server, SocketAddr) {
    let mut cfg = ServeConfig::on("127.0.0.110");
    cfg.accept = "127.0.0.111,127.0.0.112";
    cfg.extra = vec![
        "--metrics-listen".into(),
        "127.0.0.110:0".into(),
        "--event-endpoint".into(),
        sink.url.clone(),
    ];
    let dest = Server::start(tmp, "dest", cfg);
    let maddr: SocketAddr = std::fs::read_to_string(dest.data_dir.join("metrics.addr"))
        .expect("metrics.addr")
        .trim()
        .parse()
        .unwrap();
    (dest, maddr)
}

/// Before anything: every counter exported, at zero.
fn check_every_counter_at_zero(maddr: SocketAddr) {
    let m = scrape(maddr);
    assert_eq!(metric(&m, "drain_intake_messages_stored_total"), 0.0);
    assert_eq!(
        metric(&m, "drain_intake_refusals_total{reason=\"forbidden\"}"),
        0.0
    );
    assert_eq!(metric(&m, "drain_intake_accepting"), 1.0);
    assert_eq!(get(maddr, "/nothing-here").0, 404);
}

/// A real drain of N messages; returns the transfer count it left.
fn drain_into(tmp: &TempDir, dest: &Server, maddr: SocketAddr) -> f64 {
    let src = tmp.sub("src");
    fill(&src, N);
    let ca = ca_bundle(tmp, &[dest]);
    let o = drain(
        &src,
        &[
            "--ca-cert",
            ca.to_str().unwrap(),
            "--bind-ip",
            "127.0.0.111",
            &dest.dest(),
        ],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    let ls = dest.ls();
    assert_eq!(ls.len(), N);
    let m = scrape(maddr);
    assert_eq!(metric(&m, "drain_intake_messages_stored_total"), N as f64);
    assert_eq!(
        metric(&m, "drain_intake_bytes_stored_total"),
        ls.iter().map(|e| e.size).sum::<u64>() as f64
    );
    let transfers = metric(&m, "drain_intake_transfer_duration_seconds_count");
    assert!(transfers >= 1.0, "{m:#?}");
    assert_eq!(
        metric(
            &m,
            "drain_intake_transfer_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        transfers
    );
    transfers
}

/// The same request twice: stored, then a dedupe hit. A bad hash, and a refused peer.
fn send_raw_requests(dest: &Server) {
    let extra = message(QueueKind::Queue, 1, b"Subject: one more\r\n\r\nhello\r\n");
    let body = batch(&[(&extra, extra.hash)]);
    let (st, text) = transfer(dest, "127.0.0.112", body.clone());
    assert_eq!(
        (st, outcomes(&text)),
        (200, vec![Outcome::Stored]),
        "{text}"
    );
    let (st, text) = transfer(dest, "127.0.0.112", body.clone());
    assert_eq!(
        (st, outcomes(&text)),
        (200, vec![Outcome::AlreadyHeld]),
        "{text}"
    );
    let bad = message(QueueKind::Queue, 1, b"tampered");
    let (st, text) = transfer(
        dest,
        "127.0.0.112",
        batch(&[(&bad, drain::base::ContentHash::of(b"x"))]),
    );
    assert_eq!(
        (st, outcomes(&text)),
        (200, vec![Outcome::RejectedPermanent]),
        "{text}"
    );
    let (st, text) = transfer(dest, "127.0.0.114", body);
    assert_eq!(st, 403, "{text}");
}

/// Stored, already held, refused (by reason) and transfers counted after the raw requests.
fn check_counts_after_the_raw_requests(dest: &Server, maddr: SocketAddr, transfers: f64) {
    let ls = dest.ls();
    assert_eq!(ls.len(), N + 1);
    let m = scrape(maddr);
    assert_eq!(
        metric(&m, "drain_intake_messages_stored_total"),
        (N + 1) as f64
    );
    assert_eq!(
        metric(&m, "drain_intake_bytes_stored_total"),
        ls.iter().map(|e| e.size).sum::<u64>() as f64
    );
    assert_eq!(metric(&m, "drain_intake_messages_already_held_total"), 1.0);
    assert_eq!(
        metric(&m, "drain_intake_refusals_total{reason=\"forbidden\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "drain_intake_refusals_total{reason=\"hash_mismatch\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "drain_intake_refusals_total{reason=\"too_large\"}"),
        0.0
    );
    assert_eq!(
        metric(&m, "drain_intake_transfer_duration_seconds_count"),
        transfers + 4.0
    );
}

/// Events: one per message stored, pending while the endpoint fails, delivered once it
/// answers.
fn check_event_counters(maddr: SocketAddr, sink: &EventSink) {
    // Events: one per message stored, pending while the endpoint fails...
    wait_for(maddr, "an event delivery failure", |m| {
        metric(m, "drain_event_delivery_failures_total") >= 1.0
    });
    let m = scrape(maddr);
    assert_eq!(metric(&m, "drain_events_pending"), (N + 1) as f64);
    assert_eq!(metric(&m, "drain_events_delivered_total"), 0.0);
    // ...and delivered once it answers.
    sink.status.store(200, Ordering::SeqCst);
    wait_for(maddr, "every event delivered", |m| {
        metric(m, "drain_events_pending") == 0.0
            && metric(m, "drain_events_delivered_total") == (N + 1) as f64
    });
    assert_eq!(sink.ids().len(), N + 1);
}
