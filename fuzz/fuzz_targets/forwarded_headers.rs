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
        let s = ip.to_string();
        assert!(
            ip == peer || text.contains(&s) || text.to_ascii_lowercase().contains(&s),
            "{ip} is neither the peer nor in {text:?}"
        );
    }
});
