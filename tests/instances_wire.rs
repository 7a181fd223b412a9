//! The wire rules that keep exactly-once behind a load balancer, on one real `drain serve`:
//! a request naming another instance (`Drain-Target-Instance`) is answered `421` `misdirected`
//! and stores nothing, every answer names its instance (`Drain-Instance`), and a misdirected
//! transfer that allows parking (`Drain-Park`) is parked, invisible, until a commit naming
//! this instance stores it; a query drops what it asks about, so no commit can store a message
//! after a "not held" answer.

mod common;

use common::ask::{ask, instance_of};
use common::*;
use drain::base::QueueKind;
use drain::wire::{self, RejectCode, TransferResponse};

/// A request naming another instance gets `421` `misdirected` (transfer, query, finish)
/// and stores nothing; the same request naming this instance, or none, is served; every
/// answer names the instance.
#[test]
fn a_request_for_another_instance_is_misdirected_and_stores_nothing() {
    let tmp = TempDir::new("lb-421");
    let s = Server::start(&tmp, "a", ServeConfig::on("127.0.0.57"));
    let me = instance_of(&s);
    let other = "ffffffffffffffffffffffffffffffff";
    let m = message(QueueKind::Queue, 1, b"to one instance only");
    let body = batch(&[(&m, m.hash)]);
    let query = serde_json::to_vec(&serde_json::json!({"messages": [{"id": m.header.id.to_string(), "hash": m.hash.to_string()}]})).unwrap();

    let (st, inst, text) = ask(
        &s,
        wire::TRANSFER_PATH,
        wire::BATCH_CONTENT_TYPE,
        body.clone(),
        &[(wire::HDR_TARGET_INSTANCE, other)],
    );
    assert_eq!(
        (st, reject_code(&text)),
        (421, Some(RejectCode::Misdirected)),
        "{text}"
    );
    assert_eq!(inst.as_deref(), Some(me.as_str()));
    assert!(s.ls().is_empty(), "a misdirected transfer stores nothing");
    let (st, inst, text) = ask(
        &s,
        wire::QUERY_PATH,
        wire::QUERY_CONTENT_TYPE,
        query.clone(),
        &[(wire::HDR_TARGET_INSTANCE, other)],
    );
    assert_eq!(
        (st, reject_code(&text), inst.as_deref()),
        (421, Some(RejectCode::Misdirected), Some(me.as_str())),
        "{text}"
    );
    let (st, _, text) = ask(
        &s,
        wire::FINISH_PATH,
        "application/json",
        Vec::new(),
        &[(wire::HDR_TARGET_INSTANCE, other)],
    );
    assert_eq!(
        (st, reject_code(&text)),
        (421, Some(RejectCode::Misdirected)),
        "{text}"
    );

    // Named right (any case), it is stored; without a target, as before.
    let (st, inst, text) = ask(
        &s,
        wire::TRANSFER_PATH,
        wire::BATCH_CONTENT_TYPE,
        body,
        &[(wire::HDR_TARGET_INSTANCE, &me.to_ascii_uppercase())],
    );
    assert_eq!((st, inst.as_deref()), (200, Some(me.as_str())), "{text}");
    assert_eq!(s.ls().len(), 1);
    let (st, _, text) = ask(&s, wire::QUERY_PATH, wire::QUERY_CONTENT_TYPE, query, &[]);
    assert_eq!(st, 200, "{text}");
    assert!(text.contains(&m.hash.to_string()), "{text}");

    // Errors and health name the instance too.
    let (st, inst, _) = ask(&s, "/v1/nothing", "application/json", Vec::new(), &[]);
    assert_eq!((st, inst.as_deref()), (404, Some(me.as_str())));
    let o = std::process::Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "--cacert"])
        .arg(&s.cert)
        .arg(format!("https://{}{}", s.dest(), wire::HEALTH_PATH))
        .output()
        .expect("curl");
    let headers = String::from_utf8_lossy(&o.stdout).to_ascii_lowercase();
    assert!(
        headers.contains(&format!("drain-instance: {me}")),
        "{headers}"
    );
}

fn outcomes(text: &str) -> Vec<(wire::Outcome, Option<RejectCode>)> {
    let r: TransferResponse = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    r.results.iter().map(|r| (r.outcome, r.code)).collect()
}

