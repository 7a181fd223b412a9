//! Mutual TLS with real processes: `drain serve --client-ca` and `drain --client-cert
//! --client-key`. The right certificate moves everything; no certificate, or one from another
//! CA, is a permanent refusal by that destination (exit 12, nothing moved, nothing stored),
//! counted by `inspect` and the serve's metrics; `--check-config` names a bad CA file.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA (its PEM file) and a client certificate and key it issued.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn write(path: PathBuf, text: &str) -> PathBuf {
    std::fs::write(&path, text).expect("write pem");
    path
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// A CA named `name` and a client certificate it signed, written under `dir`.
fn issue(dir: &Path, name: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let params = ca_params(name);
    let ca_cert = params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(params, ca_key);
    let client_key = KeyPair::generate().unwrap();
    let mut cp = CertificateParams::new(vec!["sender.test".to_string()]).unwrap();
    cp.distinguished_name
        .push(DnType::CommonName, format!("{name} sender"));
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = cp.signed_by(&client_key, &issuer).unwrap();
    let key = dir.join(format!("{name}-client.key"));
    drain::tls::write_key(&key, client_key.serialize_pem().as_bytes()).unwrap();
    Pki {
        ca: write(dir.join(format!("{name}-ca.pem")), &ca_cert.pem()),
        cert: write(dir.join(format!("{name}-client.crt")), &client.pem()),
        key,
    }
}

/// A destination requiring client certificates issued by `ca`, with a metrics listener.
fn start_mtls(tmp: &TempDir, name: &str, ip: &str, ca: &Path) -> (Server, SocketAddr) {
    let mut cfg = ServeConfig::on(ip);
    cfg.extra = vec![
        "--client-ca".into(),
        ca.to_string_lossy().into_owned(),
        "--metrics-listen".into(),
        format!("{ip}:0"),
    ];
    let s = Server::start(tmp, name, cfg);
    let m = std::fs::read_to_string(s.data_dir.join("metrics.addr")).expect("metrics.addr");
    (s, m.trim().parse().expect("metrics address"))
}

