//! `X-Forwarded-For` / `Client-IP` from a trusted proxy: any header text gives an address or
//! an error naming the header, never a panic; the address is the peer's or one written in
//! the headers, never anything else.
#![no_main]

use std::net::IpAddr;

use drain::intake::NetList;
use drain::intake::access::{Access, Forwarded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (xff, cip) = text.split_once('\n').unwrap_or((text, ""));
    let mut trusted = NetList::default();
    trusted
        .parse_into("127.0.0.1,10.0.0.0/8")
        .expect("valid list");
    let access = Access {
        accept_from: NetList::default(),
        trusted_proxies: trusted,
    };
    let peer: IpAddr = "127.0.0.1".parse().expect("ip");
    let fwd = Forwarded {
        x_forwarded_for: (!xff.is_empty()).then_some(xff),
        client_ip: (!cip.is_empty()).then_some(cip),
    };
    if let Ok(ip) = access.client_addr(peer, &fwd) {
        assert!(
            ip == peer || written(text).contains(&ip),
            "{ip} is neither the peer nor written in {text:?}"
        );
    }
});

/// Every address written in the header text, however it is spelled (`A::04` is `a::4`, with
/// or without a port or brackets): the oracle the parser's answer is checked against.
fn written(text: &str) -> Vec<IpAddr> {
    text.split([',', '\n', ' ', '\t'])
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
