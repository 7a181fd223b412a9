//! Interruptions the operator sees: SIGTERM (exit 42), failed local removals (exit 40), the
//! restart guard on `drain serve`, and `drain resume` settling each without sending twice.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Makes a directory immutable (even root cannot unlink in it) until dropped.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(dirs: Vec<PathBuf>) -> Immutable {
        for d in &dirs {
            let st = Command::new("chattr")
                .arg("+i")
                .arg(d)
                .status()
                .expect("chattr");
            assert!(
                st.success(),
                "chattr +i {} failed (needs ext4 and root)",
                d.display()
            );
        }
        Immutable(dirs)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = Command::new("chattr").arg("-i").arg(d).status();
        }
    }
}

fn queue_dirs(src: &Path) -> Vec<PathBuf> {
    ["queue", "bounce-lite", "bounce-full", "submission"]
        .iter()
        .map(|q| src.join("spool").join(q))
        .collect()
}

#[test]
fn failed_removals_exit_40_and_resume_removes_without_resending() {
    let tmp = TempDir::new("exit40");
    let a = Server::start(&tmp, "a", ServeConfig::on("127.0.0.51"));
    let src = tmp.sub("src");
    let originals = fill(&src, 40);
    let ca = ca_bundle(&tmp, &[&a]);
    let guard = Immutable::set(queue_dirs(&src));
    let o = drain(
        &src,
        &["--ca-cert", ca.to_str().unwrap(), "--json", &a.dest()],
    );
    assert_eq!(code(&o), 40, "{}", show(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("report");
    assert_eq!(report["remove_failed"].as_array().unwrap().len(), 40);
    assert_eq!(spool_ls(&src).len(), 40, "local copies are still there");
    assert_eq!(a.ls().len(), 40, "and every message is on the destination");

    // The instance may not serve until the run is settled (invariant 6).
    let o = try_serve(&tmp, &src, "127.0.0.52");
    assert_eq!(code(&o), 1, "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unfinished") && err.contains("resume"),
        "{err}"
    );

    drop(guard);
    // Resume removes the local copies without sending anything again.
    let o = drain(
        &src,
        &["--ca-cert", ca.to_str().unwrap(), "--json", "resume"],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("report");
    assert_eq!(report["removed"], 40);
    assert!(
        report["delivered"].as_object().unwrap().is_empty(),
        "nothing re-sent: {report}"
    );
    assert!(spool_ls(&src).is_empty());
    let all = census(&[&a]);
    assert_eq!(all.len(), originals.len());
    for (id, (_, hash)) in &originals {
        assert_eq!(&all[id].1.hash, hash);
    }
}

#[test]
fn sigterm_stops_cleanly_with_42_and_resume_finishes() {
    let tmp = TempDir::new("sigterm");
    let port = closed_port("127.0.0.53");
    let src = tmp.sub("src");
    let originals = fill(&src, 30);
    // The destination is down: the drain keeps retrying with backoff until told to stop.
    let (cert, key) =
        drain::tls::write_self_signed(&["127.0.0.53".into()], tmp.path(), "late").unwrap();
    let ca = tmp.path().join("ca.pem");
    std::fs::copy(&cert, &ca).unwrap();
    let dest = format!("127.0.0.53:{port}");
    let (child, rx) = spawn_watched(&src, &["--ca-cert", ca.to_str().unwrap(), &dest]);
    // Readiness: the drain says every destination failed and it is backing off.
    let seen = wait_line(&rx, "every destination failed");
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(42),
        "{seen:?}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(spool_ls(&src).len(), 30, "nothing removed");

    // Interrupted: serving is refused until the run is settled.
    let o = try_serve(&tmp, &src, "127.0.0.54");
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("resume"));

    // The destination comes up on the address the run recorded; resume finishes the run.
    let mut cfg = ServeConfig::on("127.0.0.53");
    cfg.port = port;
    let server = Server::spawn(
        tmp.sub("dest"),
        cert.clone(),
        key.clone(),
        &cfg,
        tmp.path().join("dest.log"),
    );
    let o = drain(&src, &["--ca-cert", ca.to_str().unwrap(), "resume"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(spool_ls(&src).is_empty());
    let all = census(&[&server]);
    assert_eq!(
        all.keys().collect::<Vec<_>>(),
        originals.keys().collect::<Vec<_>>()
    );
}

#[test]
fn settle_only_ends_the_run_and_keeps_the_rest_for_the_instance() {
    let tmp = TempDir::new("settle");
    let port = closed_port("127.0.0.55");
    let src = tmp.sub("src");
    fill(&src, 10);
    let dest = format!("127.0.0.55:{port}");
    let (mut child, lines) = spawn_watched(&src, &[&dest]);
    wait_line(&lines, "every destination failed");
    signal(&child, libc::SIGINT);
    assert_eq!(child.wait().unwrap().code(), Some(42));
    let o = drain(&src, &["resume", "--settle-only"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_eq!(
        spool_ls(&src).len(),
        10,
        "undrained messages stay for the instance"
    );
    let o = drain(&src, &["resume"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("nothing to resume"),
        "{}",
        show(&o)
    );
}

/// A SIGTERM on a spool larger than the scan's batches (issue 9, point 6): nothing is in flight
/// (the only destination is down), so the drain stops at once with 42, prints its report and
/// records the run as interrupted; it never waits out the shutdown grace.
#[test]
fn sigterm_on_a_large_spool_stops_at_once_with_a_report() {
    let tmp = TempDir::new("sigterm-large");
    let port = closed_port("127.0.0.57");
    let src = tmp.sub("src");
    fill(&src, 3000);
    let dest = format!("127.0.0.57:{port}");
    let (child, rx) = spawn_watched(&src, &[&dest]);
    wait_line(&rx, "every destination failed");
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    assert_eq!(out.status.code(), Some(42), "{rest:?}");
    assert!(
        !rest.iter().any(|l| l.contains("still in flight")),
        "the drain waited for requests that were not there: {rest:?}"
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("stopped by signal (exit 42)"),
        "no report: {report}"
    );
    assert_eq!(spool_ls(&src).len(), 3000, "nothing removed");
    let v = inspect_json(&src, &[]);
    assert_eq!(v["run"]["status"], "interrupted", "{v:#}");
}

/// A power cut after a removal but before the invocation's closing directory fsync brings back
/// a file whose record in the unfinished run says `deleted` (simulated here by putting the
/// original bytes back). The continuing run removes each such file again without sending it;
/// a file back with the same id but other content is left and reported `reappeared` (exit 11).
#[test]
fn files_back_after_a_lost_unlink_are_removed_again_and_other_content_is_reported() {
    let tmp = TempDir::new("back");
    let a = Server::start(&tmp, "a", ServeConfig::on("127.0.0.43"));
    let src = tmp.sub("src");
    let originals = fill(&src, 40);
    // The original bytes of every file, to put back as a lost unlink would.
    let mut saved = Vec::new();
    for dir in queue_dirs(&src).into_iter().skip(1) {
        for f in std::fs::read_dir(&dir).unwrap() {
            let path = f.unwrap().path();
            saved.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    assert!(saved.len() >= 20, "fill spreads over the queues");
    let ca = ca_bundle(&tmp, &[&a]);
    // Removals in `queue` fail, so the run stays unfinished (exit 40); the others are `deleted`.
    let guard = Immutable::set(queue_dirs(&src)[..1].to_vec());
    let o = drain(
        &src,
        &["--ca-cert", ca.to_str().unwrap(), "--json", &a.dest()],
    );
    assert_eq!(code(&o), 40, "{}", show(&o));
    drop(guard);
    for (path, bytes) in &saved {
        assert!(!path.exists(), "{} was removed", path.display());
        std::fs::write(path, bytes).unwrap();
    }
    // One of them comes back with other content under the same id.
    let (forged_path, bytes) = &saved[0];
    let m = drain::spool::Message::from_bytes(bytes.clone().into()).unwrap();
    let forged = drain::spool::format::encode(&m.header, b"other content\r\n").unwrap();
    std::fs::write(forged_path, forged).unwrap();

    let o = drain(
        &src,
        &["--ca-cert", ca.to_str().unwrap(), "--json", "resume"],
    );
    assert_eq!(code(&o), 11, "{}", show(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("report");
    assert!(
        report["delivered"].as_object().unwrap().is_empty(),
        "nothing sent again: {report}"
    );
    let unreadable = report["unreadable"].as_array().unwrap();
    assert_eq!(unreadable.len(), 1, "{report}");
    assert_eq!(
        unreadable[0]["what"].as_str(),
        Some(forged_path.to_str().unwrap())
    );
    assert!(
        unreadable[0]["reason"]
            .as_str()
            .unwrap()
            .contains("delivered and removed earlier in this run"),
        "{report}"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.matches("removed again, not sent").count(),
        saved.len() - 1,
        "{err}"
    );
    let left = spool_ls(&src);
    assert_eq!(left.len(), 1, "only the forged file is left: {left:?}");
    assert_eq!(
        forged_path.file_stem().unwrap().to_str(),
        Some(&*left[0].id)
    );
    let all = census(&[&a]);
    assert_eq!(all.len(), originals.len());
    for (id, (_, hash)) in &originals {
        assert_eq!(&all[id].1.hash, hash, "{id}");
    }
}

/// A receiver drained before its `drain serve`, stopped mid-transfer, ever starts again: the
/// drain first settles what the serve left staged. The copies whose dedupe record is durable
/// were answered for: they are this instance's messages and travel on. One without a record
/// was never answered for (its sender sends it again): it is removed.
#[test]
fn a_drain_settles_the_copies_its_stopped_serve_left_staged() {
    use common::ask::{RUN, SENDER, ask};
    use drain::base::QueueKind;
    use drain::wire;

    let tmp = TempDir::new("staged");
    let mut b = Server::start(&tmp, "b", ServeConfig::on("127.0.0.55"));
    let c = Server::start(&tmp, "c", ServeConfig::on("127.0.0.56"));
    let msgs: Vec<_> = (0..4)
        .map(|i| message(QueueKind::Queue, 0, format!("message {i}").as_bytes()))
        .collect();
    let frames: Vec<_> = msgs.iter().map(|m| (m, m.hash)).collect();
    let content = wire::BATCH_CONTENT_TYPE;
    let (status, _, body) = ask(&b, wire::TRANSFER_PATH, content, batch(&frames), &[]);
    assert_eq!(status, 200, "{body}");
    b.kill();
    // As a kill between the dedupe commit and the renames leaves them: staged names again.
    let queue = b.data_dir.join("spool").join("queue");
    for m in &msgs {
        let id = m.header.id;
        let staged = queue.join(format!(".{id}.{SENDER}.{RUN}.staged"));
        std::fs::rename(queue.join(format!("{id}.msg")), staged).unwrap();
    }
    // And a copy staged whose record was never committed.
    let spool = drain::spool::Spool::open(&b.data_dir).unwrap();
    let orphan = message(QueueKind::BounceLite, 0, b"never answered for");
    for r in spool.stage_each(std::slice::from_ref(&orphan), SENDER, RUN) {
        r.unwrap();
    }
    assert_eq!(spool.staged().unwrap().len(), 5);
    assert!(
        spool_ls(&b.data_dir).is_empty(),
        "staged copies are no messages"
    );

    let ca = ca_bundle(&tmp, &[&c]);
    // Its serve had no event endpoint: its events stay queued here.
    let args = [
        "--ca-cert",
        ca.to_str().unwrap(),
        "--no-wait-on-events",
        &c.dest(),
    ];
    let o = drain(&b.data_dir, &args);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("4 answered for") && err.contains("1 never answered for"),
        "{err}"
    );
    assert!(spool.staged().unwrap().is_empty(), "nothing left staged");
    assert!(spool_ls(&b.data_dir).is_empty(), "drained");
    let mut on_c: Vec<_> = c.ls().into_iter().map(|e| (e.id, e.hash)).collect();
    let mut want: Vec<_> = msgs
        .iter()
        .map(|m| (m.header.id.to_string(), m.hash.to_string()))
        .collect();
    on_c.sort();
    want.sort();
    assert_eq!(on_c, want, "the answered-for copies, once each, unchanged");
}