/// `drain_intake_refusals_total{reason="client_certificate"}` of a serve.
fn cert_refusals(metrics: SocketAddr) -> u64 {
    let mut s = TcpStream::connect(metrics).expect("metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let key = "drain_intake_refusals_total{reason=\"client_certificate\"} ";
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in\n{text}"))
        .trim()
        .parse()
        .expect("a count")
}

#[test]
fn the_right_client_certificate_moves_every_message() {
    let tmp = TempDir::new("mtls-ok");
    let pki = issue(tmp.path(), "good");
    let (a, metrics) = start_mtls(&tmp, "a", "127.0.0.2", &pki.ca);
    let src = tmp.sub("src");
    let expected = fill(&src, 200);
    let ca = ca_bundle(&tmp, &[&a]);
    let ran = run_logged(
        &src,
        &[
            "--ca-cert",
            ca.to_str().unwrap(),
            "--client-cert",
            pki.cert.to_str().unwrap(),
            "--client-key",
            pki.key.to_str().unwrap(),
            &a.dest(),
        ],
        &tmp.path().join("drain"),
        Duration::from_secs(120),
    );
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert_census(&[&a], &src, &expected);
    assert_eq!(cert_refusals(metrics), 0);
}

#[test]
fn no_client_certificate_is_refused_permanently() {
    let tmp = TempDir::new("mtls-none");
    let pki = issue(tmp.path(), "good");
    refused_permanently(
        &tmp,
        &pki,
        None,
        "asks for a client certificate; pass --client-cert",
    );
}

#[test]
fn a_certificate_from_another_ca_is_refused_permanently() {
    let tmp = TempDir::new("mtls-other");
    let pki = issue(tmp.path(), "good");
    let other = issue(tmp.path(), "other");
    refused_permanently(
        &tmp,
        &pki,
        Some(&other),
        "refused our client certificate: not issued by a CA it trusts",
    );
}

/// A drain presenting `client` (or nothing) to a destination requiring `pki`'s CA: exit 12
/// naming the destination and `reason`, every message still at the source, none stored;
/// `inspect` and the metrics count the refusal.
fn refused_permanently(tmp: &TempDir, pki: &Pki, client: Option<&Pki>, reason: &str) {
    let (a, metrics) = start_mtls(tmp, "a", "127.0.0.2", &pki.ca);
    let src = tmp.sub("src");
    let expected = fill(&src, 60);
    let before = spool_ls(&src);
    let ca = ca_bundle(tmp, &[&a]);
    let mut args = vec!["--ca-cert".to_string(), ca.to_string_lossy().into_owned()];
    if let Some(c) = client {
        args.extend([
            "--client-cert".to_string(),
            c.cert.to_string_lossy().into_owned(),
            "--client-key".to_string(),
            c.key.to_string_lossy().into_owned(),
        ]);
    }
    args.push(a.dest());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ran = run_logged(
        &src,
        &args,
        &tmp.path().join("drain"),
        Duration::from_secs(120),
    );
    let all = format!("{}\n{}", ran.stdout, ran.stderr);
    assert_eq!(ran.code, 12, "{all}");
    let named = format!("{}: {reason}", a.dest());
    assert!(all.contains(&named), "{named:?} not in\n{all}");
    assert_eq!(spool_ls(&src), before, "the source spool changed");
    assert_eq!(ids(&before), expected.keys().cloned().collect());
    assert!(a.ls().is_empty(), "the destination stored {:?}", a.ls());
    let refused = cert_refusals(metrics);
    assert!(refused >= 1, "metrics counted {refused} refusals");
    let detail = inspect_json(&src, &[]);
    let counted = &detail["run"]["anomalies"]["client_certificate_refusals"][a.dest()];
    assert_eq!(counted.as_u64(), Some(60), "{detail:#}");

    // With the right certificate, the next drain moves all of them.
    let ran = run_logged(
        &src,
        &[
            "--ca-cert",
            ca.to_str().unwrap(),
            "--client-cert",
            pki.cert.to_str().unwrap(),
            "--client-key",
            pki.key.to_str().unwrap(),
            &a.dest(),
        ],
        &tmp.path().join("drain-again"),
        Duration::from_secs(120),
    );
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert_census(&[&a], &src, &expected);
}

#[test]
fn a_destination_refusing_our_certificate_is_failed_over_like_a_403() {
    let tmp = TempDir::new("mtls-failover");
    let pki = issue(tmp.path(), "good");
    let (a, _) = start_mtls(&tmp, "a", "127.0.0.2", &pki.ca);
    let b = Server::start(&tmp, "b", ServeConfig::on("127.0.0.3"));
    let src = tmp.sub("src");
    let expected = fill(&src, 80);
    let ca = ca_bundle(&tmp, &[&a, &b]);
    let ran = run_logged(
        &src,
        &["--ca-cert", ca.to_str().unwrap(), &a.dest(), &b.dest()],
        &tmp.path().join("drain"),
        Duration::from_secs(120),
    );
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert!(a.ls().is_empty(), "a stored {:?}", a.ls());
    assert_census(&[&b], &src, &expected);
    let named = format!("{}: asks for a client certificate", a.dest());
    assert!(
        ran.stdout.contains(&named),
        "{named:?} not in\n{}",
        ran.stdout
    );
}

#[test]
fn a_bad_client_identity_is_refused_at_start_naming_the_file() {
    let tmp = TempDir::new("mtls-ident");
    let good = issue(tmp.path(), "good");
    let other = issue(tmp.path(), "other");
    let src = tmp.sub("src");
    fill(&src, 3);
    let missing = tmp.path().join("missing.key");
    for (cert, key, what) in [
        (&good.cert, &other.key, "does not match the certificate"),
        (&good.cert, &missing, "missing.key"),
        (&good.key, &good.key, "no certificate found"),
    ] {
        let o = drain(
            &src,
            &[
                "--client-cert",
                cert.to_str().unwrap(),
                "--client-key",
                key.to_str().unwrap(),
                "127.0.0.2:9",
            ],
        );
        assert_eq!(code(&o), 1, "{}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--client-cert/--client-key: "), "{err}");
        assert!(err.contains(what), "{what:?} not in\n{err}");
    }
    let o = drain(
        &src,
        &["--client-cert", good.cert.to_str().unwrap(), "127.0.0.2:9"],
    );
    assert_eq!(code(&o), 2, "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--client-key"));
    assert_eq!(inspect_json(&src, &[])["exists"], false);
}

