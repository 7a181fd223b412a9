//! Three `drain serve` backends behind a real balancer (HAProxy from `examples/haproxy-*.cfg`
//! or nginx from `examples/nginx.conf`), and the census of what they hold: shared by the
//! balancer tests.

use std::collections::BTreeMap;

use super::haproxy::HaProxy;
use super::nginx::Nginx;
use super::*;

/// A balancer a test runs: where senders dial, and its logs.
pub trait Balancer {
    fn dest(&self) -> String;
    fn log(&self) -> String;
}

impl Balancer for HaProxy {
    fn dest(&self) -> String {
        HaProxy::dest(self)
    }
    fn log(&self) -> String {
        HaProxy::log(self)
    }
}

impl Balancer for Nginx {
    fn dest(&self) -> String {
        Nginx::dest(self)
    }
    fn log(&self) -> String {
        Nginx::log(self)
    }
}

/// Three backends on `ips`, trusting the balancer on `lb_ip` for forwarding; their
/// certificates also name `lb_ip` (passthrough: the senders' TLS ends at the backend).
pub fn backends(tmp: &TempDir, ips: &[&str; 3], lb_ip: &str) -> Vec<Server> {
    ips.iter()
        .enumerate()
        .map(|(i, ip)| {
            let mut cfg = ServeConfig::on(ip);
            cfg.trusted_proxies = Some(lb_ip);
            Server::start_with_names(tmp, &format!("b{i}"), cfg, &[ip, lb_ip])
        })
        .collect()
}

/// The example's single `server` line, replaced by one line per backend (then the
/// placeholder where the comments name it).
pub fn server_lines(servers: &[Server]) -> [(&'static str, String); 2] {
    let lines: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| format!("server drain{} {}", i + 1, s.dest()))
        .collect();
    [
        ("server drain1 @BACKEND1@", lines.join("\n    ")),
        ("@BACKEND1@", servers[0].dest()),
    ]
}

/// The census over the three backends (panics on a message held by two), with the count
/// each holds printed; the source is empty.
pub fn census_of(servers: &[Server], tmp: &TempDir, expected: &BTreeMap<String, (String, String)>) {
    let refs: Vec<&Server> = servers.iter().collect();
    let counts: Vec<usize> = servers.iter().map(|s| s.ls().len()).collect();
    eprintln!(
        "census: {} messages, per backend {counts:?}",
        expected.len()
    );
    assert_census(&refs, &tmp.sub("src"), expected);
    assert!(
        counts.iter().filter(|c| **c > 0).count() >= 2,
        "the balancer spread the messages: {counts:?}"
    );
}

/// The run's finish reached every instance, not just the one the balancer picked. (Not
/// checked where backends were killed: one the balancer has just taken out may miss it, and
/// its keys then expire with `--dedupe-retention`.)
pub fn finish_reached_all(servers: &[Server]) {
    for s in servers {
        assert!(
            s.log()
                .contains("drain run finished; its dedupe keys are dropped"),
            "{}",
            s.log()
        );
    }
}

/// nginx from `examples/nginx.conf` in front of `servers`; returns it and its certificate.
pub fn nginx_balancer(tmp: &TempDir, servers: &[Server]) -> (Nginx, std::path::PathBuf) {
    let (cert, key) =
        drain::tls::write_self_signed(&["127.0.0.1".to_string()], tmp.path(), "nginx").unwrap();
    let lines: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let sep = if i == 0 { "" } else { "        server " };
            format!("{sep}{} max_fails=2 fail_timeout=5s;", s.dest())
        })
        .collect();
    let lb = Nginx::start(
        tmp,
        "127.0.0.1",
        &[
            ("@CERT@", cert.display().to_string()),
            ("@KEY@", key.display().to_string()),
            ("@BACKEND1@ max_fails=2 fail_timeout=5s;", lines.join("\n")),
        ],
    );
    (lb, cert)
}

/// HAProxy from `examples/haproxy-http.cfg` on 127.0.0.1 in front of `servers`, with a
/// certificate of its own (returned: what senders trust).
pub fn http_balancer(tmp: &TempDir, servers: &[Server]) -> (HaProxy, std::path::PathBuf) {
    let (cert, key) =
        drain::tls::write_self_signed(&["127.0.0.1".to_string()], tmp.path(), "lb").unwrap();
    let both = tmp.path().join("lb-both.pem");
    let pem = std::fs::read_to_string(&cert).unwrap() + &std::fs::read_to_string(&key).unwrap();
    std::fs::write(&both, pem).unwrap();
    let fill = [
        [("@CERT@", both.display().to_string())].as_slice(),
        &server_lines(servers),
    ]
    .concat();
    (
        HaProxy::start(tmp, "haproxy-http.cfg", "127.0.0.1", &fill),
        cert,
    )
}

/// HAProxy from `examples/haproxy-tcp.cfg` (passthrough, PROXY v2) on 127.0.0.1 in front of
/// `servers`; returns it and the bundle of the backends' certificates (what senders trust:
/// their TLS ends at the backend).
pub fn tcp_balancer(tmp: &TempDir, servers: &[Server]) -> (HaProxy, std::path::PathBuf) {
    let lb = HaProxy::start(tmp, "haproxy-tcp.cfg", "127.0.0.1", &server_lines(servers));
    let refs: Vec<&Server> = servers.iter().collect();
    (lb, ca_bundle(tmp, &refs))
}
