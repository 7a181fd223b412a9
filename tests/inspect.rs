//! `drain inspect` against real drains: its counts match what moved, it lists the messages a
//! SIGKILL left in doubt (and none once `drain resume` settled them), it shows one message's
//! full history (failover included), and it reads the journal while a drain is running.
//! Loopback addresses 127.0.0.90 to 127.0.0.99.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn inspect(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["inspect"];
    all.extend_from_slice(args);
    drain(dir, &all)
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{v} is not a count"))
}

#[test]
fn counts_match_what_moved_to_each_destination_and_queue_kind() {
    let tmp = TempDir::new("inspect-counts");
    let a = Server::start(&tmp, "a", ServeConfig::on("127.0.0.90"));
    let b = Server::start(&tmp, "b", ServeConfig::on("127.0.0.91"));
    let src = tmp.sub("src");
    let originals = fill(&src, 120);
    let ca = ca_bundle(&tmp, &[&a, &b]);
    let o = drain(
        &src,
        &["--ca-cert", ca.to_str().unwrap(), &a.dest(), &b.dest()],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));

    let v = inspect_json(&src, &[]);
    assert_eq!(v["schema"], 1);
    assert_eq!(v["exists"], true);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["status"], "finished");
    assert_eq!(runs[0]["exit_code"], 0);
    let run = &v["run"];
    assert_eq!(run["seq"], 1);
    assert_eq!(n(&run["by_state"]["deleted"]["messages"]), 120);
    assert_eq!(n(&run["by_state"]["total"]["messages"]), 120);

    // By destination: exactly what each destination's spool holds.
    let mut size_of = BTreeMap::new();
    for s in [&a, &b] {
        let ls = s.ls();
        let d = &run["by_destination"][s.dest()];
        assert_eq!(n(&d["delivered"]["messages"]), ls.len() as u64, "{d}");
        assert_eq!(n(&d["deleted"]["messages"]), ls.len() as u64, "{d}");
        let bytes: u64 = ls.iter().map(|e| e.size).sum();
        assert_eq!(n(&d["delivered"]["bytes"]), bytes, "{d}");
        assert_eq!(n(&d["sent"]["messages"]), 0);
        size_of.extend(ls.into_iter().map(|e| (e.id, e.size)));
    }
    assert_eq!(size_of.len(), 120);
    // By queue kind: what `fill` put in each, with the sizes the destinations hold.
    let mut by_queue: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (id, (queue, _)) in &originals {
        let e = by_queue.entry(queue.clone()).or_default();
        e.0 += 1;
        e.1 += size_of[id];
    }
    let reported = run["by_queue"].as_object().unwrap();
    assert_eq!(reported.len(), by_queue.len(), "{reported:?}");
    for (queue, (messages, bytes)) in &by_queue {
        let q = &run["by_queue"][queue];
        assert_eq!(n(&q["delivered"]["messages"]), *messages, "{queue}: {q}");
        assert_eq!(n(&q["delivered"]["bytes"]), *bytes, "{queue}: {q}");
    }
    assert!(run["throughput"]["messages_per_sec"].as_f64().unwrap() > 0.0);
    let anomalies = &run["anomalies"];
    for list in [
        "in_doubt",
        "acked_not_removed",
        "possible_duplicates",
        "unreadable",
        "corrupt_records",
        "not_delivered",
    ] {
        assert_eq!(anomalies[list]["count"], 0, "{list}: {anomalies}");
    }

    let o = inspect(&src, &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("run #1"), "{text}");
    assert!(
        text.contains(&a.dest()) && text.contains(&b.dest()),
        "{text}"
    );
    assert!(text.contains("anomalies: none"), "{text}");
}

