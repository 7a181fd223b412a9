//! `drain serve --config FILE`: the TOML settings file, its precedence under the flags,
//! `--check-config`, and errors that name the file, the line and the key. Real processes.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

/// The `key = value` line of `--check-config` output.
fn line_of<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} line in\n{out}"))
}

#[test]
fn check_config_prints_the_effective_settings_with_flags_over_the_file() {
    let tmp = TempDir::new("cfgcheck");
    drain::tls::write_self_signed(&["127.0.0.100".into()], tmp.path(), "c").unwrap();
    let cfg = write_full_config(tmp.path());
    let c = cfg.to_str().unwrap();
    check_the_file_alone(tmp.path(), c);
    let out = check_flags_over_the_file(c);
    check_printed_settings_mean_the_same(tmp.path(), &out);
    check_without_any_file(tmp.path());
}

/// A settings file that sets every kind of value; relative paths are taken from the file's
/// directory.
fn write_full_config(dir: &Path) -> PathBuf {
    write(
        dir,
        "serve.toml",
        r#"# drain serve settings
listen = "127.0.0.100:8443"
tls_cert = "c.crt"
tls_key = "c.key"
accept_drain_from = ["127.0.0.101"]
http_trusted_proxy_ips = ["127.0.0.109"]
incoming_drain_workers = 3
dedupe_retention = "36h"
event_endpoints = ["http://127.0.0.108:9/events"]
metrics_listen = "127.0.0.100:9100"
"#,
    )
}

