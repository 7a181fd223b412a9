//! The instance lifecycle around a drain: a running `drain serve` is told to stop taking
//! messages, its events are delivered first (or not, when told), it is stopped and its lock
//! taken; 503 from a draining destination; two hops; the fallback path; `spool ls --due`.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

fn wait_for_log(s: &Server, needles: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !needles.iter().all(|n| s.log().contains(n)) {
        assert!(
            Instant::now() < deadline,
            "log never showed {needles:?}:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn add_some(dir: &Path, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            spool_add(
                dir,
                ["queue", "submission"][i % 2],
                0,
                None,
                format!("body {i}\r\n").as_bytes(),
            )
        })
        .collect()
}

/// A source instance running `drain serve` with an event endpoint that fails (500) until told
/// otherwise, `n` messages added through `spool add` (so `n` events pending), and a
/// destination. Addresses: 127.0.0.`base` (endpoint), `base+1` (destination), `base+2` (source).
struct EventScene {
    sink: EventSink,
    dest: Server,
    src_dir: std::path::PathBuf,
    src: Server,
    ca: String,
    ids: Vec<String>,
}

impl EventScene {
    fn start(tmp: &TempDir, base: u8, n: usize, serve_extra: &[&str]) -> EventScene {
        let ip = |k: u8| format!("127.0.0.{}", base + k);
        let sink = EventSink::start(&ip(0));
        sink.status.store(500, Ordering::SeqCst);
        let dest = Server::start(tmp, "dest", ServeConfig::on(&ip(1)));
        let src_dir = tmp.sub("src");
        let ids = add_some(&src_dir, n);
        let src_ip = ip(2);
        let mut cfg = ServeConfig::on(&src_ip);
        cfg.extra = vec!["--event-endpoint".into(), sink.url.clone()];
        cfg.extra.extend(serve_extra.iter().map(|a| a.to_string()));
        let src = Server::start(tmp, "src", cfg);
        let ca = ca_bundle(tmp, &[&dest]).display().to_string();
        EventScene {
            sink,
            dest,
            src_dir,
            src,
            ca,
            ids,
        }
    }
}

#[test]
fn events_are_delivered_exactly_once_before_the_spool_moves() {
    let tmp = TempDir::new("events");
    let EventScene {
        sink,
        dest,
        src_dir,
        mut src,
        ca,
        ids,
    } = EventScene::start(&tmp, 71, 5, &[]);

    let (child, _rx) = spawn_watched(&src_dir, &["--ca-cert", &ca, &dest.dest()]);
    // The drain has stopped intake and is waiting: the endpoint fails, nothing moves.
    wait_for_log(&src, &["intake now answers 503", "delivering 5 events"]);
    assert_eq!(spool_ls(&src_dir).len(), 5);
    assert!(
        dest.ls().is_empty(),
        "nothing moves while events are pending"
    );
    sink.status.store(200, Ordering::SeqCst);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let mut got = sink.ids();
    assert_eq!(got.len(), 5, "each event exactly once: {got:?}");
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 5);
    let received = sink.received.lock().unwrap().clone();
    let mut msg_ids: Vec<String> = received
        .iter()
        .map(|e| e["message_id"].as_str().unwrap().to_string())
        .collect();
    msg_ids.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(msg_ids, want);
    assert!(received.iter().all(|e| e["type"] == "message.spooled"));
    assert_eq!(pending_events(&src_dir), 0);
    assert!(spool_ls(&src_dir).is_empty());
    assert_eq!(dest.ls().len(), 5);
    // The drain stopped the source's serve.
    assert!(
        src.child.try_wait().unwrap().is_some(),
        "drain serve was stopped"
    );
}

