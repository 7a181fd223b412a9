//! The settings table end to end: file parsing, errors with lines, precedence, rendering.

use super::*;

fn parse(text: &str) -> Result<Layer, ConfigError> {
    Layer::parse(text, "serve.toml", Path::new("/etc/drain"))
}

#[test]
fn every_key_parses() {
    let l = parse(
        r#"
listen = "127.0.0.1:8443"
tls_cert = "cert.pem"
tls_key = "/abs/key.pem"
accept_drain_from = ["10.0.0.0/8", "192.168.1.7"]
http_trusted_proxy_ips = "10.9.0.1, 10.9.0.2"
incoming_drain_workers = 16
event_endpoints = ["https://events.example.com/x"]
max_request_size = 1_048_576
dedupe_retention = "36h"
wait_after_drain = true
metrics_listen = "127.0.0.1:9100"
tls_handshake_timeout = "5s"
header_read_timeout = "1m"
body_idle_timeout = "500ms"
max_connections_per_peer = 8
"#,
    )
    .unwrap();
    assert_eq!(l.listen, Some("127.0.0.1:8443".parse().unwrap()));
    assert_eq!(l.tls_cert, Some(PathBuf::from("/etc/drain/cert.pem")));
    assert_eq!(l.tls_key, Some(PathBuf::from("/abs/key.pem")));
    assert_eq!(l.accept_drain_from.unwrap().0.len(), 2);
    assert_eq!(l.http_trusted_proxy_ips.unwrap().0.len(), 2);
    assert_eq!(l.incoming_drain_workers, Some(16));
    assert_eq!(l.max_request_size, Some(1 << 20));
    assert_eq!(l.dedupe_retention, Some(Duration::from_secs(36 * 3600)));
    assert_eq!(l.wait_after_drain, Some(true));
    assert_eq!(l.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
    assert_eq!(l.tls_handshake_timeout, Some(Duration::from_secs(5)));
    assert_eq!(l.header_read_timeout, Some(Duration::from_secs(60)));
    assert_eq!(l.body_idle_timeout, Some(Duration::from_millis(500)));
    assert_eq!(l.max_connections_per_peer, Some(8));
}

#[test]
fn every_problem_is_named_with_line_and_key() {
    let e = parse(
        "listen = \"0.0.0.0:443\"\n\
         incoming_drain_workers = \"8\"\n\
         accept_drain_from = [\n  \"10.0.0.1\",\n  \"10.0.0.0/33\",\n]\n\
         listn = \"x\"\n\
         trusted_proxy_ips = []\n\
         max_request_size = 0\n\
         dedupe_retention = \"7 weeks and a bit\"\n",
    )
    .unwrap_err();
    assert_eq!(
        e.0,
        vec![
            "serve.toml:2: incoming_drain_workers: expected an integer, found a string".to_string(),
            "serve.toml:5: accept_drain_from: invalid CIDR \"10.0.0.0/33\" (expected for \
             example 10.0.0.0/8)"
                .into(),
            "serve.toml:7: listn: unknown key; did you mean listen?".into(),
            "serve.toml:8: trusted_proxy_ips: unknown key; did you mean \
             http_trusted_proxy_ips?"
                .into(),
            "serve.toml:9: max_request_size: 0 is out of range (1024 to 4294967296)".into(),
            e.0[5].clone(),
        ]
    );
    assert!(
        e.0[5].starts_with("serve.toml:10: dedupe_retention: invalid duration"),
        "{e}"
    );
    let syntax = parse("listen = \n").unwrap_err();
    assert!(
        syntax.0[0].starts_with("serve.toml:1: not valid TOML"),
        "{syntax}"
    );
}

#[test]
fn flags_win_and_lists_replace() {
    let file = parse(
        "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\naccept_drain_from = [\"10.0.0.1\"]\n\
         incoming_drain_workers = 3\n",
    )
    .unwrap();
    let flags = Layer {
        accept_drain_from: Some("10.0.0.2".parse().unwrap()),
        ..Layer::default()
    };
    let s = Settings::resolve(flags, Some(("serve.toml".into(), file))).unwrap();
    assert_eq!(s.accept_drain_from.value, "10.0.0.2".parse().unwrap());
    assert_eq!(s.accept_drain_from.source, Source::Flag);
    assert_eq!(s.incoming_drain_workers.value, 3);
    assert_eq!(s.incoming_drain_workers.source, Source::File);
    assert_eq!(s.listen.source, Source::Default);
    let text = s.to_toml();
    assert!(
        text.contains("accept_drain_from = [\"10.0.0.2/32\"]"),
        "{text}"
    );
    // The printed settings are themselves a valid config file.
    assert!(parse(&text).is_ok(), "{text}");

    let e = Settings::resolve(Layer::default(), None).unwrap_err();
    assert_eq!(e.0.len(), 2, "{e}");
    assert!(e.0[0].contains("--tls-cert"), "{e}");
}

/// The table drives the docs: every key is documented, with its flag, in this module's table
/// and in the README's.
#[test]
fn every_key_is_documented_with_its_flag() {
    let module_doc = include_str!("mod.rs");
    let readme = include_str!("../../../README.md");
    for (key, flag) in KEYS {
        let row = format!("//! | `{key}` |");
        let line = module_doc.lines().find(|l| l.starts_with(&row));
        assert!(
            line.is_some_and(|l| l.contains(&format!("`{flag}`"))),
            "{key} / {flag} not in the module doc's table"
        );
        assert!(
            readme.lines().any(|l| l.starts_with('|')
                && l.contains(&format!("`{key}`"))
                && l.contains(&format!("`{flag}`"))),
            "{key} / {flag} not in README's settings table"
        );
    }
}

#[test]
fn unknown_keys_get_the_nearest_known_one() {
    let e = parse("incoming_drain_worker = 2\nmax_request_bytes = 1\nzzz = 1\n").unwrap_err();
    assert_eq!(
        e.0[0],
        "serve.toml:1: incoming_drain_worker: unknown key; did you mean incoming_drain_workers?"
    );
    assert!(
        e.0[1].starts_with("serve.toml:2: max_request_bytes: unknown key; the keys are listen, "),
        "{e}"
    );
    assert!(
        e.0[2].starts_with("serve.toml:3: zzz: unknown key; the keys are"),
        "{e}"
    );
}

#[test]
fn check_config_output_lists_every_setting_in_table_order() {
    let file = parse("tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n").unwrap();
    let s = Settings::resolve(
        Layer::default(),
        Some(("/etc/drain/serve.toml".into(), file)),
    )
    .unwrap();
    let text = s.to_toml();
    let keys: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(" = ").next())
        .collect();
    let want: Vec<&str> = KEYS
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !["metrics_listen", "client_ca"].contains(k))
        .collect();
    assert_eq!(keys, want, "{text}");
    assert!(text.contains("tls_cert = \"/etc/drain/c.pem\""), "{text}");
    assert!(
        text.ends_with(
            "# metrics_listen is not set: no metrics listener\n\
             # client_ca is not set: no client certificate required\n"
        ),
        "{text}"
    );
}

#[test]
fn event_timeout_is_a_duration_from_one_second_to_one_hour() {
    let l = parse("event_timeout = \"45s\"\n").unwrap();
    assert_eq!(l.event_timeout, Some(std::time::Duration::from_secs(45)));
    let e = parse("listen = \"0.0.0.0:443\"\nevent_timeout = \"0s\"\nevent_timeout_x = 1\n")
        .unwrap_err();
    assert_eq!(
        e.0[0],
        "serve.toml:2: event_timeout: 0s is out of range (1s to 1h)"
    );
    assert_eq!(
        super::parse_event_timeout("2h"),
        Err("2h is out of range (1s to 1h)".to_string())
    );
}
