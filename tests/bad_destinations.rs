//! Destinations that are not an IP address or a DNS name are refused at start (exit 1, the
//! string named) before anything is sent, even beside a valid destination. These strings
//! are only parsed: `1.2.3` would resolve to 1.2.0.3, an address outside this machine, so
//! nothing here may ever connect to them.

mod common;

use common::*;

#[test]
fn malformed_destinations_are_refused_before_anything_is_sent() {
    let tmp = TempDir::new("baddest");
    let a = Server::start(&tmp, "a", ServeConfig::on("127.0.0.92"));
    let ca = ca_bundle(&tmp, &[&a]);
    let src = tmp.sub("src");
    fill(&src, 3);
    for bad in [
        "1.2.3",
        "999.1.1.1",
        "https://127.0.0.92/",
        "a b",
        "mx_1.example.com",
    ] {
        let o = drain(&src, &["--ca-cert", &ca.to_string_lossy(), &a.dest(), bad]);
        assert_eq!(code(&o), 1, "{bad}: {}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("invalid destination {bad:?}")),
            "{bad}: {err}"
        );
    }
    assert_eq!(spool_ls(&src).len(), 3, "nothing left the spool");
    assert!(a.ls().is_empty(), "nothing reached the valid destination");
}

/// A `--bind-ip` of the wrong family, or not of this machine, is an error at start (exit 1,
/// naming it), not "network unreachable" retried forever.
#[test]
fn a_bind_ip_that_cannot_reach_the_destinations_is_refused_at_start() {
    let tmp = TempDir::new("badbind");
    let a = Server::start(&tmp, "a", ServeConfig::on("127.0.0.97"));
    let ca = ca_bundle(&tmp, &[&a]);
    let src = tmp.sub("src");
    fill(&src, 2);
    // 192.0.2.1 (TEST-NET-1) is only bound to, locally, which fails; nothing is sent to it.
    for (bind, says) in [
        ("::1", "is IPv6 but destination 127.0.0.97"),
        ("192.0.2.1", "cannot bind to it"),
    ] {
        let o = drain(
            &src,
            &[
                "--ca-cert",
                &ca.to_string_lossy(),
                "--bind-ip",
                bind,
                &a.dest(),
            ],
        );
        assert_eq!(code(&o), 1, "{bind}: {}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says) && err.contains(bind), "{bind}: {err}");
    }
    assert_eq!(spool_ls(&src).len(), 2);
    assert!(a.ls().is_empty());
    // No run was recorded: nothing to resume, nothing blocking `drain serve` here.
    let doc = inspect_json(&src, &[]);
    assert_eq!(doc["runs"].as_array().map(Vec::len), Some(0), "{doc}");
}
