//! What the operator sees: progress in non-terminal mode (one parseable line at a time),
//! `--quiet` (only the report), the JSON report, completions and the manual page.

mod common;

use common::*;

#[test]
fn progress_lines_are_parseable_and_quiet_prints_only_the_report() {
    let tmp = TempDir::new("progress");
    let a = Server::start(&tmp, "a", ServeConfig::on("127.0.0.121"));
    let ca = ca_bundle(&tmp, &[&a]);
    let src = tmp.sub("src");
    fill(&src, 800);
    let o = drain(
        &src,
        &[
            "--log-format",
            "json",
            "--progress-every",
            "50ms",
            "--ca-cert",
            ca.to_str().unwrap(),
            "--concurrency",
            "2",
            &a.dest(),
        ],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let mut progress = Vec::new();
    for line in stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["fields"]["message"] == "progress" {
            progress.push(v["fields"].clone());
        }
    }
    assert!(!progress.is_empty(), "no progress line in:\n{stderr}");
    let done: Vec<u64> = progress
        .iter()
        .map(|p| p["done"].as_u64().unwrap())
        .collect();
    assert!(
        done.windows(2).all(|w| w[0] <= w[1]),
        "done only grows: {done:?}"
    );
    for p in &progress {
        for key in ["done_bytes", "failed", "rate_msgs", "per_destination"] {
            assert!(p.get(key).is_some(), "{key} missing in {p}");
        }
    }
    // The report is on stdout, whatever the logs do.
    assert!(String::from_utf8_lossy(&o.stdout).contains("drained (exit 0)"));

    fill(&src, 50);
    let o = drain(
        &src,
        &["--quiet", "--ca-cert", ca.to_str().unwrap(), &a.dest()],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        o.stderr.is_empty(),
        "quiet: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("moved 50 messages"), "{out}");

    fill(&src, 5);
    let o = drain(
        &src,
        &[
            "--quiet",
            "--json",
            "--ca-cert",
            ca.to_str().unwrap(),
            &a.dest(),
        ],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON report");
    assert_eq!(report["exit_code"], 0);
    assert_eq!(report["delivered"][a.dest()]["messages"], 5);
}

#[test]
fn completions_and_manual_page_come_from_the_command_line_definitions() {
    let dir = TempDir::new("docs");
    let o = drain(dir.path(), &["completions", "bash"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let bash = String::from_utf8_lossy(&o.stdout);
    for word in [
        "resume",
        "serve",
        "inspect",
        "--fallback-path",
        "--accept-drain-from",
    ] {
        assert!(bash.contains(word), "{word} missing from completions");
    }
    let o = drain(dir.path(), &["completions", "zsh"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let zsh = String::from_utf8_lossy(&o.stdout);
    assert!(zsh.starts_with("#compdef drain"), "zsh header:\n{zsh}");
    assert!(zsh.contains("_drain() {"), "no _drain function:\n{zsh}");
    // Every subcommand, and options of `drain` itself, of a subcommand and global ones.
    for word in [
        "resume",
        "inspect",
        "serve",
        "spool",
        "completions",
        "man",
        "--data-dir",
        "--max-in-flight-bytes",
        "--reassign-after",
        "--fallback-path",
        "--accept-drain-from",
        "--tls-cert",
    ] {
        assert!(zsh.contains(word), "{word} missing from zsh completions");
    }
    let o = drain(dir.path(), &["man"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let man = String::from_utf8_lossy(&o.stdout);
    assert!(man.contains(".TH drain 1"), "{man}");
    assert!(man.contains("resume"));
}