/// The file alone.
fn check_the_file_alone(dir: &Path, c: &str) {
    let o = drain_bare(&["serve", "--config", c, "--check-config"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        line_of(&out, "accept_drain_from").contains("\"127.0.0.101/32\""),
        "{out}"
    );
    assert!(
        line_of(&out, "incoming_drain_workers").contains("= 3 "),
        "{out}"
    );
    assert!(
        line_of(&out, "incoming_drain_workers").ends_with("# serve.toml"),
        "{out}"
    );
    assert!(
        line_of(&out, "listen").contains("\"127.0.0.100:8443\""),
        "{out}"
    );
    assert!(
        line_of(&out, "metrics_listen").contains("\"127.0.0.100:9100\""),
        "{out}"
    );
    let cert = dir.join("c.crt");
    assert!(
        line_of(&out, "tls_cert").contains(&format!("{:?}", cert.display().to_string())),
        "{out}"
    );
    assert!(
        line_of(&out, "max_request_size").contains("268435456"),
        "{out}"
    );
    assert!(
        line_of(&out, "max_request_size").ends_with("# default"),
        "{out}"
    );
    assert!(line_of(&out, "wait_after_drain").contains("false"), "{out}");
}

/// Flags win; a list flag replaces the file's list rather than adding to it. Returns the
/// printed settings.
fn check_flags_over_the_file(c: &str) -> String {
    let o = drain_bare(&[
        "serve",
        "--config",
        c,
        "--check-config",
        "--accept-drain-from",
        "127.0.0.102,127.0.0.103",
        "--incoming-drain-workers",
        "5",
        "--wait-after-drain",
    ]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let accept = line_of(&out, "accept_drain_from");
    assert!(
        accept.contains("\"127.0.0.102/32\", \"127.0.0.103/32\"]") && !accept.contains("101"),
        "{out}"
    );
    assert!(accept.ends_with("# --accept-drain-from"), "{out}");
    assert!(
        line_of(&out, "incoming_drain_workers").contains("= 5 "),
        "{out}"
    );
    assert!(line_of(&out, "wait_after_drain").contains("true"), "{out}");
    assert!(
        line_of(&out, "http_trusted_proxy_ips").contains("127.0.0.109"),
        "{out}"
    );
    // Settings left to the file stay the file's.
    assert!(
        line_of(&out, "dedupe_retention").ends_with("# serve.toml"),
        "{out}"
    );
    out
}

/// What --check-config prints is itself a valid config file, and means the same.
fn check_printed_settings_mean_the_same(dir: &Path, out: &str) {
    let printed = write(dir, "printed.toml", out);
    let o = drain_bare(&[
        "serve",
        "--config",
        printed.to_str().unwrap(),
        "--check-config",
    ]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let again = String::from_utf8_lossy(&o.stdout).into_owned();
    for key in [
        "listen",
        "tls_cert",
        "accept_drain_from",
        "incoming_drain_workers",
        "dedupe_retention",
        "event_endpoints",
    ] {
        let value = |text: &str| {
            line_of(text, key)
                .split("  #")
                .next()
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!(value(&again), value(out), "{key}");
    }
}

/// Without any file: flags and defaults; the certificate is still checked.
fn check_without_any_file(dir: &Path) {
    let o = drain_bare(&[
        "serve",
        "--check-config",
        "--tls-cert",
        dir.join("c.crt").to_str().unwrap(),
        "--tls-key",
        dir.join("missing.key").to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("missing.key"),
        "{}",
        show(&o)
    );
}

#[test]
fn a_bad_value_names_the_file_the_line_and_the_key() {
    let tmp = TempDir::new("cfgbad");
    drain::tls::write_self_signed(&["127.0.0.100".into()], tmp.path(), "c").unwrap();
    let cfg = write(
        tmp.path(),
        "serve.toml",
        "tls_cert = \"c.crt\"\ntls_key = \"c.key\"\naccept_drain_from = [\"10.0.0.0/33\"]\n",
    );
    let c = cfg.to_str().unwrap();
    let want = "serve.toml:3: accept_drain_from: invalid CIDR \"10.0.0.0/33\"";
    for check in [true, false] {
        let data = tmp.sub("data");
        let mut args = vec!["--data-dir", data.to_str().unwrap(), "serve", "--config", c];
        if check {
            args.push("--check-config");
        }
        let o = drain_bare(&args);
        assert_eq!(code(&o), 1, "{}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{}", show(&o));
        assert!(err.contains(c), "names the file: {}", show(&o));
        assert!(o.stdout.is_empty(), "{}", show(&o));
        assert!(!data.join("serve.addr").exists(), "did not serve");
    }

    // Unknown keys are errors too, with a hint; every problem is listed, in line order.
    let cfg = write(
        tmp.path(),
        "typos.toml",
        "tls_cert = \"c.crt\"\ntls_key = \"c.key\"\nlisten = \"0.0.0.0\"\n\
         trusted_proxy_ips = [\"10.0.0.1\"]\nincoming_drain_workers = \"eight\"\n",
    );
    let o = drain_bare(&["serve", "--config", cfg.to_str().unwrap(), "--check-config"]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let at = |s: &str| err.find(s).unwrap_or_else(|| panic!("{s:?} not in {err}"));
    let a = at("typos.toml:3: listen: invalid address \"0.0.0.0\"");
    let b =
        at("typos.toml:4: trusted_proxy_ips: unknown key; did you mean http_trusted_proxy_ips?");
    let c2 = at("typos.toml:5: incoming_drain_workers: expected an integer, found a string");
    assert!(a < b && b < c2, "{err}");

    // Not TOML at all.
    let cfg = write(
        tmp.path(),
        "broken.toml",
        "listen = \"127.0.0.1:1\"\n[[oops\n",
    );
    let o = drain_bare(&["serve", "--config", cfg.to_str().unwrap(), "--check-config"]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("broken.toml:2: not valid TOML"),
        "{}",
        show(&o)
    );

    // A flag's own bad value names the flag.
    let o = drain_bare(&[
        "serve",
        "--config",
        c,
        "--check-config",
        "--trusted-proxy-ips",
        "10.1.0.0/99",
    ]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("--trusted-proxy-ips: invalid CIDR \"10.1.0.0/99\""),
        "{}",
        show(&o)
    );
}

#[test]
fn the_certificate_and_key_are_required_from_the_file_or_the_flags() {
    let tmp = TempDir::new("cfgtls");
    let cfg = write(
        tmp.path(),
        "serve.toml",
        "accept_drain_from = [\"10.0.0.1\"]\n",
    );
    let data = tmp.sub("data");
    let o = drain_bare(&[
        "--data-dir",
        data.to_str().unwrap(),
        "serve",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("tls_cert: the TLS certificate chain (PEM) is required: give --tls-cert or set tls_cert in"),
        "{}",
        show(&o)
    );
    assert!(
        err.contains("give --tls-key or set tls_key"),
        "{}",
        show(&o)
    );
}

#[test]
fn flags_override_the_file_in_a_real_drain() {
    let tmp = TempDir::new("cfgdrain");
    // The file admits only 127.0.0.101; the flag (given by the harness) admits only .102.
    let cfg = write(
        tmp.path(),
        "serve.toml",
        "accept_drain_from = [\"127.0.0.101\"]\nincoming_drain_workers = 2\n\
         dedupe_retention = \"2d\"\n",
    );
    let mut sc = ServeConfig::on("127.0.0.104");
    sc.accept = "127.0.0.102";
    sc.extra = vec!["--config".into(), cfg.display().to_string()];
    let dest = Server::start(&tmp, "dest", sc);
    let ca = ca_bundle(&tmp, &[&dest]);
    let ca = ca.to_str().unwrap();

    let refused = tmp.sub("refused");
    fill(&refused, 4);
    let o = drain(
        &refused,
        &["--ca-cert", ca, "--bind-ip", "127.0.0.101", &dest.dest()],
    );
    assert_eq!(code(&o), 12, "the file's list was replaced: {}", show(&o));
    assert_eq!(spool_ls(&refused).len(), 4);
    assert!(
        dest.log().contains("refused drain from 127.0.0.101"),
        "{}",
        dest.log()
    );

    let admitted = tmp.sub("admitted");
    let sent = fill(&admitted, 6);
    let o = drain(
        &admitted,
        &["--ca-cert", ca, "--bind-ip", "127.0.0.102", &dest.dest()],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    let got: Vec<String> = dest.ls().into_iter().map(|e| e.id).collect();
    assert_eq!(got.len(), 6);
    assert!(got.iter().all(|id| sent.contains_key(id)));
}
