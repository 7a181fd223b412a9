//! What the operator is told about events: pending events in the drain report and in
//! `drain inspect` (never a silent exit 0), an endpoint's permanent refusal (4xx) kept in the
//! dead-letter directory and named, and a slow endpoint that does not hold up the others.

mod common;

use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn events_left_pending_are_in_the_report_and_in_inspect() {
    let tmp = TempDir::new("evtold");
    let dest = Server::start(&tmp, "dest", ServeConfig::on("127.0.0.161"));
    let ca = ca_bundle(&tmp, &[&dest]).display().to_string();
    let src = tmp.sub("src");
    // Recorded by `spool add` while no serve runs: nothing delivers them.
    spool_add(&src, "queue", 0, None, b"one\r\n");
    spool_add(&src, "queue", 0, None, b"two\r\n");
    let events_dir = src.join("events").display().to_string();
    let o = drain(
        &src,
        &[
            "--ca-cert",
            &ca,
            "--no-wait-on-events",
            "--json",
            &dest.dest(),
        ],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        report["events"],
        serde_json::json!({"dir": events_dir, "pending": 2, "dead_letter": 0})
    );
    let doc = inspect_json(&src, &[]);
    assert_eq!(
        doc["events"],
        serde_json::json!({"dir": events_dir, "pending": 2,
            "dead_letter": {"count": 0, "truncated": 0, "items": []}})
    );
    let o = drain(&src, &["inspect"]);
    let text = String::from_utf8_lossy(&o.stdout);
    let want = format!(
        "\nevents ({events_dir}): 2 pending (not delivered to every endpoint), 0 in the \
         dead-letter directory\n"
    );
    assert!(text.ends_with(&want), "{text}");

    // The text report says it too.
    spool_add(&src, "queue", 0, None, b"three\r\n");
    let o = drain(
        &src,
        &["--ca-cert", &ca, "--no-wait-on-events", &dest.dest()],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    let want = format!(
        "  3 events are still pending in {events_dir}, not delivered to every endpoint: `drain \
         serve` with --event-endpoint delivers them; retiring this instance now loses them\n"
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&want),
        "{}",
        show(&o)
    );
}

/// The serve's metrics (a plain `GET /metrics`).
fn metrics(s: &Server) -> String {
    use std::io::{Read, Write};
    let addr = std::fs::read_to_string(s.data_dir.join("metrics.addr")).unwrap();
    let mut c = std::net::TcpStream::connect(addr.trim()).unwrap();
    write!(
        c,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

/// An endpoint that accepts connections and never answers.
fn silent_endpoint(ip: &str) -> (TcpListener, String) {
    let l = TcpListener::bind(format!("{ip}:0")).unwrap();
    let url = format!("http://{}/events", l.local_addr().unwrap());
    (l, url)
}

#[test]
fn a_refusing_endpoint_dead_letters_and_a_slow_one_holds_up_nobody() {
    let tmp = TempDir::new("evdead");
    let good = EventSink::start("127.0.0.164");
    let refusing = EventSink::start("127.0.0.165");
    refusing.status.store(400, Ordering::SeqCst);
    let (_silent, slow_url) = silent_endpoint("127.0.0.166");
    let mut cfg = ServeConfig::on("127.0.0.167");
    for url in [&good.url, &refusing.url, &slow_url] {
        cfg.extra
            .extend(["--event-endpoint".to_string(), url.clone()]);
    }
    cfg.extra
        .extend(["--event-timeout".to_string(), "30s".to_string()]);
    cfg.extra
        .extend(["--metrics-listen".to_string(), "127.0.0.167:0".to_string()]);
    let serve = Server::start(&tmp, "serve", cfg);
    let started = Instant::now();
    let ids = [
        spool_add(&serve.data_dir, "queue", 0, None, b"a\r\n"),
        spool_add(&serve.data_dir, "queue", 0, None, b"b\r\n"),
    ];
    // The good endpoint gets both long before the slow one's 30 s timeout.
    while good.ids().len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the slow endpoint held up the good one:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let dead = serve.data_dir.join("events").join("dead-letter");
    // The two events may reach the refusing endpoint in one batch or in two: count the lines.
    let refused_in_log = |log: &str| -> u64 {
        log.lines()
            .filter(|l| l.contains("events for good (HTTP 400)"))
            .filter_map(|l| {
                l.split(" refused ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while refused_in_log(&serve.log()) < 2 {
        assert!(Instant::now() < deadline, "{}", serve.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = serve.log();
    let want = format!(
        " events for good (HTTP 400); they are kept in {} and not sent to it again",
        dead.display()
    );
    assert!(
        log.contains(&format!("{} refused ", refusing.url)) && log.contains(&want),
        "{log}"
    );
    let scraped = metrics(&serve);
    assert!(
        scraped.contains("\ndrain_event_permanent_failures_total 2\n"),
        "{scraped}"
    );
    let doc = inspect_json(&serve.data_dir, &[]);
    let ev = &doc["events"];
    assert_eq!(
        ev["pending"], 2,
        "the slow endpoint has not taken them: {ev}"
    );
    assert_eq!(ev["dead_letter"]["count"], 2, "{ev}");
    for item in ev["dead_letter"]["items"].as_array().unwrap() {
        let notes = item["notes"].as_array().unwrap();
        assert_eq!(notes.len(), 1, "{item}");
        assert_eq!(notes[0]["endpoint"], refusing.url.as_str());
        assert_eq!(notes[0]["reason"], "HTTP 400");
        let id = item["id"].as_str().unwrap();
        assert!(dead.join(format!("{id}.json")).is_file());
    }
    let mut got: Vec<String> = good
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|e| e["message_id"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut want = ids.to_vec();
    want.sort();
    assert_eq!(got, want);
}
