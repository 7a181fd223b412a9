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
    /// Parses `10.0.0.2`, `mx2.example.com:8443`, `[2001:db8::2]:443`, `2001:db8::2`,
    /// `localhost.`. Refused, so that nothing ever connects to a string the operator did not
    /// mean: URLs, paths, `1.2.3` (which a resolver would read as 1.2.0.3), `999.1.1.1` and
    /// anything else that is neither an IP address nor a valid DNS name.
    pub fn parse(s: &str) -> Result<Destination, BadDestination> {
        let bad = |why: &'static str| BadDestination {
            input: s.to_string(),
            why,
        };
        let t = s.trim();
        if t.is_empty() {
            return Err(bad("empty"));
        }
        if t.contains("://") || t.contains('/') {
            return Err(bad(
                "expected HOST or HOST:PORT, not a URL (HTTPS is implied)",
            ));
        }
        let (host, port) = split_host_port(t).map_err(bad)?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        let host = if host.parse::<IpAddr>().is_ok() {
            host.to_string()
        } else {
            check_dns_name(host).map_err(bad)?;
            host.trim_end_matches('.').to_ascii_lowercase()
        };
        Ok(Destination { host, port })
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

/// Checks a `--bind-ip` before anything is sent: it must be an address of this machine (a
/// socket binds to it) and of the same family as every destination written as an IP address.
/// Without this, a wrong one fails every connection as "network unreachable", forever.
pub fn check_bind_ip(ip: IpAddr, dests: &[Destination]) -> Result<(), String> {
    if let Err(e) = std::net::UdpSocket::bind((ip, 0)) {
        return Err(format!(
            "--bind-ip {ip}: cannot bind to it ({e}); it must be an address of this machine"
        ));
    }
    for d in dests {
        if let Ok(dip) = d.host.parse::<IpAddr>()
            && dip.is_ipv4() != ip.is_ipv4()
        {
            let fam = |a: IpAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(format!(
                "--bind-ip {ip} is {} but destination {d} is {}: no connection is possible",
                fam(ip),
                fam(dip)
            ));
        }
    }
    Ok(())
}

/// Splits `HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT` or a bare IPv6 address (port 443 unless
/// given).
fn split_host_port(t: &str) -> Result<(&str, u16), &'static str> {
    if let Some(rest) = t.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("missing ']'")?;
        h.parse::<std::net::Ipv6Addr>()
            .map_err(|_| "not an IPv6 address inside [...]")?;
        let port = match after {
            "" => 443,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .ok_or("bad port")?,
        };
        return Ok((h, port));
    }
    if t.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok((t, 443));
    }
    match t.rsplit_once(':') {
        Some((h, p)) => Ok((h, p.parse().map_err(|_| "bad port")?)),
        None => Ok((t, 443)),
    }
}

/// A DNS host name (RFC 1123): labels of 1 to 63 letters, digits and inner hyphens, at most
/// 253 characters, an optional final dot; the last label is not all digits, so a malformed
/// IPv4 address such as `1.2.3` or `999.1.1.1` is refused rather than resolved.
fn check_dns_name(host: &str) -> Result<(), &'static str> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err("not an IP address or host name");
    }
    let mut last = "";
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err("not an IP address or host name");
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err("all-numeric, but not a valid IPv4 address");
    }
    Ok(())
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
        assert_eq!(d("localhost.").unwrap(), "localhost:443");
        assert_eq!(d("mx-2.example.com.:25").unwrap(), "mx-2.example.com:25");
        assert_eq!(
            Destination::parse("[::1]:8443").unwrap().url("/v1/health"),
            "https://[::1]:8443/v1/health"
        );
        // Parsed only: none of these may ever be connected to.
        for bad in [
            "127.0.0.2:99999",
            "http://x",
            "https://127.0.0.2:9000/",
            "a b",
            "1.2.3",
            "999.1.1.1",
            "1.2.3.4.5",
            "256.0.0.1:443",
            "-mx.example.com",
            "mx..example.com",
            "mx_1.example.com",
            "[::1",
            "[1.2.3.4]:443",
            "host:",
            "host:0",
            ".",
            "",
        ] {
            let e = Destination::parse(bad).unwrap_err();
            assert_eq!(e.input, bad);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert_eq!(
            Destination::parse("1.2.3").unwrap_err().why,
            "all-numeric, but not a valid IPv4 address"
        );
        let long = format!("{}.com", "a".repeat(64));
        assert!(d(&long).is_err());
    }

    #[test]
    fn bind_ip_must_be_local_and_of_the_destinations_family() {
        let v4 = [Destination::parse("127.0.0.2:9000").unwrap()];
        let named = [Destination::parse("localhost:9000").unwrap()];
        assert!(check_bind_ip("127.0.0.1".parse().unwrap(), &v4).is_ok());
        let e = check_bind_ip("::1".parse().unwrap(), &v4).unwrap_err();
        assert!(
            e.contains("is IPv6 but destination 127.0.0.2:9000 is IPv4"),
            "{e}"
        );
        assert!(check_bind_ip("::1".parse().unwrap(), &named).is_ok());
        // TEST-NET-1 (RFC 5737) is never an address of this machine; binding fails locally
        // without sending anything.
        let e = check_bind_ip("192.0.2.1".parse().unwrap(), &v4).unwrap_err();
        assert!(e.contains("cannot bind"), "{e}");
    }
}
