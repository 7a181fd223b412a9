//! Who may drain into this instance: `accept_drain_from`, and finding the original sender's
//! address behind trusted proxies (`X-Forwarded-For`, `Client-IP`).
//!
//! Invariant: the forwarding headers are read only when the TCP peer itself is a trusted proxy;
//! from anyone else they are ignored, so a client cannot claim another address.
//!
//! Used by `handler` (every request) and by the settings (`config`, and the CLI's flags),
//! which parse IPs and CIDRs with [`parse_net`] so both give the same messages.

use std::net::IpAddr;
use std::str::FromStr;

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

/// The forwarding headers of a request, as received.
#[derive(Default)]
pub struct Forwarded<'a> {
    pub x_forwarded_for: Option<&'a str>,
    pub client_ip: Option<&'a str>,
}

impl Access {
    /// The original client's address. From a trusted proxy: the right-most address of
    /// `X-Forwarded-For` that is not itself a trusted proxy (else `Client-IP`); from anyone
    /// else: the peer. A malformed header from a trusted proxy is an error naming it.
    pub fn client_addr(&self, peer: IpAddr, fwd: &Forwarded<'_>) -> Result<IpAddr, String> {
        let peer = peer.to_canonical();
        if !self.trusted_proxies.contains(peer) {
            return Ok(peer);
        }
        if let Some(xff) = fwd.x_forwarded_for {
            let mut chain = Vec::new();
            for part in xff.split(',').map(str::trim) {
                chain.push(parse_forwarded_ip(part).ok_or_else(|| {
                    format!("malformed X-Forwarded-For header {xff:?} from proxy {peer}")
                })?);
            }
            let client = chain
                .iter()
                .rev()
                .find(|ip| !self.trusted_proxies.contains(**ip))
                .or(chain.first())
                .copied();
            if let Some(ip) = client {
                return Ok(ip.to_canonical());
            }
        }
        if let Some(cip) = fwd.client_ip {
            return parse_forwarded_ip(cip.trim())
                .map(|ip| ip.to_canonical())
                .ok_or_else(|| format!("malformed Client-IP header {cip:?} from proxy {peer}"));
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

    #[test]
    fn forwarding_headers_only_from_trusted_proxies() {
        let a = Access {
            accept_from: "127.0.0.2/32".parse().unwrap(),
            trusted_proxies: "127.0.0.9, 10.1.0.0/16".parse().unwrap(),
        };
        let fwd = Forwarded {
            x_forwarded_for: Some("203.0.113.7, 127.0.0.2, 10.1.2.3"),
            client_ip: None,
        };
        assert_eq!(
            a.client_addr(ip("127.0.0.9"), &fwd).unwrap(),
            ip("127.0.0.2")
        );
        assert_eq!(
            a.client_addr(ip("127.0.0.5"), &fwd).unwrap(),
            ip("127.0.0.5")
        );
        let cip = Forwarded {
            x_forwarded_for: None,
            client_ip: Some("127.0.0.2"),
        };
        assert_eq!(
            a.client_addr(ip("127.0.0.9"), &cip).unwrap(),
            ip("127.0.0.2")
        );
        let bad = Forwarded {
            x_forwarded_for: Some("nonsense"),
            client_ip: None,
        };
        assert!(a.client_addr(ip("127.0.0.9"), &bad).is_err());
        assert!(a.client_addr(ip("127.0.0.5"), &bad).is_ok());
        assert!(a.allowed(ip("::ffff:127.0.0.2")));
        assert!(!a.allowed(ip("127.0.0.3")));
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
