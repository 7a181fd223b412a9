//! The fallback path under faults: a drain SIGKILLed while it moves messages into
//! `--fallback-path` is finished by re-running the same command (its own lock on the fallback
//! directory never blocks it), and a copy the fallback directory refuses is reported naming
//! its own file, not the batch's first.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Message files in a data directory's spool.
fn spool_files(dir: &Path) -> usize {
    let Ok(queues) = std::fs::read_dir(dir.join("spool")) else {
        return 0;
    };
    queues
        .filter_map(Result::ok)
        .filter_map(|q| std::fs::read_dir(q.path()).ok())
        .flat_map(|d| d.filter_map(Result::ok))
        .filter(|e| e.file_name().to_string_lossy().ends_with(".msg"))
        .count()
}

/// Starts the drain, waits for a new file in the fallback directory, SIGKILLs it. True when the
/// kill left messages journaled `sent` to the fallback path (in doubt).
fn kill_during_move(src: &Path, fb: &Path, args: &[&str], logs: &Path) -> bool {
    let before = spool_files(fb);
    let mut child = spawn_logged(
        src,
        args,
        &logs.with_extension("out"),
        &logs.with_extension("err"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while spool_files(fb) == before {
        assert!(
            Instant::now() < deadline,
            "nothing moved to the fallback path"
        );
        assert!(child.try_wait().unwrap().is_none(), "the drain ended early");
        std::thread::sleep(Duration::from_micros(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    last_run_count(&inspect_json(src, &[]), "sent") > 0
}

/// A drain SIGKILLed while a message was in doubt with its fallback path: its source, the
/// fallback directory, the (stopped) destination, the drain's arguments and the originals.
struct Killed {
    tmp: TempDir,
    dest: Server,
    src: std::path::PathBuf,
    fb: std::path::PathBuf,
    args: Vec<String>,
    originals: BTreeMap<String, (String, String)>,
}

impl Killed {
    fn new(tag: &str, ip: &str) -> Killed {
        let tmp = TempDir::new(tag);
        let mut dest = Server::start(&tmp, "dest", ServeConfig::on(ip));
        let ca = ca_bundle(&tmp, &[&dest]).display().to_string();
        dest.kill(); // refuses connections: the fallback path gets used
        let src = tmp.sub("src");
        let originals = fill(&src, 400);
        let fb = tmp.path().join("fb");
        let args: Vec<String> = [
            "--ca-cert",
            &ca,
            "--no-wait-on-events",
            "--fallback-path",
            &fb.display().to_string(),
            "--automatic-fallback-after",
            "2s",
            "--batch-size",
            "1",
            "--concurrency",
            "1",
            "--json",
            &dest.dest(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let logs = tmp.path().join("killed");
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut tries = 0;
        while !kill_during_move(&src, &fb, &argv, &logs) {
            tries += 1;
            assert!(tries < 20, "no kill landed while a message was in doubt");
        }
        Killed {
            tmp,
            dest,
            src,
            fb,
            args,
            originals,
        }
    }

    /// Runs `drain ARGS...` to its end; checks it was not blocked by the run's own lock, and
    /// that its exit code is 13 exactly when it moved messages itself (completed moves do not
    /// count); returns its report.
    fn finish(&self, args: &[&str]) -> serde_json::Value {
        let ran = run_logged(
            &self.src,
            args,
            &self.tmp.path().join("rerun"),
            Duration::from_secs(120),
        );
        assert!(!ran.stderr.contains("in use by"), "{}", ran.stderr);
        let report: serde_json::Value = serde_json::from_str(&ran.stdout).expect("report");
        let moved_now = report["fallback"]["messages"].as_u64().unwrap();
        let want = if moved_now > 0 { 13 } else { 0 };
        assert_eq!(ran.code, want, "{}\n{}", ran.stdout, ran.stderr);
        assert!(
            report["fallback_completed"].as_u64().unwrap() > 0,
            "{report}"
        );
        report
    }

    /// Every message in the fallback directory or on the destination, exactly once; the
    /// source empty and its run settled.
    fn census(&self) {
        let mut all: BTreeMap<String, String> = BTreeMap::new();
        for e in spool_ls(&self.fb).into_iter().chain(self.dest.ls()) {
            assert!(all.insert(e.id.clone(), e.hash).is_none(), "{} twice", e.id);
        }
        let want: BTreeMap<String, String> = self
            .originals
            .iter()
            .map(|(id, (_, h))| (id.clone(), h.clone()))
            .collect();
        assert_eq!(all, want);
        assert!(spool_ls(&self.src).is_empty());
        let o = drain(&self.src, &["resume"]);
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("nothing to resume"),
            "{}",
            show(&o)
        );
    }
}

#[test]
fn a_drain_killed_during_the_fallback_move_is_finished_by_the_same_command() {
    let mut k = Killed::new("fbkill", "127.0.0.151");
    k.dest.restart();
    let args: Vec<&str> = k.args.iter().map(String::as_str).collect();
    k.finish(&args);
    k.census();
}

#[test]
fn a_drain_killed_during_the_fallback_move_is_finished_by_resume_with_the_fallback_path() {
    let k = Killed::new("fbresume", "127.0.0.153");
    // The destination is still down: the rest goes to the fallback path too.
    let fb = k.fb.display().to_string();
    let report = k.finish(&[
        "resume",
        "--fallback-path",
        &fb,
        "--automatic-fallback-after",
        "1s",
        "--json",
    ]);
    assert_eq!(
        report["fallback_path"],
        k.fb.canonicalize().unwrap().display().to_string()
    );
    assert_eq!(spool_ls(&k.fb).len(), k.originals.len());
    k.census();
}

#[test]
fn a_copy_the_fallback_path_refuses_is_named_alone() {
    let tmp = TempDir::new("fbfail");
    let ip = "127.0.0.152";
    let d = format!("{ip}:{}", closed_port(ip));
    let src = tmp.sub("src");
    let originals = fill(&src, 6);
    let listing = spool_ls(&src);
    let victim = &listing[3];
    // Where the victim's copy would go is a directory: that one rename fails.
    let fb = tmp.path().join("fb");
    let blocker = fb
        .join("spool")
        .join(&victim.queue)
        .join(format!("{}.msg", victim.id));
    std::fs::create_dir_all(blocker.join("x")).unwrap();
    let fbs = fb.display().to_string();
    let o = drain(
        &src,
        &[
            "--no-wait-on-events",
            "--fallback-path",
            &fbs,
            "--automatic-fallback-after",
            "1s",
            "--json",
            &d,
        ],
    );
    assert_eq!(code(&o), 12, "{}", show(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let canonical = fb.canonicalize().unwrap().join("spool");
    let path = canonical
        .join(&victim.queue)
        .join(format!("{}.msg", victim.id));
    assert_eq!(
        report["undelivered"],
        serde_json::json!([{
            "what": victim.id,
            "reason": format!(
                "writing to the fallback path failed: {}: Is a directory (os error 21)",
                path.display()
            ),
        }])
    );
    assert_eq!(report["fallback"]["messages"], originals.len() as u64 - 1);
    let left: Vec<String> = spool_ls(&src).into_iter().map(|e| e.id).collect();
    assert_eq!(left, std::slice::from_ref(&victim.id));
}
