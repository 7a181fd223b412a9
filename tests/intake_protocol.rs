//! The receiver's side of wire protocol v1, spoken directly to a real `drain serve` over TLS:
//! idempotence, hash verification, the query endpoint, access control and trusted proxies.

mod common;

use common::*;
use drain::base::{MessageId, QueueKind};
use drain::spool::Message;
use drain::wire::{self, Outcome, QueryResponse, TransferResponse};

fn client(server: &Server, bind: &str) -> reqwest::Client {
    https_client(&server.cert, bind)
}

const SENDER: &str = "00000000000000000000000000000abc";
const RUN: &str = "11111111111111111111111111111111";

async fn post(
    c: &reqwest::Client,
    s: &Server,
    path: &str,
    run: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut r = c
        .post(format!("https://{}{path}", s.addr))
        .header(wire::HDR_SENDER, SENDER)
        .header(wire::HDR_RUN, run)
        .body(body);
    // The sender's types; a test that means to send another passes its own.
    let media = match path {
        wire::TRANSFER_PATH => Some(wire::BATCH_CONTENT_TYPE),
        wire::QUERY_PATH => Some(wire::QUERY_CONTENT_TYPE),
        _ => None,
    };
    if let Some(t) = media.filter(|_| {
        !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    }) {
        r = r.header("content-type", t);
    }
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_same_request_twice_is_stored_once_and_a_bad_hash_is_rejected() {
    let tmp = TempDir::new("idem");
    let s = Server::start(&tmp, "a", ServeConfig::on("127.0.0.2"));
    let c = client(&s, "127.0.0.1");
    let m1 = message(QueueKind::BounceLite, 2, b"first\r\n");
    let m2 = message(QueueKind::BounceLite, 2, b"second\n");
    rt().block_on(async {
        send_twice_stored_once(&c, &s, &m1, &m2).await;
        check_query_endpoint(&c, &s, &m1, &m2).await;
        let m3 = check_bad_hash_rejected(&c, &s).await;
        check_malformed_requests_get_400(&c, &s, &m3).await;
    });
}

/// The same transfer twice, as a sender would after losing the answer: stored, then
/// acknowledged and not stored twice.
async fn send_twice_stored_once(c: &reqwest::Client, s: &Server, m1: &Message, m2: &Message) {
    let body = batch(&[(m1, m1.hash), (m2, m2.hash)]);
    let (st, text) = post(c, s, wire::TRANSFER_PATH, RUN, body.clone(), &[]).await;
    assert_eq!(st, 200, "{text}");
    let r: TransferResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(
        r.results.iter().map(|x| x.outcome).collect::<Vec<_>>(),
        vec![Outcome::Stored, Outcome::Stored]
    );
    // Again, as a sender would after losing the answer: acknowledged, not stored twice.
    let (st, text) = post(c, s, wire::TRANSFER_PATH, RUN, body.clone(), &[]).await;
    assert_eq!(st, 200);
    let r: TransferResponse = serde_json::from_str(&text).unwrap();
    assert!(
        r.results.iter().all(|x| x.outcome == Outcome::AlreadyHeld),
        "{text}"
    );
    let ls = s.ls();
    assert_eq!(ls.len(), 2, "{ls:?}");
    let ids: Vec<String> = ls.iter().map(|e| e.id.clone()).collect();
    assert!(ids.contains(&m1.header.id.to_string()) && ids.contains(&m2.header.id.to_string()));
    let e1 = ls
        .iter()
        .find(|e| e.id == m1.header.id.to_string())
        .unwrap();
    assert_eq!(e1.hash, m1.hash.to_string());
    assert_eq!((e1.queue.as_str(), e1.attempts), ("bounce-lite", 2));
}

fn item(m: &Message) -> wire::QueryItem {
    wire::QueryItem {
        id: m.header.id,
        hash: m.hash,
    }
}

/// The hashes the query endpoint says are held, for `run`.
async fn query(
    c: &reqwest::Client,
    s: &Server,
    run: &str,
    messages: Vec<wire::QueryItem>,
) -> Vec<drain::base::ContentHash> {
    let q = serde_json::to_vec(&wire::QueryRequest { messages }).unwrap();
    let (st, text) = post(c, s, wire::QUERY_PATH, run, q, &[]).await;
    assert_eq!(st, 200, "{text}");
    serde_json::from_str::<QueryResponse>(&text).unwrap().held
}

/// The query endpoint: held through the dedupe record of this run, or the spool.
async fn check_query_endpoint(c: &reqwest::Client, s: &Server, m1: &Message, m2: &Message) {
    let unknown = wire::QueryItem {
        id: MessageId::random().unwrap(),
        hash: drain::base::ContentHash::of(b"x"),
    };
    let m1_hash = vec![m1.hash];
    assert_eq!(
        query(c, s, RUN, vec![item(m1), unknown.clone()]).await,
        m1_hash
    );
    // Once the copy has left this instance, the run that stored it still sees it...
    let path = s
        .data_dir
        .join(format!("spool/bounce-lite/{}.msg", m1.header.id));
    std::fs::remove_file(&path).unwrap();
    assert_eq!(query(c, s, RUN, vec![item(m1)]).await, m1_hash);
    // ...and no other run does: dedupe is scoped to the run.
    let other_run = "22222222222222222222222222222222";
    assert!(query(c, s, other_run, vec![item(m1)]).await.is_empty());
    // A copy in the spool is held whatever the record says (a receiver killed between
    // writing the file and recording it must not answer "not held").
    assert_eq!(query(c, s, other_run, vec![item(m2)]).await, vec![m2.hash]);
}

/// A frame whose hash does not match its content is rejected, nothing stored. Returns the
/// rejected message.
async fn check_bad_hash_rejected(c: &reqwest::Client, s: &Server) -> Message {
    let m3 = message(QueueKind::BounceLite, 2, b"third");
    let body = batch(&[(&m3, drain::base::ContentHash::of(b"something else"))]);
    let (st, text) = post(c, s, wire::TRANSFER_PATH, RUN, body, &[]).await;
    assert_eq!(st, 200);
    let r: TransferResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(r.results[0].outcome, Outcome::RejectedPermanent);
    assert!(
        r.results[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("hash mismatch")
    );
    assert_eq!(
        s.ls().len(),
        1,
        "only m2 is left (m1 was removed above); nothing new"
    );
    m3
}

/// Malformed bodies and headers get 400, naming the problem.
async fn check_malformed_requests_get_400(c: &reqwest::Client, s: &Server, m3: &Message) {
    let (st, text) = post(c, s, wire::TRANSFER_PATH, RUN, b"short".to_vec(), &[]).await;
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("malformed batch"));
    let (st, text) = post(
        c,
        s,
        wire::TRANSFER_PATH,
        "nope",
        batch(&[(m3, m3.hash)]),
        &[],
    )
    .await;
    assert_eq!(st, 400);
    assert!(text.contains("drain-run"), "{text}");
}

#[test]
fn a_message_that_comes_back_in_a_later_run_is_stored_again() {
    // A->B in run 1, then B drains it away (B->A), then A->B again in run 3: B must store it.
    let tmp = TempDir::new("return");
    let s = Server::start(&tmp, "b", ServeConfig::on("127.0.0.2"));
    let c = client(&s, "127.0.0.1");
    let m = message(QueueKind::BounceLite, 2, b"boomerang");
    let body = batch(&[(&m, m.hash)]);
    rt().block_on(async {
        let (_, text) = post(&c, &s, wire::TRANSFER_PATH, RUN, body.clone(), &[]).await;
        assert!(text.contains("\"stored\""), "{text}");
        // B's copy leaves B (as its own drain would remove it).
        let path = s
            .data_dir
            .join(format!("spool/bounce-lite/{}.msg", m.header.id));
        std::fs::remove_file(&path).unwrap();
        let run3 = "33333333333333333333333333333333";
        let (_, text) = post(&c, &s, wire::TRANSFER_PATH, run3, body.clone(), &[]).await;
        assert!(
            text.contains("\"stored\""),
            "stored again in a new run: {text}"
        );
        assert!(path.is_file());
        // Within run 1, a late retry is still recognised.
        std::fs::remove_file(&path).unwrap();
        let (_, text) = post(&c, &s, wire::TRANSFER_PATH, RUN, body, &[]).await;
        assert!(text.contains("already_held"), "{text}");
    });
}

#[test]
fn forwarded_for_is_honoured_only_from_trusted_proxies() {
    let tmp = TempDir::new("xff");
    let mut cfg = ServeConfig::on("127.0.0.2");
    cfg.accept = "127.0.0.20/32";
    cfg.trusted_proxies = Some("127.0.0.9");
    let s = Server::start(&tmp, "a", cfg);
    let m = message(QueueKind::BounceLite, 2, b"via proxy");
    let body = batch(&[(&m, m.hash)]);
    rt().block_on(async {
        let proxy = client(&s, "127.0.0.9");
        let other = client(&s, "127.0.0.7");
        // The trusted proxy forwards for an allowed client: accepted.
        let (st, text) = post(
            &proxy,
            &s,
            wire::TRANSFER_PATH,
            RUN,
            body.clone(),
            &[("x-forwarded-for", "127.0.0.20")],
        )
        .await;
        assert_eq!(st, 200, "{text}");
        // The same header from a peer that is not a trusted proxy is ignored: refused.
        let (st, _) = post(
            &other,
            &s,
            wire::TRANSFER_PATH,
            RUN,
            body.clone(),
            &[("x-forwarded-for", "127.0.0.20")],
        )
        .await;
        assert_eq!(st, 403);
        // The trusted proxy forwarding for a client that is not allowed: refused.
        let (st, text) = post(
            &proxy,
            &s,
            wire::TRANSFER_PATH,
            RUN,
            body.clone(),
            &[("x-forwarded-for", "127.0.0.21")],
        )
        .await;
        assert_eq!(st, 403);
        assert!(text.contains("127.0.0.21"), "{text}");
        // Client-IP works the same way.
        let (st, _) = post(
            &proxy,
            &s,
            wire::TRANSFER_PATH,
            RUN,
            body.clone(),
            &[("client-ip", "127.0.0.20")],
        )
        .await;
        assert_eq!(st, 200);
        // The proxy itself is not allowed to drain.
        let (st, _) = post(&proxy, &s, wire::TRANSFER_PATH, RUN, body, &[]).await;
        assert_eq!(st, 403);
    });
    let log = s.log();
    assert!(
        log.contains("127.0.0.7") && log.contains("127.0.0.21"),
        "refusals are logged: {log}"
    );
}

/// Whether the server answers that it holds `m` for `run`.
async fn held(c: &reqwest::Client, s: &Server, run: &str, m: &Message) -> bool {
    let q = serde_json::to_vec(&wire::QueryRequest {
        messages: vec![wire::QueryItem {
            id: m.header.id,
            hash: m.hash,
        }],
    })
    .unwrap();
    let (st, text) = post(c, s, wire::QUERY_PATH, run, q, &[]).await;
    assert_eq!(st, 200, "{text}");
    !serde_json::from_str::<QueryResponse>(&text)
        .unwrap()
        .held
        .is_empty()
}

#[test]
fn dedupe_keys_go_when_the_run_finishes_or_expire() {
    let tmp = TempDir::new("forget");
    let mut s = Server::start(&tmp, "a", ServeConfig::on("127.0.0.2"));
    let c = client(&s, "127.0.0.1");
    let (m1, m2) = (
        message(QueueKind::BounceLite, 2, b"one"),
        message(QueueKind::BounceLite, 2, b"two"),
    );
    let item = |m: &Message| wire::QueryItem {
        id: m.header.id,
        hash: m.hash,
    };
    let path = |s: &Server, m: &Message| {
        s.data_dir
            .join(format!("spool/bounce-lite/{}.msg", m.header.id))
    };
    let run2 = "44444444444444444444444444444444";
    let runtime = rt();
    runtime.block_on(async {
        for (run, m) in [(RUN, &m1), (run2, &m2)] {
            let (_, text) =
                post(&c, &s, wire::TRANSFER_PATH, run, batch(&[(m, m.hash)]), &[]).await;
            assert!(text.contains("\"stored\""), "{text}");
            // The copy moves on (as this instance's own drain would do).
            std::fs::remove_file(path(&s, m)).unwrap();
            assert!(held(&c, &s, run, m).await, "held by its dedupe key");
        }
        // The sender says run 1 finished: its keys go, run 2's stay.
        let (st, text) = post(&c, &s, wire::FINISH_PATH, RUN, Vec::new(), &[]).await;
        assert_eq!(st, 200, "{text}");
        assert!(!held(&c, &s, RUN, &m1).await, "forgotten after /v1/finish");
        assert!(held(&c, &s, run2, &m2).await);
    });
    // Keys older than --dedupe-retention expire (checked at start, then hourly).
    drop(runtime);
    s.kill();
    let mut cfg = ServeConfig::on("127.0.0.2");
    cfg.extra = vec!["--dedupe-retention".into(), "1ms".into()];
    let s2 = Server::spawn(
        s.data_dir.clone(),
        s.cert.clone(),
        s.key.clone(),
        &cfg,
        tmp.path().join("a2.log"),
    );
    let c2 = client(&s2, "127.0.0.1");
    rt().block_on(async {
        let q = serde_json::to_vec(&wire::QueryRequest {
            messages: vec![item(&m2)],
        })
        .unwrap();
        // Expired keys are dropped before the server takes its first request.
        let (st, text) = post(&c2, &s2, wire::QUERY_PATH, run2, q, &[]).await;
        assert_eq!(st, 200, "{text}");
        let held = serde_json::from_str::<QueryResponse>(&text).unwrap().held;
        assert!(held.is_empty(), "the expired key is gone: {text}");
    });
}