/// A destination that accepts connections and never answers: every request stays in flight.
struct Silent {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Silent {
    fn start(listener: TcpListener) -> Silent {
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => held.push(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            // The listener and every connection close here.
        });
        Silent {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn inspect_runs_beside_a_drain_and_lists_what_a_sigkill_left_in_doubt() {
    let tmp = TempDir::new("inspect-kill");
    let ip = "127.0.0.92";
    let (cert, key) = drain::tls::write_self_signed(&[ip.to_string()], tmp.path(), "d").unwrap();
    let listener = TcpListener::bind((ip, 0)).expect("bind");
    let port = listener.local_addr().unwrap().port();
    let dest = format!("{ip}:{port}");
    let mut silent = Silent::start(listener);
    let src = tmp.sub("src");
    let originals = fill(&src, 40);
    let (out, log) = (tmp.path().join("drain.out"), tmp.path().join("drain.log"));
    let mut child = spawn_logged(
        &src,
        &["--ca-cert", cert.to_str().unwrap(), &dest],
        &out,
        &log,
    );
    check_inspect_beside_the_running_drain(&tmp, &src, &mut child);
    let _ = child.kill();
    let _ = child.wait();
    check_in_doubt_listed_after_the_sigkill(&src, &dest, &originals);

    // The destination comes up for real on the recorded address; resume settles everything.
    silent.stop();
    let mut cfg = ServeConfig::on(ip);
    cfg.port = port;
    let server = Server::spawn(
        tmp.sub("d"),
        cert.clone(),
        key,
        &cfg,
        tmp.path().join("d.log"),
    );
    let o = drain(&src, &["--ca-cert", cert.to_str().unwrap(), "resume"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    check_resume_settled_everything(&src, &dest, &server, &originals);
}

/// While the drain runs (its requests hang), inspect opens the journal and sees them.
fn check_inspect_beside_the_running_drain(tmp: &TempDir, src: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let during = loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the drain ended early: {}",
            std::fs::read_to_string(tmp.path().join("drain.log")).unwrap_or_default()
        );
        if src.join("journal.redb").exists() {
            let v = inspect_json(src, &[]);
            if v["run"]["anomalies"]["in_doubt"]["count"].as_u64() > Some(0) {
                break v;
            }
        }
        assert!(Instant::now() < deadline, "nothing was ever in flight");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(during["run"]["status"], "running", "{during}");
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let o = inspect(src, &[]);
    assert_eq!(code(&o), 0, "text while running: {}", show(&o));
}

/// After the SIGKILL: the journal is unclean; inspect lists each message in doubt with the
/// destination it was sent to.
fn check_in_doubt_listed_after_the_sigkill(
    src: &Path,
    dest: &str,
    originals: &BTreeMap<String, (String, String)>,
) {
    let v = inspect_json(src, &[]);
    let run = &v["run"];
    assert_eq!(run["status"], "running");
    let in_doubt = &run["anomalies"]["in_doubt"];
    let count = n(&in_doubt["count"]);
    assert!(count > 0, "{v}");
    assert_eq!(count, n(&run["by_state"]["sent"]["messages"]));
    assert_eq!(n(&run["by_destination"][dest]["sent"]["messages"]), count);
    for item in in_doubt["items"].as_array().unwrap() {
        assert_eq!(item["dest"], dest, "{item}");
        assert!(
            originals.contains_key(item["id"].as_str().unwrap()),
            "{item}"
        );
    }
    let o = inspect(src, &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let first = in_doubt["items"][0]["id"].as_str().unwrap();
    assert!(
        text.contains(&format!("{first} -> {dest}")),
        "the text lists it with its destination: {text}"
    );
}

/// After the resume: finished, nothing in doubt, every message delivered to the destination.
fn check_resume_settled_everything(
    src: &Path,
    dest: &str,
    server: &Server,
    originals: &BTreeMap<String, (String, String)>,
) {
    let v = inspect_json(src, &[]);
    let run = &v["run"];
    assert_eq!(run["status"], "finished", "{v}");
    assert_eq!(run["resumed"], 1);
    assert_eq!(run["anomalies"]["in_doubt"]["count"], 0, "{v}");
    assert_eq!(n(&run["by_state"]["deleted"]["messages"]), 40);
    assert_eq!(
        n(&run["by_destination"][dest]["delivered"]["messages"]),
        server.ls().len() as u64
    );
    assert_eq!(census(&[server]).len(), originals.len());
}

#[test]
fn one_message_history_shows_every_transition_including_a_failover() {
    let tmp = TempDir::new("inspect-history");
    let b = Server::start(&tmp, "b", ServeConfig::on("127.0.0.94"));
    let dead = format!("127.0.0.93:{}", closed_port("127.0.0.93"));
    let src = tmp.sub("src");
    fill(&src, 30);
    let ca = ca_bundle(&tmp, &[&b]);
    let o = drain(&src, &["--ca-cert", ca.to_str().unwrap(), &dead, &b.dest()]);
    assert_eq!(code(&o), 0, "{}", show(&o));

    let v = inspect_json(&src, &[]);
    let failovers = v["run"]["anomalies"]["failovers"].as_array().unwrap();
    let group = failovers
        .iter()
        .find(|g| g["dest"] == dead.as_str())
        .unwrap_or_else(|| panic!("no failover from {dead}: {v}"));
    assert_eq!(group["kind"], "not_delivered");
    let failed_over: Vec<&str> = group["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(failed_over.len() as u64, n(&group["messages"]));

    // A message that failed over: read, sent to the dead one, not delivered, sent to b, acked,
    // deleted, in time order.
    let h = inspect_json(&src, &["--message", failed_over[0]]);
    assert_eq!(h["schema"], 1);
    assert_eq!(h["message"], failed_over[0]);
    let runs = h["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["seq"], 1);
    assert_eq!(runs[0]["state"], "deleted");
    let steps = runs[0]["history"].as_array().unwrap();
    let events: Vec<&str> = steps.iter().map(|s| s["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        ["read", "sent", "not_delivered", "sent", "acked", "deleted"],
        "{h}"
    );
    let states: Vec<&str> = steps.iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["read", "sent", "read", "sent", "acked", "deleted"]);
    assert_eq!(steps[1]["dest"], dead.as_str());
    assert_eq!(steps[2]["dest"], dead.as_str());
    assert!(!steps[2]["note"].as_str().unwrap_or("").is_empty(), "{h}");
    assert_eq!(steps[3]["dest"], b.dest());
    assert_eq!(steps[4]["dest"], b.dest());
    assert_eq!(steps[4]["note"], "stored");
    let times: Vec<drain::base::Timestamp> = steps
        .iter()
        .map(|s| drain::base::Timestamp::parse(s["at"].as_str().unwrap()).unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{h}");

    let o = inspect(&src, &["--message", failed_over[0]]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("not_delivered") && text.contains(&dead),
        "{text}"
    );
    assert!(text.contains("acked") && text.contains(&b.dest()), "{text}");

    // A message that went straight to b, if any did.
    let direct = b
        .ls()
        .into_iter()
        .find(|e| !failed_over.contains(&e.id.as_str()));
    if let Some(e) = direct {
        let h = inspect_json(&src, &["--message", &e.id]);
        let events: Vec<&str> = h["runs"][0]["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["event"].as_str().unwrap())
            .collect();
        assert_eq!(events, ["read", "sent", "acked", "deleted"], "{h}");
    }
}

#[test]
fn operator_errors_and_an_empty_data_directory() {
    let tmp = TempDir::new("inspect-empty");
    let dir = tmp.sub("fresh");
    let o = inspect(&dir, &[]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("no drain has run on this data directory"),
        "{}",
        show(&o)
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "inspect creates nothing"
    );
    let v = inspect_json(&dir, &[]);
    assert_eq!(v["exists"], false);

    // A journal with a run: an unknown run or a malformed id fails with exit 1; an id the
    // journal does not know is said so, exit 0.
    fill(&dir, 3);
    let port = closed_port("127.0.0.95");
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(&dir)
        .arg(format!("127.0.0.95:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while inspect_json(&dir, &[])["runs"]
        .as_array()
        .is_none_or(|r| r.is_empty())
    {
        assert!(Instant::now() < deadline, "the run never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let o = inspect(&dir, &["--run", "7"]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("journal.redb") && err.contains("no run #7"),
        "{err}"
    );
    let o = inspect(&dir, &["--message", "not-an-id"]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let o = inspect(&dir, &["--message", &"ab".repeat(16)]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("is not in the journal"),
        "{}",
        show(&o)
    );

    // A file that is not a journal: exit 1, naming it.
    let bad = tmp.sub("bad");
    std::fs::write(bad.join("journal.redb"), b"this is not a redb file at all").unwrap();
    let o = inspect(&bad, &[]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("journal.redb"),
        "{}",
        show(&o)
    );
}
