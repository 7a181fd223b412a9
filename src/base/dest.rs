//! Destinations: where a drain sends, as the operator writes them.

use std::fmt;
use std::net::IpAddr;

/// Why a destination string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid destination {input:?}: {why}")]
pub struct BadDestination {
    pub input: String,
    pub why: &'static str,
}

/// A destination: host (IP or DNS name) and port, HTTPS.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    host: String,
    port: u16,
}

impl Destination {
    /// Parses `10.0.0.2`, `mx2.example.com:8443`, `[2001:db8::2]:443`, `2001:db8::2`
    /// (an optional `https://` prefix is accepted).
    pub fn parse(s: &str) -> Result<Destination, BadDestination> {
        let bad = |why: &'static str| BadDestination {
            input: s.to_string(),
            why,
        };
        let t = s.trim();
        let t = t
            .strip_prefix("https://")
            .unwrap_or(t)
            .trim_end_matches('/');
        if t.is_empty() {
            return Err(bad("empty"));
        }
        if t.contains("://") || t.contains('/') {
            return Err(bad("expected HOST or HOST:PORT (HTTPS is implied)"));
        }
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            let port = match after {
                "" => 443,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| bad("bad port"))?,
            };
            h.parse::<std::net::Ipv6Addr>()
                .map_err(|_| bad("not an IPv6 address inside [...]"))?;
            (h.to_string(), port)
        } else if t.parse::<std::net::Ipv6Addr>().is_ok() {
            (t.to_string(), 443)
        } else if let Some((h, p)) = t.rsplit_once(':') {
            (h.to_string(), p.parse().map_err(|_| bad("bad port"))?)
        } else {
            (t.to_string(), 443)
        };
        if port == 0 {
            return Err(bad("port 0"));
        }
        let host_ok = host.parse::<IpAddr>().is_ok()
            || host.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !host_ok {
            return Err(bad("not an IP address or host name"));
        }
        Ok(Destination {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://HOST:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{self}{path}")
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse() {
        let d = |s: &str| Destination::parse(s).map(|d| d.to_string());
        assert_eq!(d("10.0.0.2").unwrap(), "10.0.0.2:443");
        assert_eq!(d("MX2.example.com:8443").unwrap(), "mx2.example.com:8443");
        assert_eq!(d("[2001:db8::2]:443").unwrap(), "[2001:db8::2]:443");
        assert_eq!(d("2001:db8::2").unwrap(), "[2001:db8::2]:443");
        assert_eq!(d("https://127.0.0.2:9000/").unwrap(), "127.0.0.2:9000");
        assert_eq!(
            Destination::parse("[::1]:8443").unwrap().url("/v1/health"),
            "https://[::1]:8443/v1/health"
        );
        assert!(d("127.0.0.2:99999").is_err());
        assert!(d("http://x").is_err());
        assert!(d("a b").is_err());
    }
}
