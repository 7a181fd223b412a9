//! End-to-end drains: real `drain serve` destinations with real TLS on loopback, the real
//! `drain` binary, and a census of exactly which message ended up where, with which hash.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::*;

/// Special bodies that must survive byte for byte.
fn special_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let mut big = Vec::with_capacity(10 << 20);
    let mut x = 1u32;
    while big.len() < 10 << 20 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        big.push((x >> 24) as u8);
    }
    vec![
        ("empty", Vec::new()),
        ("8bit", (0u8..=255).cycle().take(5000).collect()),
        ("bare-lf", b"Subject: x\n\nline one\nline two\n".to_vec()),
        (
            "crlf",
            b"Subject: x\r\n\r\nline one\r\nline two\r\n".to_vec(),
        ),
        (
            "no-final-newline",
            b"Subject: x\r\n\r\nno newline at the end".to_vec(),
        ),
        ("mixed", b"a\r\nb\nc\rd\r\n\r\n.\r\n..\r\n\x00\xff".to_vec()),
        ("10MiB", big),
    ]
}

#[test]
fn two_destinations_every_message_exactly_once_byte_identical() {
    let tmp = TempDir::new("two");
    let a = Server::start(&tmp, "a", ServeConfig::on("127.0.0.2"));
    let b = Server::start(&tmp, "b", ServeConfig::on("127.0.0.3"));
    let src = tmp.sub("src");
    let (special, before) = fill_special_and_bulk(&src);
    let ca = ca_bundle(&tmp, &[&a, &b]);
    drain_refused_for_pending_events_then_forced(&src, &ca, &a, &b, &before);
    check_each_message_once_unchanged(&a, &b, &src, &before);
    check_bodies_byte_for_byte(&a, &b, &special);
}

