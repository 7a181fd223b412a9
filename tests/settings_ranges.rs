//! Settings that would crash `drain serve` later (a semaphore of 2^64 permits, a date 10^14
//! days ago) are refused where they are written: in the file with its name, line and key, on
//! the command line with the flag. A duplicate key is named too. No panic from any setting.

mod common;

use common::*;

fn check_file(tmp: &TempDir, text: &str) -> (i32, String) {
    let p = tmp.path().join("serve.toml");
    std::fs::write(&p, text).unwrap();
    let dir = tmp.sub("data");
    let o = drain_bare(&[
        "--data-dir",
        &dir.to_string_lossy(),
        "serve",
        "--config",
        &p.to_string_lossy(),
        "--check-config",
    ]);
    (code(&o), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn out_of_range_settings_are_refused_with_file_line_and_key() {
    let tmp = TempDir::new("ranges");
    let head = "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n";
    for (line, key, says) in [
        // (the line added after the two of `head`, the key named, what the error says)
        (
            "incoming_drain_workers = 18446744073709551615",
            "serve.toml:3: incoming_drain_workers",
            "out of range",
        ),
        (
            "incoming_drain_workers = 0",
            "serve.toml:3: incoming_drain_workers",
            "out of range (1 to 4096)",
        ),
        (
            "max_request_size = 10",
            "serve.toml:3: max_request_size",
            "out of range",
        ),
        (
            "dedupe_retention = \"99999999999999d\"",
            "serve.toml:3: dedupe_retention",
            "",
        ),
        (
            "dedupe_retention = \"20000d\"",
            "serve.toml:3: dedupe_retention",
            "out of range (at most 3650d)",
        ),
        (
            "body_idle_timeout = \"0s\"",
            "serve.toml:3: body_idle_timeout",
            "0s is out of range (100ms to 1h)",
        ),
        (
            "header_read_timeout = \"2h\"",
            "serve.toml:3: header_read_timeout",
            "2h is out of range (100ms to 1h)",
        ),
        (
            "tls_handshake_timeout = 10",
            "serve.toml:3: tls_handshake_timeout",
            "expected a string",
        ),
        (
            "max_connections_per_peer = 0",
            "serve.toml:3: max_connections_per_peer",
            "out of range (1 to 65536)",
        ),
        (
            "listen = \"0.0.0.0:1\"\nlisten = \"0.0.0.0:2\"",
            "serve.toml:4: listen",
            "duplicate key",
        ),
    ] {
        let (code, err) = check_file(&tmp, &format!("{head}{line}\n"));
        assert_eq!(code, 1, "{line}: {err}");
        assert!(err.contains(key) && err.contains(says), "{line}: {err}");
        assert!(!err.contains("panicked"), "{line}: {err}");
    }
}

#[test]
fn out_of_range_flags_are_refused_naming_the_flag() {
    let tmp = TempDir::new("rangeflags");
    let dir = tmp.sub("data");
    for args in [
        ["--incoming-drain-workers", "18446744073709551615"],
        ["--incoming-drain-workers", "0"],
        ["--dedupe-retention", "99999999999999d"],
        ["--max-request-size", "1"],
        ["--body-idle-timeout", "1ms"],
        ["--tls-handshake-timeout", "2h"],
        ["--header-read-timeout", "0s"],
        ["--max-connections-per-peer", "0"],
    ] {
        let mut all = vec![
            "--data-dir",
            dir.to_str().unwrap(),
            "serve",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--check-config",
        ];
        all.extend(args);
        let o = drain_bare(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(matches!(code(&o), 1 | 2), "{args:?}: {}", show(&o));
        assert!(err.contains(args[0]), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
