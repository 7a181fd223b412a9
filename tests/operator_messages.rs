//! What the operator is told when a destination is wrong (issue 9, point 11): failures grouped
//! by destination and kind, a plain-HTTP server named as "does not speak TLS", an untrusted
//! certificate as a reason of its own with its hint, and no empty run id when there is
//! nothing to resume.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use common::*;

/// Runs a drain to `dest` until a log line contains `needle`, then stops it with SIGTERM;
/// returns (exit code, report JSON, every log line seen).
fn drain_until(
    src: &std::path::Path,
    args: &[&str],
    needle: &str,
) -> (i32, serde_json::Value, Vec<String>) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (child, rx) = spawn_watched(src, &all);
    let mut seen = wait_line(&rx, needle);
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    seen.extend(rx.try_iter());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "report is JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code().unwrap_or(-1), report, seen)
}

/// The report's failure groups for `dest`: (kind, count, example).
fn groups(report: &serde_json::Value, dest: &str) -> Vec<(String, u64, String)> {
    report["failures"]
        .as_object()
        .expect("failures")
        .values()
        .filter(|g| g["destination"] == dest)
        .map(|g| {
            (
                g["kind"].as_str().unwrap().to_string(),
                g["count"].as_u64().unwrap(),
                g["example"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_plain_http_server_is_reported_as_not_speaking_tls() {
    let tmp = TempDir::new("plain-http");
    let src = tmp.sub("src");
    fill(&src, 5);
    // A plain-HTTP server: answers every connection with a 400, as nginx or a web app would.
    let l = TcpListener::bind("127.0.0.61:0").unwrap();
    let dest = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let (code, report, seen) = drain_until(&src, &[&dest], "does not speak TLS");
    assert_eq!(code, 42, "{seen:?}");
    let g = groups(&report, &dest);
    assert_eq!(g.len(), 1, "one group for one kind of failure: {g:?}");
    assert!(g[0].0.starts_with("does not speak TLS"), "{g:?}");
    assert!(g[0].1 >= 1);
    assert_eq!(spool_ls(&src).len(), 5);
}

#[test]
fn an_untrusted_certificate_is_a_reason_of_its_own_with_a_hint() {
    let tmp = TempDir::new("untrusted-cert");
    let server = Server::start(&tmp, "dest", ServeConfig::on("127.0.0.62"));
    let src = tmp.sub("src");
    fill(&src, 5);
    // No --ca-cert: the serve's self-signed certificate is not trusted.
    let dest = server.dest();
    let (code, report, seen) = drain_until(&src, &[&dest], "certificate was not accepted");
    assert_eq!(code, 42, "{seen:?}");
    let g = groups(&report, &dest);
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(g[0].0, "its TLS certificate was not accepted");
    assert!(g[0].2.contains("--ca-cert"), "the hint: {g:?}");
    let text = seen.join("\n");
    assert!(
        !text.contains("UnknownIssuer"),
        "Rust debug text in the log: {text}"
    );
    assert!(
        seen.iter().any(|l| l.contains("--ca-cert")),
        "the log carries the hint: {text}"
    );
    assert!(server.ls().is_empty());
    assert_eq!(spool_ls(&src).len(), 5);
}

#[test]
fn repeated_failures_of_one_kind_are_one_line_of_the_report() {
    let tmp = TempDir::new("grouped");
    let src = tmp.sub("src");
    fill(&src, 40);
    let dest = format!("127.0.0.63:{}", closed_port("127.0.0.63"));
    let (child, rx) = spawn_watched(&src, &["--concurrency", "16", &dest]);
    wait_line(&rx, "every destination failed");
    wait_line(&rx, "every destination failed");
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(42));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(" x ")).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].ends_with(&format!(
            "x {dest}: connection refused (nothing listens there)"
        )),
        "{text}"
    );
    assert!(
        !text.contains("/v1/transfer"),
        "no URL text repeated: {text}"
    );
}

#[test]
fn resume_with_nothing_to_resume_prints_no_empty_run_id() {
    let tmp = TempDir::new("nothing-to-resume");
    let src = tmp.sub("src");
    fill(&src, 1);
    let o = drain(&src, &["resume"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("drain: nothing to resume"), "{text}");
    assert!(!text.contains("run  ("), "{text}");
    let o = drain(&src, &["--json", "resume"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v.get("run_id").is_none(), "{v}");
    assert!(
        v["outcome"]
            .as_str()
            .unwrap()
            .starts_with("nothing to resume")
    );
}
