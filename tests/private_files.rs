//! Mail at rest is private: under umask 022, every directory drain creates is 0700 and every
//! file 0600 (spool, journal, events, lock, instance id, serve.addr, the intake's store, the
//! control socket, a fallback path); an existing data directory or TLS key others may read
//! gets a warning naming it. Real processes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// The usual umask, for this process and the processes it starts. Every test here sets the
/// same value, so running them in parallel is harmless.
fn usual_umask() {
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe {
        libc::umask(0o022);
    }
}

/// Every directory under `root` (itself included) that is not 0700 and every other entry
/// that is not 0600, as "path mode".
fn offenders(root: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).expect("stat");
        let mode = meta.permissions().mode() & 0o7777;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if mode != want {
            bad.push(format!("{} {mode:04o}", p.display()));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).expect("read dir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
    bad.sort();
    bad
}

fn assert_private(root: &Path, must_hold: &[&str]) {
    for name in must_hold {
        assert!(
            root.join(name).exists(),
            "{name} missing in {}",
            root.display()
        );
    }
    let bad = offenders(root);
    assert!(bad.is_empty(), "not private:\n{}", bad.join("\n"));
}

/// `drain spool add` of a small message into `dir` (which it may have to create).
fn add(dir: &Path, body: &Path) {
    let o = drain(
        dir,
        &[
            "spool",
            "add",
            "--queue",
            "queue",
            "--from",
            "a@example.com",
            "--to",
            "b@example.net",
            body.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
}

#[test]
fn everything_drain_creates_is_owner_only_under_umask_022() {
    usual_umask();
    let tmp = TempDir::new("private");
    let body = tmp.path().join("body.eml");
    std::fs::write(&body, b"Subject: private\r\n\r\nhello\r\n").unwrap();
    let src = tmp.path().join("new/src");
    for _ in 0..3 {
        add(&src, &body);
    }
    fill(&src, 20);

    let dest_dir = tmp.path().join("dest");
    let (cert, key) =
        drain::tls::write_self_signed(&["127.0.0.2".into()], tmp.path(), "dest").unwrap();
    let mut cfg = ServeConfig::on("127.0.0.2");
    cfg.extra = vec!["--metrics-listen".into(), "127.0.0.2:0".into()];
    let dest = Server::spawn(dest_dir, cert, key, &cfg, tmp.path().join("dest.log"));
    let ca = ca_bundle(&tmp, &[&dest]);
    let ca = ca.to_str().unwrap();
    // The events of `spool add` stay queued here (their files are checked too).
    let o = drain(
        &src,
        &["--no-wait-on-events", "--ca-cert", ca, &dest.dest()],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_eq!(dest.ls().len(), 23);
    assert_private(
        &tmp.path().join("new"),
        &["src/journal.redb", "src/lock", "src/spool", "src/events"],
    );
    assert_private(
        &dest.data_dir,
        &[
            "intake.redb",
            "serve.addr",
            "metrics.addr",
            "lock",
            "events",
            "instance-id",
        ],
    );

    // A fallback path, created by the drain.
    let src2 = tmp.path().join("src2");
    add(&src2, &body);
    let fb = tmp.path().join("fallback/dir");
    let closed = format!("127.0.0.2:{}", closed_port("127.0.0.2"));
    let ran = run_logged(
        &src2,
        &[
            "--no-wait-on-events",
            "--ca-cert",
            ca,
            "--fallback-path",
            fb.to_str().unwrap(),
            "--automatic-fallback-after",
            "1s",
            &closed,
        ],
        &tmp.path().join("fallback-drain"),
        Duration::from_secs(120),
    );
    assert_eq!(ran.code, 13, "{}\n{}", ran.stdout, ran.stderr);
    assert_private(&src2, &["journal.redb"]);
    assert_private(
        &tmp.path().join("fallback"),
        &["dir/spool", "dir/instance-id"],
    );
}

#[test]
fn an_exposed_data_directory_or_key_gets_a_warning() {
    usual_umask();
    let tmp = TempDir::new("exposed");
    let dir: PathBuf = tmp.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let body = tmp.path().join("body.eml");
    std::fs::write(&body, b"x\r\n").unwrap();
    let o = drain(
        &dir,
        &[
            "spool", "add", "--queue", "queue", "--from", "a@x", "--to", "b@y",
        ]
        .into_iter()
        .chain([body.to_str().unwrap()])
        .collect::<Vec<_>>(),
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let want = format!("data directory {} is mode 0755", dir.display());
    assert!(err.contains(&want), "{want:?} not in\n{err}");

    let (cert, key) =
        drain::tls::write_self_signed(&["127.0.0.1".into()], tmp.path(), "srv").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = drain(
        &dir,
        &[
            "serve",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--check-config",
        ],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for want in [
        format!("warning: tls_key {} is mode 0644", key.display()),
        format!("warning: data directory {} is mode 0755", dir.display()),
    ] {
        assert!(err.contains(&want), "{want:?} not in\n{err}");
    }

    // A drain (of an empty spool, in a directory it creates) with a --client-key others may
    // read.
    let empty = tmp.path().join("empty");
    let closed = format!("127.0.0.2:{}", closed_port("127.0.0.2"));
    let o = drain(
        &empty,
        &[
            "--client-cert",
            cert.to_str().unwrap(),
            "--client-key",
            key.to_str().unwrap(),
            &closed,
        ],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let want = format!("--client-key {} is mode 0644", key.display());
    assert!(err.contains(&want), "{want:?} not in\n{err}");
    assert!(!err.contains("data directory"), "{err}");
}
