//! The journal does not grow forever (issue 15, point 4): `drain compact` keeps only the audit
//! of finished runs, and a drain does it at its start for runs older than
//! `--journal-retention`. `drain inspect` shows a compacted run exactly as before; single
//! messages of it can no longer be looked up, and the command says so.

mod common;

use common::*;

/// The parts of a run's detail that compaction must keep unchanged.
fn audit(dir: &std::path::Path, seq: &str) -> serde_json::Value {
    let v = inspect_json(dir, &["--run", seq]);
    let r = &v["run"];
    serde_json::json!({
        "by_state": r["by_state"],
        "by_destination": r["by_destination"],
        "by_queue": r["by_queue"],
        "status": r["status"],
        "exit_code": r["exit_code"],
    })
}

#[test]
fn compacted_runs_keep_their_audit_and_drop_their_message_records() {
    let tmp = TempDir::new("compact");
    let s = Server::start(&tmp, "a", ServeConfig::on("127.0.0.76"));
    let ca = ca_bundle(&tmp, &[&s]);
    let ca = ca.to_str().unwrap();
    let src = tmp.sub("src");
    let first = fill(&src, 30);
    let o = drain(&src, &["--ca-cert", ca, &s.dest()]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    fill(&src, 20);
    let o = drain(&src, &["--ca-cert", ca, &s.dest()]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let (one, two) = (audit(&src, "1"), audit(&src, "2"));
    let some_id = first.keys().next().unwrap().clone();
    assert!(message_history(&src, &some_id).is_some());

    let o = drain(&src, &["compact"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains("compacted 2 finished run(s) #1, #2: 50 message records dropped"),
        "{said}"
    );
    // The audit is the same; it says it was compacted.
    assert_eq!(audit(&src, "1"), one);
    assert_eq!(audit(&src, "2"), two);
    let v = inspect_json(&src, &["--run", "1"]);
    assert!(v["run"]["compacted_at"].is_string(), "{v}");
    let o = drain(&src, &["inspect", "--run", "1"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("message records compacted at"),
        "{}",
        show(&o)
    );
    // Single messages are gone, and the answer says why.
    let h = inspect_json(&src, &["--message", &some_id]);
    assert_eq!(h["runs"], serde_json::json!([]), "{h}");
    assert_eq!(h["compacted_runs"], serde_json::json!([1, 2]), "{h}");
    let o = drain(&src, &["inspect", "--message", &some_id]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("runs #1, #2 were compacted"),
        "{}",
        show(&o)
    );
    // Nothing more to do the second time.
    let o = drain(&src, &["compact"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("compacted 0 finished run(s):"),
        "{}",
        show(&o)
    );

    // A drain compacts, at its start, the finished runs older than --journal-retention; the
    // runs it continues or starts are left whole.
    fill(&src, 10);
    let o = drain(&src, &["--ca-cert", ca, &s.dest()]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let three = audit(&src, "3");
    fill(&src, 5);
    let o = drain(
        &src,
        &["--ca-cert", ca, "--journal-retention", "0s", &s.dest()],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("1 finished run(s) older than 0s compacted"),
        "{}",
        show(&o)
    );
    assert_eq!(audit(&src, "3"), three);
    assert!(inspect_json(&src, &["--run", "3"])["run"]["compacted_at"].is_string());
    assert!(inspect_json(&src, &["--run", "4"])["run"]["compacted_at"].is_null());
    assert_eq!(last_run_count(&inspect_json(&src, &[]), "deleted"), 5);
}

/// Only finished runs are compacted: an interrupted run keeps every record `drain resume`
/// needs.
#[test]
fn an_unfinished_run_is_not_compacted() {
    let tmp = TempDir::new("compact-open");
    let src = tmp.sub("src");
    fill(&src, 10);
    // Nothing listens there: the drain waits for it until SIGTERM ends the run interrupted.
    let away = format!("127.0.0.77:{}", closed_port("127.0.0.77"));
    let (mut child, lines) = spawn_watched(&src, &[&away]);
    wait_line(&lines, "started");
    signal(&child, libc::SIGTERM);
    let st = wait_up_to(&mut child, std::time::Duration::from_secs(60));
    assert_eq!(st, Some(42));
    let before = inspect_json(&src, &[]);
    assert_ne!(before["run"]["status"], "finished", "{before}");
    let o = drain(&src, &["compact"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("compacted 0 finished run(s)"),
        "{}",
        show(&o)
    );
    let after = inspect_json(&src, &[]);
    assert!(after["run"]["compacted_at"].is_null());
    assert_eq!(after["run"]["by_state"], before["run"]["by_state"]);
}
