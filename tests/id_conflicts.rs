//! One message id, one file, one `stored`: a receiver never acknowledges two different
//! messages with the same id, whether they come from four senders at the same moment, twice in
//! one request, or in two queues. A sender told `stored` deletes its copy, so a second
//! `stored` for an id would lose a message.

mod common;

use common::*;
use drain::base::{MessageId, QueueKind};
use drain::spool::Message;
use drain::wire::{self, Outcome, QueryItem, QueryRequest, QueryResponse, RejectCode};

fn client(server: &Server) -> reqwest::Client {
    https_client(&server.cert, "127.0.0.1")
}

/// A message with a chosen id.
fn with_id(id: MessageId, queue: QueueKind, body: &[u8]) -> Message {
    let m = message(queue, 0, body);
    let mut h = m.header.clone();
    h.id = id;
    let bytes = drain::spool::format::encode(&h, body).unwrap();
    Message::from_bytes(bytes.into()).unwrap()
}

fn token(n: u8) -> String {
    format!("{n:02x}").repeat(16)
}

async fn transfer(
    c: &reqwest::Client,
    addr: std::net::SocketAddr,
    who: u8,
    frames: Vec<&Message>,
) -> wire::TransferResponse {
    let body = batch(&frames.iter().map(|m| (*m, m.hash)).collect::<Vec<_>>());
    let r = c
        .post(format!("https://{addr}{}", wire::TRANSFER_PATH))
        .header(wire::HDR_SENDER, token(who))
        .header(wire::HDR_RUN, token(who + 100))
        .header("content-type", wire::BATCH_CONTENT_TYPE)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

async fn held(c: &reqwest::Client, s: &Server, who: u8, m: &Message) -> bool {
    let q = QueryRequest {
        messages: vec![QueryItem {
            id: m.header.id,
            hash: m.hash,
        }],
    };
    let r = c
        .post(format!("https://{}{}", s.addr, wire::QUERY_PATH))
        .header(wire::HDR_SENDER, token(who))
        .header(wire::HDR_RUN, token(who + 100))
        .json(&q)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let q: QueryResponse = r.json().await.unwrap();
    q.held.contains(&m.hash)
}

fn outcomes(results: &[wire::ItemResult]) -> Vec<(Outcome, Option<RejectCode>)> {
    results.iter().map(|r| (r.outcome, r.code)).collect()
}

/// The receiver's spool: (id, hash) of every file.
fn on_disk(s: &Server) -> Vec<(String, String)> {
    s.ls().into_iter().map(|e| (e.id, e.hash)).collect()
}

#[test]
fn four_senders_one_id_at_once_exactly_one_is_stored() {
    let tmp = TempDir::new("idrace");
    let s = Server::start(&tmp, "a", ServeConfig::on("127.0.0.93"));
    let c = client(&s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    for round in 0..5u8 {
        let id = MessageId([round + 1; 16]);
        let msgs: Vec<Message> = (0..4u8)
            .map(|i| with_id(id, QueueKind::Queue, format!("body {i}").as_bytes()))
            .collect();
        // One task per sender, all started before any is awaited: they race for the id.
        let answers = rt.block_on(async {
            let tasks: Vec<_> = msgs
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let (c, addr, m) = (c.clone(), s.addr, m.clone());
                    tokio::spawn(
                        async move { transfer(&c, addr, i as u8 + 4 * round, vec![&m]).await },
                    )
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        let stored: Vec<usize> = (0..4)
            .filter(|&i| answers[i].results[0].outcome == Outcome::Stored)
            .collect();
        assert_eq!(stored.len(), 1, "round {round}: {answers:?}");
        for (i, a) in answers.iter().enumerate() {
            if i != stored[0] {
                assert_eq!(
                    outcomes(&a.results),
                    [(Outcome::RejectedPermanent, Some(RejectCode::IdConflict))],
                    "round {round}, sender {i}"
                );
            }
            let is_held = rt.block_on(held(&c, &s, i as u8 + 4 * round, &msgs[i]));
            assert_eq!(
                is_held,
                i == stored[0],
                "round {round}: query of sender {i}"
            );
        }
        let files: Vec<_> = on_disk(&s)
            .into_iter()
            .filter(|(i, _)| *i == id.to_string())
            .collect();
        assert_eq!(
            files,
            [(id.to_string(), msgs[stored[0]].hash.to_string())],
            "round {round}"
        );
    }
}

#[test]
fn one_id_twice_in_a_request_or_in_two_queues_is_stored_once() {
    let tmp = TempDir::new("idbatch");
    let s = Server::start(&tmp, "a", ServeConfig::on("127.0.0.94"));
    let c = client(&s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = MessageId([0xa1; 16]);
    let (a1, a2) = (
        with_id(a, QueueKind::Queue, b"one"),
        with_id(a, QueueKind::Queue, b"two"),
    );
    let b = MessageId([0xb1; 16]);
    let (b1, b2) = (
        with_id(b, QueueKind::Queue, b"same"),
        with_id(b, QueueKind::BounceFull, b"same"),
    );
    assert_ne!(b1.hash, b2.hash, "the queue is part of the file");
    let r = rt.block_on(transfer(&c, s.addr, 1, vec![&a1, &a2, &b1, &b2, &a1]));
    let conflict = (Outcome::RejectedPermanent, Some(RejectCode::IdConflict));
    assert_eq!(
        outcomes(&r.results),
        [
            (Outcome::Stored, None),
            conflict,
            (Outcome::Stored, None),
            conflict,
            (Outcome::AlreadyHeld, None),
        ]
    );
    let mut files = on_disk(&s);
    files.sort();
    let mut want = vec![
        (a.to_string(), a1.hash.to_string()),
        (b.to_string(), b1.hash.to_string()),
    ];
    want.sort();
    assert_eq!(files, want);
    assert!(!rt.block_on(held(&c, &s, 1, &a2)));
    assert!(rt.block_on(held(&c, &s, 1, &a1)));
}

/// The sender's side (issue 9, point 2): two valid files with one id in two queue directories.
/// One travels, the other is reported as an id conflict naming both paths (exit 11) and stays
/// in the spool; the drain never says "drained" while a file is left.
#[test]
fn a_sender_with_one_id_in_two_queues_sends_one_and_reports_the_other() {
    let tmp = TempDir::new("sender-id-conflict");
    let server = Server::start(&tmp, "dest", ServeConfig::on("127.0.0.71"));
    let src = tmp.sub("src");
    let others = fill(&src, 6);
    let spool = drain::spool::Spool::open(&src).unwrap();
    let id = MessageId::random().unwrap();
    let a = with_id(id, QueueKind::Queue, b"first body");
    let b = with_id(id, QueueKind::BounceLite, b"second body");
    spool.store_many(&[a.clone(), b.clone()]).unwrap();
    let pa = spool.path_of(QueueKind::Queue, id);
    let pb = spool.path_of(QueueKind::BounceLite, id);

    let ca = ca_bundle(&tmp, &[&server]);
    let o = drain(
        &src,
        &["--json", "--ca-cert", ca.to_str().unwrap(), &server.dest()],
    );
    assert_eq!(code(&o), 11, "{}", show(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let unreadable = report["unreadable"].as_array().unwrap();
    assert_eq!(unreadable.len(), 1, "{report:#}");
    let (pa, pb) = (pa.display().to_string(), pb.display().to_string());
    let what = unreadable[0]["what"].as_str().unwrap();
    let reason = unreadable[0]["reason"].as_str().unwrap();
    let other = if what == pa { &pb } else { &pa };
    assert!([&pa, &pb].contains(&&what.to_string()), "{what}");
    assert!(
        reason.contains(other.as_str()) && reason.contains("one id"),
        "{reason}"
    );
    assert!(!reason.contains(what), "the path is not repeated: {reason}");

    // Exactly one of the two is on the destination, the other (the one named) still here.
    let all = census(&[&server]);
    let left = spool_ls(&src);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].id, id.to_string());
    let kept_hash = &left[0].hash;
    let sent_hash = &all[&id.to_string()].1.hash;
    assert_ne!(kept_hash, sent_hash);
    let hashes = [a.hash.to_string(), b.hash.to_string()];
    assert!(hashes.contains(kept_hash) && hashes.contains(sent_hash));
    for (oid, (_, h)) in &others {
        assert_eq!(&all[oid].1.hash, h);
    }
    assert_eq!(all.len(), others.len() + 1);
}
