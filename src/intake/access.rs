//! Who may drain into this instance: `accept_drain_from`, and finding the original sender's
//! address behind trusted proxies (`X-Forwarded-For`, `Client-IP`).
//!
//! Invariant: the forwarding headers are read only when the peer itself is a trusted proxy
//! (the peer being the TCP peer, or the address a trusted balancer's PROXY header carries, see
//! `proxy_header`); from anyone else they are ignored, so a client cannot claim another
//! address. Repeated lines are one list (`X-Forwarded-For`) or refused (`Client-IP`), so a
//! client's forged line cannot win over the one its proxy added.
//!
//! Used by `handler` (every request) and by the settings (`config`, and the CLI's flags),
//! which parse IPs and CIDRs with [`parse_net`] so both give the same messages.

use std::borrow::Cow;
use std::net::IpAddr;
use std::str::FromStr;

use hyper::HeaderMap;
use ipnet::IpNet;

/// A list of addresses and networks, as given on the command line (`IP` or `CIDR`, repeatable
/// or comma-separated).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetList(pub Vec<IpNet>);

impl NetList {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// Parses one or more comma-separated entries.
    pub fn parse_into(&mut self, s: &str) -> Result<(), String> {
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            self.0.push(parse_net(part)?);
        }
        Ok(())
    }
}

impl FromStr for NetList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut l = NetList::default();
        l.parse_into(s)?;
        Ok(l)
    }
}

/// Parses `IP` (a /32 or /128) or `IP/prefix`.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    if s.contains('/') {
        IpNet::from_str(s)
            .map(|n| n.trunc())
            .map_err(|_| format!("invalid CIDR {s:?} (expected for example 10.0.0.0/8)"))
    } else {
        IpAddr::from_str(s)
            .map(IpNet::from)
            .map_err(|_| format!("invalid IP address {s:?}"))
    }
}

/// The access policy of an intake server.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub accept_from: NetList,
    pub trusted_proxies: NetList,
}

/// The forwarding headers of a request, as received: every line of each, in order.
///
/// HAProxy's `option forwardfor` (and others) *add* an `X-Forwarded-For` line rather than
/// append to the client's, so the lines together are one list: only the right end of it was
/// written by proxies we trust.
#[derive(Clone, Debug, Default)]
pub struct Forwarded<'a> {
    pub x_forwarded_for: Vec<Cow<'a, str>>,
    pub client_ip: Vec<Cow<'a, str>>,
}

impl<'a> Forwarded<'a> {
    /// Every `X-Forwarded-For` and `Client-IP` line of `headers`, in order. A line that is not
    /// text is kept (lossily) so that, from a trusted proxy, it is refused naming its value.
    pub fn from_headers(headers: &'a HeaderMap) -> Forwarded<'a> {
        let lines = |name: &str| {
            headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()))
                .collect()
        };
        Forwarded {
            x_forwarded_for: lines("x-forwarded-for"),
            client_ip: lines("client-ip"),
        }
    }
}

/// Why the forwarding headers of a trusted proxy's request were refused (a `400`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForwardingError {
    #[error("invalid address {value:?} in the {header} header from proxy {proxy}")]
    Invalid {
        header: &'static str,
        value: String,
        proxy: IpAddr,
    },
    #[error(
        "{count} Client-IP header lines from proxy {proxy}: ambiguous, send at most one \
         (a client may have forged one)"
    )]
    RepeatedClientIp { count: usize, proxy: IpAddr },
}

impl Access {
    /// The original client's address. From a trusted proxy: the right-most address of the
    /// `X-Forwarded-For` lines (read as one list, in order) that is not itself a trusted proxy,
    /// or the left-most when all are; without that header, the single `Client-IP`. From anyone
    /// else: the peer, whatever the headers say.
    pub fn client_addr(
        &self,
        peer: IpAddr,
        fwd: &Forwarded<'_>,
    ) -> Result<IpAddr, ForwardingError> {
        let peer = peer.to_canonical();
        if !self.trusted_proxies.contains(peer) {
            return Ok(peer);
        }
        if fwd.client_ip.len() > 1 {
            return Err(ForwardingError::RepeatedClientIp {
                count: fwd.client_ip.len(),
                proxy: peer,
            });
        }
        let invalid = |header, value: &str| ForwardingError::Invalid {
            header,
            value: value.to_string(),
            proxy: peer,
        };
        let mut chain = Vec::new();
        for part in fwd.x_forwarded_for.iter().flat_map(|l| l.split(',')) {
            let part = part.trim();
            chain.push(parse_forwarded_ip(part).ok_or_else(|| invalid("X-Forwarded-For", part))?);
        }
        let client = chain
            .iter()
            .rev()
            .find(|ip| !self.trusted_proxies.contains(**ip))
            .or(chain.first());
        if let Some(ip) = client {
            return Ok(ip.to_canonical());
        }
        if let Some(cip) = fwd.client_ip.first() {
            return parse_forwarded_ip(cip.trim())
                .map(|ip| ip.to_canonical())
                .ok_or_else(|| invalid("Client-IP", cip.trim()));
        }
        Ok(peer)
    }