#[test]
fn check_config_names_a_bad_client_ca() {
    let tmp = TempDir::new("mtls-check");
    let (cert, key) =
        drain::tls::write_self_signed(&["127.0.0.1".into()], tmp.path(), "srv").unwrap();
    let check = |ca: &Path| {
        drain_bare(&[
            "serve",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--client-ca",
            ca.to_str().unwrap(),
            "--check-config",
        ])
    };
    let good = issue(tmp.path(), "good");
    let o = check(&good.ca);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let line = format!("client_ca = {:?}", good.ca.display().to_string());
    assert!(
        out.lines().any(|l| l.starts_with(&line)),
        "{line} not in\n{out}"
    );

    let missing = tmp.path().join("missing-ca.pem");
    let not_pem = write(tmp.path().join("not-a-ca.pem"), "hello\n");
    let mut p = ca_params("old");
    p.not_before = time::macros::datetime!(2001-01-01 00:00 UTC);
    p.not_after = time::macros::datetime!(2002-01-01 00:00 UTC);
    let old = p.self_signed(&KeyPair::generate().unwrap()).unwrap();
    let expired = write(tmp.path().join("expired-ca.pem"), &old.pem());
    for (ca, what) in [
        (&missing, "No such file"),
        (&not_pem, "no certificate found"),
        (&expired, "the CA certificate expired on 2002-01-01"),
    ] {
        let o = check(ca);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(code(&o), 1, "{}", show(&o));
        let want = format!("client_ca: {}: ", ca.display());
        assert!(err.contains(&want), "{want:?} not in\n{err}");
        assert!(err.contains(what), "{what:?} not in\n{err}");
    }
}

/// `--check-config` (and the serve itself) refuse the serve's own certificate when it has
/// expired or is not valid yet, naming the file and its dates (issue 9, point 11).
#[test]
fn check_config_refuses_an_expired_or_future_serving_certificate() {
    let tmp = TempDir::new("cert-dates");
    let (_, key) = drain::tls::write_self_signed(&["127.0.0.80".into()], tmp.path(), "k").unwrap();
    let kp = KeyPair::from_pem(&std::fs::read_to_string(&key).unwrap()).unwrap();
    let cases = [
        (
            "expired",
            time::macros::datetime!(2001-01-01 00:00 UTC),
            time::macros::datetime!(2002-01-01 00:00 UTC),
            "the serve's TLS certificate expired on 2002-01-01 00:00 UTC (valid from 2001-01-01 00:00 UTC)",
        ),
        (
            "future",
            time::macros::datetime!(2090-01-01 00:00 UTC),
            time::macros::datetime!(2091-01-01 00:00 UTC),
            "the serve's TLS certificate is not valid before 2090-01-01 00:00 UTC",
        ),
    ];
    for (name, from, until, want) in cases {
        let mut p = CertificateParams::new(vec!["127.0.0.80".to_string()]).unwrap();
        p.not_before = from;
        p.not_after = until;
        let cert = write(
            tmp.path().join(format!("{name}.pem")),
            &p.self_signed(&kp).unwrap().pem(),
        );
        let o = drain_bare(&[
            "serve",
            "--listen",
            "127.0.0.80:0",
            "--accept-drain-from",
            "127.0.0.1",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--check-config",
        ]);
        assert_eq!(code(&o), 1, "{name}: {}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&cert.display().to_string()) && err.contains(want),
            "{name}: {err}"
        );
    }
}