#[test]
fn max_event_wait_expires_with_exit_10_and_touches_nothing() {
    let tmp = TempDir::new("evwait");
    let EventScene {
        dest,
        src_dir,
        mut src,
        ca,
        ..
    } = EventScene::start(&tmp, 74, 3, &[]);
    let before = spool_ls(&src_dir);
    let o = drain(
        &src_dir,
        &["--ca-cert", &ca, "--max-event-wait", "2s", &dest.dest()],
    );
    assert_eq!(code(&o), 10, "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("3 events still pending"),
        "{}",
        show(&o)
    );
    assert_eq!(spool_ls(&src_dir), before, "spool untouched");
    assert_eq!(pending_events(&src_dir), 3, "events untouched");
    assert!(dest.ls().is_empty());
    assert!(
        src.child.try_wait().unwrap().is_none(),
        "drain serve keeps running"
    );
    wait_for_log(&src, &["accepts messages again"]);
}

#[test]
fn no_wait_on_events_moves_the_spool_although_events_remain() {
    let tmp = TempDir::new("nowait");
    let EventScene {
        dest,
        src_dir,
        mut src,
        ca,
        ..
    } = EventScene::start(&tmp, 77, 3, &["--wait-after-drain"]);
    let o = drain(
        &src_dir,
        &["--ca-cert", &ca, "--no-wait-on-events", &dest.dest()],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(spool_ls(&src_dir).is_empty());
    assert_eq!(dest.ls().len(), 3);
    assert_eq!(pending_events(&src_dir), 3, "events remain");
    // --wait-after-drain: the stopped serve stays alive until signalled (a container's PID 1).
    assert!(src.child.try_wait().unwrap().is_none());
    signal(&src.child, libc::SIGTERM);
    assert_eq!(src.child.wait().unwrap().code(), Some(0));
}

#[test]
fn a_destination_that_is_draining_answers_503_and_is_skipped() {
    let tmp = TempDir::new("503");
    let busy = Server::start(&tmp, "busy", ServeConfig::on("127.0.0.81"));
    let ok = Server::start(&tmp, "ok", ServeConfig::on("127.0.0.82"));
    // Put `busy` into drain mode through its control socket, as a drain of it would.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Intake stays stopped for as long as this connection is open.
    let hold = rt
        .block_on(drain::control::begin_drain(
            &busy.data_dir,
            "a test",
            std::process::id(),
            std::time::Duration::from_secs(10),
        ))
        .unwrap()
        .unwrap();
    let a = &hold.answer;
    assert!(a.ok && !a.accepting);
    let src = tmp.sub("src");
    let originals = fill(&src, 60);
    let ca = ca_bundle(&tmp, &[&busy, &ok]);
    let o = drain(
        &src,
        &[
            "--ca-cert",
            ca.to_str().unwrap(),
            "--json",
            &busy.dest(),
            &ok.dest(),
        ],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(busy.ls().is_empty(), "a draining instance takes nothing");
    let got: Vec<String> = ok.ls().into_iter().map(|e| e.id).collect();
    assert_eq!(got.len(), originals.len());
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let failures = report["failures"].to_string();
    assert!(failures.contains("503"), "{failures}");
}

#[test]
fn two_hops_keep_every_queue_kind_attempts_and_retry_time() {
    let tmp = TempDir::new("hops");
    let a_dir = tmp.sub("a");
    let original = fill_every_kind_with_retry_data(&a_dir);
    check_spool_ls_due(&a_dir, &original);

    let mut b = Server::start(&tmp, "b", ServeConfig::on("127.0.0.83"));
    let c = Server::start(&tmp, "c", ServeConfig::on("127.0.0.84"));
    let ca = ca_bundle(&tmp, &[&b, &c]);
    let ca = ca.to_str().unwrap();
    let o = drain(&a_dir, &["--ca-cert", ca, "--no-wait-on-events", &b.dest()]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    // B recorded an event per message taken in and has no endpoint to deliver them.
    let o = drain(&b.data_dir, &["--ca-cert", ca, &c.dest()]);
    assert_eq!(code(&o), 10, "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no --event-endpoint"),
        "{}",
        show(&o)
    );
    let o = drain(
        &b.data_dir,
        &["--ca-cert", ca, "--no-wait-on-events", &c.dest()],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        b.child.try_wait().unwrap().is_some(),
        "B's serve was stopped for its drain"
    );
    let mut on_c = c.ls();
    let mut original = original;
    on_c.sort_by(|x, y| x.id.cmp(&y.id));
    original.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(on_c, original, "every field intact after two hops");
}

/// In every queue kind: a message never attempted, one to retry later and an overdue one; then
/// 100 bulk messages. Returns the listing of the spool.
fn fill_every_kind_with_retry_data(a_dir: &Path) -> Vec<LsEntry> {
    let kinds = ["queue", "bounce-lite", "bounce-full", "submission"];
    for (i, k) in kinds.iter().enumerate() {
        spool_add(a_dir, k, 0, None, b"never attempted\r\n");
        spool_add(
            a_dir,
            k,
            i as u32 + 1,
            Some("2031-02-03T04:05:06Z"),
            b"retry later\n",
        );
        spool_add(a_dir, k, 7, Some("2020-01-01T00:00:00.5+01:00"), b"overdue");
    }
    fill(a_dir, 100);
    spool_ls(a_dir)
}

/// `spool ls --due`: due now, in next-retry order (never attempted first).
fn check_spool_ls_due(a_dir: &Path, original: &[LsEntry]) {
    let o = drain(a_dir, &["spool", "ls", "--json", "--due"]);
    let due: Vec<LsEntry> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let now = drain::base::Timestamp::now();
    let want = original
        .iter()
        .filter(|e| {
            e.next_retry_at
                .as_deref()
                .is_none_or(|t| drain::base::Timestamp::parse(t).unwrap() <= now)
        })
        .count();
    assert_eq!(due.len(), want);
    assert!(
        due.iter()
            .all(|e| e.next_retry_at.as_deref() != Some("2031-02-03T04:05:06Z"))
    );
    let order: Vec<Option<String>> = due.iter().map(|e| e.next_retry_at.clone()).collect();
    let mut sorted = order.clone();
    sorted.sort_by_key(|t| {
        t.as_deref()
            .map(|s| drain::base::Timestamp::parse(s).unwrap())
    });
    assert_eq!(order, sorted);
}

#[test]
fn fallback_path_takes_the_rest_and_drains_later() {
    let tmp = TempDir::new("fallback");
    let port = closed_port("127.0.0.85");
    let src = tmp.sub("src");
    let originals = fill(&src, 80);
    let fb = tmp.path().join("fallback");
    let o = drain(
        &src,
        &[
            "--fallback-path",
            fb.to_str().unwrap(),
            "--automatic-fallback-after",
            "2s",
            "--json",
            &format!("127.0.0.85:{port}"),
        ],
    );
    assert_eq!(code(&o), 13, "{}", show(&o));
    assert!(spool_ls(&src).is_empty(), "the source is empty");
    let moved: Vec<LsEntry> = spool_ls(&fb);
    assert_eq!(moved.len(), originals.len());
    for e in &moved {
        assert_eq!(&originals[&e.id].1, &e.hash);
    }
    // Later, from anywhere: drain the fallback directory to a live destination.
    let live = Server::start(&tmp, "live", ServeConfig::on("127.0.0.86"));
    let ca = ca_bundle(&tmp, &[&live]);
    let o = drain(&fb, &["--ca-cert", ca.to_str().unwrap(), &live.dest()]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let all = census(&[&live]);
    assert_eq!(all.len(), originals.len());
    for (id, (_, hash)) in &originals {
        assert_eq!(&all[id].1.hash, hash);
    }
    assert!(spool_ls(&fb).is_empty());
}

#[test]
fn a_second_drain_or_serve_on_the_same_directory_is_refused_at_once() {
    let tmp = TempDir::new("second");
    let port = closed_port("127.0.0.87");
    let src = tmp.sub("src");
    fill(&src, 5);
    let dead = format!("127.0.0.87:{port}");
    let (first, rx) = spawn_watched(&src, &[&dead]);
    wait_line(&rx, "every destination failed");
    let started = Instant::now();
    let o = drain(&src, &[&dead]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("in use by") && err.contains(&format!("pid {}", first.id())),
        "names the holder: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused at once"
    );
    let o = try_serve(&tmp, &src, "127.0.0.88");
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in use by"),
        "{}",
        show(&o)
    );
    signal(&first, libc::SIGTERM);
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(42));
}