    pub fn allowed(&self, client: IpAddr) -> bool {
        self.accept_from.contains(client)
    }
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:443`.
fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = IpAddr::from_str(s) {
        return Some(ip);
    }
    if let Ok(sa) = std::net::SocketAddr::from_str(s) {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| IpAddr::from_str(r).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn access() -> Access {
        Access {
            accept_from: "127.0.0.2/32".parse().unwrap(),
            trusted_proxies: "127.0.0.9, 10.1.0.0/16".parse().unwrap(),
        }
    }

    fn fwd<'a>(xff: &[&'a str], cip: &[&'a str]) -> Forwarded<'a> {
        Forwarded {
            x_forwarded_for: xff.iter().map(|s| Cow::Borrowed(*s)).collect(),
            client_ip: cip.iter().map(|s| Cow::Borrowed(*s)).collect(),
        }
    }

    #[test]
    fn forwarding_headers_only_from_trusted_proxies() {
        let a = access();
        let f = fwd(&["203.0.113.7, 127.0.0.2, 10.1.2.3"], &[]);
        assert_eq!(a.client_addr(ip("127.0.0.9"), &f), Ok(ip("127.0.0.2")));
        assert_eq!(a.client_addr(ip("127.0.0.5"), &f), Ok(ip("127.0.0.5")));
        let cip = fwd(&[], &["127.0.0.2"]);
        assert_eq!(a.client_addr(ip("127.0.0.9"), &cip), Ok(ip("127.0.0.2")));
        let bad = fwd(&["nonsense"], &[]);
        assert_eq!(
            a.client_addr(ip("127.0.0.9"), &bad),
            Err(ForwardingError::Invalid {
                header: "X-Forwarded-For",
                value: "nonsense".into(),
                proxy: ip("127.0.0.9"),
            })
        );
        assert_eq!(a.client_addr(ip("127.0.0.5"), &bad), Ok(ip("127.0.0.5")));
        assert!(a.allowed(ip("::ffff:127.0.0.2")));
        assert!(!a.allowed(ip("127.0.0.3")));
    }

    /// HAProxy's `option forwardfor` adds a line after the client's: the forged first line
    /// must not win.
    #[test]
    fn a_forged_first_line_loses_to_the_line_the_proxy_added() {
        let a = access();
        let f = fwd(&["127.0.0.2", "127.0.0.7"], &[]);
        assert_eq!(a.client_addr(ip("127.0.0.9"), &f), Ok(ip("127.0.0.7")));
        // Two proxies, each adding its line: the right-most untrusted one is the client.
        let f = fwd(&["127.0.0.2, 198.51.100.4", "10.1.0.5"], &[]);
        assert_eq!(a.client_addr(ip("127.0.0.9"), &f), Ok(ip("198.51.100.4")));
        // All trusted: the left-most.
        let f = fwd(&["10.1.0.1", "10.1.0.2"], &[]);
        assert_eq!(a.client_addr(ip("127.0.0.9"), &f), Ok(ip("10.1.0.1")));
        // Ports and brackets as proxies write them.
        let f = fwd(&["[2001:db8::1]:443", "192.0.2.1:5678"], &[]);
        assert_eq!(a.client_addr(ip("127.0.0.9"), &f), Ok(ip("192.0.2.1")));
        // X-Forwarded-For wins over Client-IP.
        let f = fwd(&["192.0.2.1"], &["127.0.0.2"]);
        assert_eq!(a.client_addr(ip("127.0.0.9"), &f), Ok(ip("192.0.2.1")));
    }

    #[test]
    fn repeated_client_ip_and_bad_entries_are_refused_naming_them() {
        let a = access();
        let f = fwd(&[], &["127.0.0.2", "127.0.0.7"]);
        assert_eq!(
            a.client_addr(ip("127.0.0.9"), &f),
            Err(ForwardingError::RepeatedClientIp {
                count: 2,
                proxy: ip("127.0.0.9")
            })
        );
        // An empty entry in the list (`a,,b`) is not an address.
        let e = a
            .client_addr(ip("127.0.0.9"), &fwd(&["127.0.0.2", "192.0.2.1,,"], &[]))
            .unwrap_err();
        assert!(e.to_string().contains("invalid address \"\""), "{e}");
        let e = a
            .client_addr(ip("127.0.0.9"), &fwd(&[], &["300.1.1.1"]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid address \"300.1.1.1\" in the Client-IP header from proxy 127.0.0.9"
        );
        // From a peer that is not a trusted proxy, nothing of this is read.
        assert_eq!(a.client_addr(ip("127.0.0.5"), &f), Ok(ip("127.0.0.5")));
    }

    #[test]
    fn every_line_of_the_headers_is_collected_in_order() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "127.0.0.2".parse().unwrap());
        h.append("client-ip", "127.0.0.3".parse().unwrap());
        h.append("x-forwarded-for", "127.0.0.7, 10.1.0.1".parse().unwrap());
        let f = Forwarded::from_headers(&h);
        assert_eq!(f.x_forwarded_for, ["127.0.0.2", "127.0.0.7, 10.1.0.1"]);
        assert_eq!(f.client_ip, ["127.0.0.3"]);
        assert_eq!(
            access().client_addr(ip("127.0.0.9"), &f),
            Ok(ip("127.0.0.7"))
        );
    }

    #[test]
    fn cidrs_parse_and_name_bad_values() {
        let l: NetList = "10.0.0.1,192.168.0.0/16 , ::1".parse().unwrap();
        assert_eq!(l.0.len(), 3);
        assert!(
            "10.0.0.0/33"
                .parse::<NetList>()
                .unwrap_err()
                .contains("10.0.0.0/33")
        );
    }
}
