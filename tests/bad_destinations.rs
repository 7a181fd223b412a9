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
