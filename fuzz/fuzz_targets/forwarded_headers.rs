//! `X-Forwarded-For` / `Client-IP` from a trusted proxy: any header text gives an address or
//! an error naming the header, never a panic; the address is the peer's or one written in
//! the headers, never anything else. Each input line is one header line: `c:` starts a
//! `Client-IP` line, anything else an `X-Forwarded-For` line (repeated lines are one list).
#![no_main]

use std::net::IpAddr;

use drain::intake::NetList;
use drain::intake::access::{Access, Forwarded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut trusted = NetList::default();
    trusted
        .parse_into("127.0.0.1,10.0.0.0/8")
        .expect("valid list");
    let access = Access {
        accept_from: NetList::default(),
        trusted_proxies: trusted,
    };
    let peer: IpAddr = "127.0.0.1".parse().expect("ip");
    let mut fwd = Forwarded::default();
    for line in text.lines() {
        match line.strip_prefix("c:") {
            Some(cip) => fwd.client_ip.push(cip.into()),
            None => fwd.x_forwarded_for.push(line.into()),
        }
    }
    let several_cip = fwd.client_ip.len() > 1;
    let answer = access.client_addr(peer, &fwd);
    assert!(
        !several_cip || answer.is_err(),
        "several Client-IP lines accepted"
    );
    if let Ok(ip) = answer {
        assert!(
            ip == peer || written(text).contains(&ip),
            "{ip} is neither the peer nor written in {text:?}"
        );
    }
});

/// Every address written in the header text, however it is spelled (`A::04` is `a::4`, with
/// or without a port or brackets): the oracle the parser's answer is checked against.
fn written(text: &str) -> Vec<IpAddr> {
    // Split on every whitespace the parser trims (`str::trim`: form feed too).
    text.split(|c: char| c == ',' || c.is_whitespace())
        // A token may be a `Client-IP` line's start, or an address that begins with `c:`.
        .flat_map(|t| [Some(t), t.strip_prefix("c:")])
        .flatten()
        .map(str::trim)
        .filter_map(|t| {
            let t = t.trim_matches('"');
            t.parse::<IpAddr>()
                .ok()
                .or_else(|| t.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
                .or_else(|| {
                    t.strip_prefix('[')
                        .and_then(|r| r.split(']').next())
                        .and_then(|r| r.parse().ok())
                })
                .or_else(|| t.rsplit_once(':').and_then(|(h, _)| h.parse().ok()))
        })
        .map(|ip: IpAddr| ip.to_canonical())
        .collect()
}