/// Parking: a transfer for another instance that allows it is answered `parked` and stores
/// nothing; only a commit naming this instance stores it (once: a second commit is answered
/// `already_held`); a query drops what is parked, so a commit after it stores nothing; a
/// commit naming another instance is `421`; without `Drain-Park` the answer stays `421`.
#[test]
fn a_parked_transfer_is_stored_only_by_its_commit() {
    use wire::Outcome::{AlreadyHeld, Parked, RejectedPermanent, RejectedTransient, Stored};
    let tmp = TempDir::new("parking");
    let s = Server::start(&tmp, "a", ServeConfig::on("127.0.0.61"));
    let me = instance_of(&s);
    let other = "ffffffffffffffffffffffffffffffff";
    let m1 = message(QueueKind::Queue, 1, b"parked then committed");
    let m2 = message(QueueKind::Submission, 0, b"parked then asked about");
    let bad = message(QueueKind::Queue, 0, b"sent with the wrong hash");
    let body = batch(&[(&m1, m1.hash), (&m2, m2.hash), (&bad, m1.hash)]);
    let names = |ms: &[&drain::spool::Message]| {
        let items: Vec<_> = ms
            .iter()
            .map(|m| serde_json::json!({"id": m.header.id.to_string(), "hash": m.hash.to_string()}))
            .collect();
        serde_json::to_vec(&serde_json::json!({ "messages": items })).unwrap()
    };
    let park = [(wire::HDR_TARGET_INSTANCE, other), (wire::HDR_PARK, "1")];
    let here = [(wire::HDR_TARGET_INSTANCE, me.as_str())];
    let json = wire::QUERY_CONTENT_TYPE;

    let (st, inst, text) = ask(
        &s,
        wire::TRANSFER_PATH,
        wire::BATCH_CONTENT_TYPE,
        body,
        &park,
    );
    assert_eq!((st, inst.as_deref()), (200, Some(me.as_str())), "{text}");
    assert_eq!(
        outcomes(&text),
        [
            (Parked, None),
            (Parked, None),
            (RejectedPermanent, Some(RejectCode::HashMismatch))
        ]
    );
    assert!(s.ls().is_empty(), "parked messages are not in the spool");
    let (st, _, text) = ask(&s, wire::QUERY_PATH, json, names(&[&m1]), &here);
    assert_eq!(st, 200, "{text}");
    assert!(
        !text.contains(&m1.hash.to_string()),
        "parked is not held: {text}"
    );

    // The query dropped m1; m2 is still parked. A commit naming another instance: 421.
    let (st, _, text) = ask(
        &s,
        wire::COMMIT_PATH,
        json,
        names(&[&m1, &m2]),
        &[(wire::HDR_TARGET_INSTANCE, other)],
    );
    assert_eq!(
        (st, reject_code(&text)),
        (421, Some(RejectCode::Misdirected)),
        "{text}"
    );
    let (st, _, text) = ask(&s, wire::COMMIT_PATH, json, names(&[&m1, &m2]), &here);
    assert_eq!(st, 200, "{text}");
    assert_eq!(
        outcomes(&text),
        [
            (RejectedTransient, Some(RejectCode::NotParked)),
            (Stored, None)
        ]
    );
    assert_eq!(s.ls().len(), 1, "only the committed message is stored");
    let (st, _, text) = ask(&s, wire::COMMIT_PATH, json, names(&[&m2]), &here);
    assert_eq!(
        (st, outcomes(&text)),
        (200, vec![(AlreadyHeld, None)]),
        "{text}"
    );
    assert_eq!(s.ls().len(), 1, "a commit sent again stores nothing more");

    // Without Drain-Park a misdirected transfer is refused as before.
    let body = batch(&[(&m1, m1.hash)]);
    let target = [(wire::HDR_TARGET_INSTANCE, other)];
    let (st, _, text) = ask(
        &s,
        wire::TRANSFER_PATH,
        wire::BATCH_CONTENT_TYPE,
        body,
        &target,
    );
    assert_eq!(
        (st, reject_code(&text)),
        (421, Some(RejectCode::Misdirected)),
        "{text}"
    );

    // A finish drops what is parked for the run.
    let body = batch(&[(&m1, m1.hash)]);
    let (st, _, text) = ask(
        &s,
        wire::TRANSFER_PATH,
        wire::BATCH_CONTENT_TYPE,
        body,
        &park,
    );
    assert_eq!((st, outcomes(&text)), (200, vec![(Parked, None)]), "{text}");
    let (st, _, text) = ask(&s, wire::FINISH_PATH, json, Vec::new(), &here);
    assert_eq!(st, 200, "{text}");
    let (st, _, text) = ask(&s, wire::COMMIT_PATH, json, names(&[&m1]), &here);
    assert_eq!(
        (st, outcomes(&text)),
        (200, vec![(RejectedTransient, Some(RejectCode::NotParked))]),
        "{text}"
    );
    assert_eq!(s.ls().len(), 1);
}