/// The special bodies (by id: name, body) and the source spool's listing.
type Special = BTreeMap<String, (&'static str, Vec<u8>)>;

/// Special messages through the real `spool add`, in every queue kind, with retry data, and
/// 1,000 bulk ones; returns the special ones and the listing of the source spool.
fn fill_special_and_bulk(src: &Path) -> (Special, Vec<LsEntry>) {
    let kinds = ["queue", "bounce-lite", "bounce-full", "submission"];
    let mut special = BTreeMap::new();
    for (i, (name, body)) in special_bodies().into_iter().enumerate() {
        let kind = kinds[i % 4];
        let retry = (i % 2 == 0).then_some("2030-05-06T07:08:09.123456789+02:00");
        let id = spool_add(src, kind, i as u32, retry, &body);
        special.insert(id, (name, body));
    }
    // Bulk: 1,000 messages of email sizes in every queue kind.
    fill(src, 1000);
    let before = spool_ls(src);
    assert_eq!(before.len(), 1007);
    assert_eq!(
        before
            .iter()
            .map(|e| e.queue.as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        4
    );
    let retry = before
        .iter()
        .find(|e| special.contains_key(&e.id) && e.next_retry_at.is_some())
        .expect("a special message with a retry time");
    assert_eq!(
        retry.next_retry_at.as_deref(),
        Some("2030-05-06T05:08:09.123456789Z")
    );
    (special, before)
}

/// `spool add` recorded events, and no `drain serve` runs here to deliver them: the drain
/// refuses with exit 10 and touches nothing, unless told not to wait for them.
fn drain_refused_for_pending_events_then_forced(
    src: &Path,
    ca: &Path,
    a: &Server,
    b: &Server,
    before: &[LsEntry],
) {
    let o = drain(
        src,
        &["--ca-cert", ca.to_str().unwrap(), &a.dest(), &b.dest()],
    );
    assert_eq!(code(&o), 10, "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("7 events are pending"),
        "{}",
        show(&o)
    );
    assert_eq!(spool_ls(src), before);
    // ...unless told not to wait for them.
    let o = drain(
        src,
        &[
            "--ca-cert",
            ca.to_str().unwrap(),
            "--no-wait-on-events",
            &a.dest(),
            &b.dest(),
        ],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
}

/// Census: each original on exactly one destination with the same id, hash, queue,
/// attempts and next retry time; nothing left at the source.
fn check_each_message_once_unchanged(a: &Server, b: &Server, src: &Path, before: &[LsEntry]) {
    let all = census(&[a, b]);
    assert_eq!(all.len(), before.len());
    for e in before {
        let (_, got) = all.get(&e.id).unwrap_or_else(|| panic!("{} lost", e.id));
        assert_eq!(got, e, "message {} changed in transit", e.id);
    }
    assert!(spool_ls(src).is_empty(), "source spool not empty");
    let per: Vec<usize> = (0..2)
        .map(|i| all.values().filter(|(d, _)| *d == i).count())
        .collect();
    assert!(per.iter().all(|&n| n > 400), "split {per:?}");
}

/// Bodies come back byte for byte.
fn check_bodies_byte_for_byte(a: &Server, b: &Server, special: &Special) {
    for (id, (name, body)) in special {
        let holder = if a.ls().iter().any(|e| &e.id == id) {
            a
        } else {
            b
        };
        let o = drain(&holder.data_dir, &["spool", "cat", id]);
        assert_eq!(code(&o), 0, "{}", show(&o));
        assert!(o.stdout == *body, "body of {name} differs");
    }
}

#[test]
fn three_destinations_split_evenly() {
    let tmp = TempDir::new("three");
    let servers: Vec<Server> = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        .iter()
        .enumerate()
        .map(|(i, ip)| Server::start(&tmp, &format!("d{i}"), ServeConfig::on(ip)))
        .collect();
    let src = tmp.sub("src");
    fill(&src, 900);
    let refs: Vec<&Server> = servers.iter().collect();
    let ca = ca_bundle(&tmp, &refs);
    let batch = 5;
    let mut args = vec![
        "--ca-cert".to_string(),
        ca.display().to_string(),
        "--concurrency".into(),
        "15".into(),
        "--batch-size".into(),
        batch.to_string(),
    ];
    args.extend(servers.iter().map(|s| s.dest()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = drain(&src, &args);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let all = census(&refs);
    assert_eq!(all.len(), 900);
    let per: Vec<usize> = (0..3)
        .map(|i| all.values().filter(|(d, _)| *d == i).count())
        .collect();
    let (min, max) = (per.iter().min().unwrap(), per.iter().max().unwrap());
    // Requests go round-robin, but a request carries what has been read when a worker is free:
    // up to `batch` messages, fewer while the scan is behind (seen on a loaded machine:
    // [304, 300, 296]). So the split is even within a few batches, not within one.
    assert!(
        max - min <= 3 * batch,
        "uneven split {per:?} (batch {batch})"
    );
}

#[test]
fn unreachable_destination_fails_over_to_the_others() {
    let tmp = TempDir::new("down");
    let a = Server::start(&tmp, "a", ServeConfig::on("127.0.0.2"));
    let b = Server::start(&tmp, "b", ServeConfig::on("127.0.0.3"));
    let dead = format!("127.0.0.6:{}", closed_port("127.0.0.6"));
    let src = tmp.sub("src");
    let originals = fill(&src, 300);
    let ca = ca_bundle(&tmp, &[&a, &b]);
    let o = drain(
        &src,
        &[
            "--ca-cert",
            ca.to_str().unwrap(),
            &dead,
            &a.dest(),
            &b.dest(),
            "--json",
        ],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    let all = census(&[&a, &b]);
    assert_eq!(
        all.keys().cloned().collect::<Vec<_>>(),
        originals.keys().cloned().collect::<Vec<_>>()
    );
    for (id, (q, h)) in &originals {
        assert_eq!((&all[id].1.queue, &all[id].1.hash), (q, h));
    }
    assert!(spool_ls(&src).is_empty());
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    assert!(report["delivered"].get(dead.as_str()).is_none());
    let failures = report["failures"].as_object().expect("failures");
    assert!(
        failures.keys().any(|k| k.starts_with(&dead)),
        "the dead destination's failures are reported: {failures:?}"
    );
}

#[test]
fn refused_source_address_gets_403_exit_12_and_keeps_everything() {
    let tmp = TempDir::new("403");
    let mut cfg = ServeConfig::on("127.0.0.2");
    cfg.accept = "127.0.0.2/32";
    let a = Server::start(&tmp, "a", cfg);
    let src = tmp.sub("src");
    fill(&src, 20);
    let before = spool_ls(&src);
    let ca = ca_bundle(&tmp, &[&a]);
    let o = drain(
        &src,
        &[
            "--ca-cert",
            ca.to_str().unwrap(),
            "--bind-ip",
            "127.0.0.5",
            &a.dest(),
        ],
    );
    assert_eq!(code(&o), 12, "{}", show(&o));
    assert_eq!(spool_ls(&src), before, "nothing may be removed locally");
    assert!(a.ls().is_empty());
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("403"), "report names the refusal: {stdout}");
    assert!(
        a.log().contains("127.0.0.5"),
        "the destination logs the refused address: {}",
        a.log()
    );
}

#[test]
fn corrupt_and_unreadable_files_exit_11_and_stay() {
    let tmp = TempDir::new("corrupt");
    let a = Server::start(&tmp, "a", ServeConfig::on("127.0.0.2"));
    let src = tmp.sub("src");
    let originals = fill(&src, 50);
    // A corrupt file: a valid name, garbage inside.
    let corrupt = src.join("spool/queue/0123456789abcdef0123456789abcdef.msg");
    std::fs::write(&corrupt, b"this is not a spool file").unwrap();
    // An unreadable one (the tests run as root, so a directory stands in for a file that
    // cannot be read).
    let unreadable = src.join("spool/submission/fedcba9876543210fedcba9876543210.msg");
    std::fs::create_dir_all(&unreadable).unwrap();
    let ca = ca_bundle(&tmp, &[&a]);
    let o = drain(&src, &["--ca-cert", ca.to_str().unwrap(), &a.dest()]);
    assert_eq!(code(&o), 11, "{}", show(&o));
    assert!(
        corrupt.is_file() && unreadable.is_dir(),
        "both stay in place"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&corrupt.display().to_string()), "{out}");
    assert!(out.contains(&unreadable.display().to_string()), "{out}");
    let got: BTreeSet<String> = a.ls().into_iter().map(|e| e.id).collect();
    assert_eq!(got, originals.keys().cloned().collect());
}
