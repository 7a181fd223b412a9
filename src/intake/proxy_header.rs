//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a TCP-passthrough balancer
//! (HAProxy `send-proxy-v2`, nginx `proxy_protocol on`, cloud network balancers) writes at the
//! start of a connection, before any TLS byte, to say whom the connection really comes from.
//!
//! Wire format (<https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt>):
//!
//! ```text
//! v1 (text, at most 107 bytes including the CRLF):
//!   "PROXY TCP4 <src ip> <dst ip> <src port> <dst port>\r\n"
//!   "PROXY TCP6 <src ip> <dst ip> <src port> <dst port>\r\n"
//!   "PROXY UNKNOWN[ anything]\r\n"               (addresses unknown: use the TCP peer)
//! v2 (binary, 16 bytes then `len` bytes):
//!   signature  12 bytes  \r\n\r\n\0\r\nQUIT\n
//!   ver_cmd    1 byte    0x2_ : version 2; low nibble 0 = LOCAL (the balancer's own
//!                        connection, e.g. a health check: use the TCP peer), 1 = PROXY
//!   fam_proto  1 byte    0x11 TCP over IPv4, 0x21 TCP over IPv6; 0x00 UNSPEC, 0x3_ UNIX:
//!                        addresses not usable here (use the TCP peer)
//!   len        2 bytes   big-endian length of what follows
//!   addresses  IPv4: src 4, dst 4, src port 2, dst port 2 (12 bytes);
//!              IPv6: src 16, dst 16, src port 2, dst port 2 (36 bytes)
//!   TLVs       the rest of `len`: skipped
//! ```
//!
//! A TLS connection starts with 0x16, so the first byte tells a header (`P` or `\r`) from TLS
//! without consuming anything. Invariants: [`read`] never reads a byte past the header (the
//! TLS handshake follows on the same stream); a header is at most [`V1_MAX`] or
//! `16 + `[`V2_MAX_PAYLOAD`] bytes, whatever it declares. Whether a peer may send one at all is
//! the caller's (`listener`) decision. [`ProxyHeader::encode`] writes a header back (tests,
//! fuzzing).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The first bytes of a v1 header.
pub const V1_PREFIX: &[u8] = b"PROXY ";
/// Longest v1 header, CRLF included (the specification's bound).
pub const V1_MAX: usize = 107;
/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v2 payload (addresses and TLVs) accepted: far above what balancers send (36 bytes
/// of IPv6 addresses plus a few TLVs), far below the 64 KiB the length field allows.
pub const V2_MAX_PAYLOAD: usize = 2048;

/// Which version a header was written in (kept so a header is written back as it came).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A parsed header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    pub version: Version,
    /// The original connection's source and destination; `None` when the header says to use
    /// the TCP peer (v1 `UNKNOWN`, v2 `LOCAL`, v2 UNSPEC or UNIX addresses).
    pub addresses: Option<Addresses>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// Why a header was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY v1 header longer than {V1_MAX} bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 header: {0}")]
    V1Malformed(String),
    #[error("PROXY v2 header declares {0} bytes (at most {V2_MAX_PAYLOAD})")]
    V2TooLong(usize),
    #[error("malformed PROXY v2 header: {0}")]
    V2Malformed(String),
    #[error("connection closed in the PROXY header")]
    Truncated,
    #[error("reading the PROXY header failed: {0}")]
    Io(String),
}

/// What the first byte of a connection says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Anything else, TLS's 0x16 included: no PROXY header.
    Other,
    /// `P` or `\r`: a PROXY header (v1 or v2), or garbage that is not TLS either.
    MaybeProxy,
}

pub fn classify(first: u8) -> Start {
    match first {
        b'P' | b'\r' => Start::MaybeProxy,
        _ => Start::Other,
    }
}

/// Whether `prefix` (the first bytes of a connection, perhaps fewer than a signature) starts
/// as a PROXY header of either version.
pub fn looks_like_proxy(prefix: &[u8]) -> bool {
    let starts = |sig: &[u8]| {
        let n = prefix.len().min(sig.len());
        n > 0 && prefix[..n] == sig[..n]
    };
    starts(V1_PREFIX) || starts(&V2_SIGNATURE)
}

/// Reads one header from the start of `r`, exactly its bytes and no more. The caller bounds
/// the time it may take.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<ProxyHeader, ProxyError> {
    let mut first = [0u8; 1];
    fill(r, &mut first).await?;
    match first[0] {
        b'P' => read_v1(r, first[0]).await,
        b'\r' => read_v2(r, first[0]).await,
        _ => Err(ProxyError::NotProxy),
    }
}

async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), ProxyError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProxyError::Truncated),
        Err(e) => Err(ProxyError::Io(e.to_string())),
    }
}

/// v1: byte by byte up to the CRLF (at most [`V1_MAX`] small reads, once per connection from
/// a trusted balancer), since reading ahead would swallow the TLS handshake that follows.
async fn read_v1<R: AsyncRead + Unpin>(r: &mut R, first: u8) -> Result<ProxyHeader, ProxyError> {
    let mut line = vec![first];
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(ProxyError::V1TooLong);
        }
        fill(r, &mut b).await?;
        line.push(b[0]);
        if !looks_like_proxy(&line) {
            return Err(ProxyError::NotProxy);
        }
    }
    parse_v1(&line)
}

async fn read_v2<R: AsyncRead + Unpin>(r: &mut R, first: u8) -> Result<ProxyHeader, ProxyError> {
    let mut head = [0u8; 16];
    head[0] = first;
    fill(r, &mut head[1..]).await?;
    let len = v2_payload_len(&head)?;
    let mut payload = vec![0u8; len];
    fill(r, &mut payload).await?;
    parse_v2(&head, &payload)
}

/// Parses a whole header from `buf`: the header and how many bytes it took; `Ok(None)` when
/// `buf` is a valid beginning that needs more bytes.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    if !looks_like_proxy(buf) {
        return Err(ProxyError::NotProxy);
    }
    if buf.starts_with(V1_PREFIX) || V1_PREFIX.starts_with(buf) {
        let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
            return if buf.len() >= V1_MAX {
                Err(ProxyError::V1TooLong)
            } else {
                Ok(None)
            };
        };
        if end + 2 > V1_MAX {
            return Err(ProxyError::V1TooLong);
        }
        return parse_v1(&buf[..end + 2]).map(|h| Some((h, end + 2)));
    }
    let Some(head) = buf.get(..16) else {
        return Ok(None);
    };
    let len = v2_payload_len(head)?;
    match buf.get(16..16 + len) {
        Some(payload) => parse_v2(head, payload).map(|h| Some((h, 16 + len))),
        None => Ok(None),
    }
}

fn v1_err(line: &[u8], what: &str) -> ProxyError {
    ProxyError::V1Malformed(format!(
        "{what} in {:?}",
        String::from_utf8_lossy(&line[..line.len().min(V1_MAX)])
    ))
}

/// One whole v1 line, CRLF included.
fn parse_v1(line: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let text = std::str::from_utf8(line).map_err(|_| v1_err(line, "not ASCII"))?;
    let body = text
        .strip_prefix("PROXY ")
        .and_then(|t| t.strip_suffix("\r\n"))
        .ok_or_else(|| v1_err(line, "no PROXY prefix or CRLF"))?;
    if body == "UNKNOWN" || body.starts_with("UNKNOWN ") {
        return Ok(ProxyHeader {
            version: Version::V1,
            addresses: None,
        });
    }
    let f: Vec<&str> = body.split(' ').collect();
    let [proto, src, dst, sport, dport] = f[..] else {
        return Err(v1_err(line, "expected protocol, 2 addresses and 2 ports"));
    };
    let ip = |s: &str| -> Result<IpAddr, ProxyError> {
        let ip: IpAddr = s.parse().map_err(|_| v1_err(line, "bad address"))?;
        match (proto, ip) {
            ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
            ("TCP4" | "TCP6", _) => Err(v1_err(line, "address of the wrong family")),
            _ => Err(v1_err(line, "unknown protocol")),
        }
    };
    let port = |s: &str| -> Result<u16, ProxyError> {
        let ok = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| s.parse().ok())
            .flatten()
            .ok_or_else(|| v1_err(line, "bad port"))
    };
    Ok(ProxyHeader {
        version: Version::V1,
        addresses: Some(Addresses {
            source: SocketAddr::new(ip(src)?, port(sport)?),
            destination: SocketAddr::new(ip(dst)?, port(dport)?),
        }),
    })
}

/// The payload length a v2 header's first 16 bytes declare, checked against the bound.
fn v2_payload_len(head: &[u8]) -> Result<usize, ProxyError> {
    if head.get(..12) != Some(&V2_SIGNATURE[..]) || head.len() < 16 {
        return Err(ProxyError::NotProxy);
    }
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if len > V2_MAX_PAYLOAD {
        return Err(ProxyError::V2TooLong(len));
    }
    Ok(len)
}

fn parse_v2(head: &[u8], payload: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let bad = |s: String| Err(ProxyError::V2Malformed(s));
    let (ver_cmd, fam) = (head[12], head[13]);
    if ver_cmd >> 4 != 2 {
        return bad(format!("version {} (expected 2)", ver_cmd >> 4));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        c => return bad(format!("unknown command {c}")),
    };
    let header = |addresses| {
        Ok(ProxyHeader {
            version: Version::V2,
            addresses,
        })
    };
    if local {
        return header(None);
    }
    let need = match fam {
        0x11 => 12,
        0x21 => 36,
        0x00 | 0x31 | 0x32 => return header(None),
        f => return bad(format!("unsupported address family/protocol {f:#04x}")),
    };
    let Some(a) = payload.get(..need) else {
        return bad(format!("{} address bytes, {need} needed", payload.len()));
    };
    let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
    let (src, dst, ports): (IpAddr, IpAddr, usize) = if fam == 0x11 {
        let v4 = |i: usize| Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]);
        (v4(0).into(), v4(4).into(), 8)
    } else {
        let v6 = |i: usize| {
            let mut o = [0u8; 16];
            o.copy_from_slice(&a[i..i + 16]);
            Ipv6Addr::from(o)
        };
        (v6(0).into(), v6(16).into(), 32)
    };
    header(Some(Addresses {
        source: SocketAddr::new(src, port(ports)),
        destination: SocketAddr::new(dst, port(ports + 2)),
    }))
}

impl ProxyHeader {
    /// The header's bytes, in its version (v1 `TCP4`/`TCP6` or `UNKNOWN`; v2 `PROXY` over
    /// TCP, or `LOCAL` when it carries no addresses). Addresses of two different families
    /// cannot be written: `None` then.
    pub fn encode(&self) -> Option<Vec<u8>> {
        match (self.version, self.addresses) {
            (Version::V1, None) => Some(b"PROXY UNKNOWN\r\n".to_vec()),
            (Version::V1, Some(a)) => {
                let proto = match (a.source.ip(), a.destination.ip()) {
                    (IpAddr::V4(_), IpAddr::V4(_)) => "TCP4",
                    (IpAddr::V6(_), IpAddr::V6(_)) => "TCP6",
                    _ => return None,
                };
                let line = format!(
                    "PROXY {proto} {} {} {} {}\r\n",
                    a.source.ip(),
                    a.destination.ip(),
                    a.source.port(),
                    a.destination.port()
                );
                Some(line.into_bytes())
            }
            (Version::V2, None) => {
                let mut out = V2_SIGNATURE.to_vec();
                out.extend_from_slice(&[0x20, 0x00, 0, 0]);
                Some(out)
            }
            (Version::V2, Some(a)) => encode_v2(a),
        }
    }
}

fn encode_v2(a: Addresses) -> Option<Vec<u8>> {
    let mut out = V2_SIGNATURE.to_vec();
    match (a.source.ip(), a.destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x21, 0x11, 0, 12]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.extend_from_slice(&[0x21, 0x21, 0, 36]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        _ => return None,
    }
    out.extend_from_slice(&a.source.port().to_be_bytes());
    out.extend_from_slice(&a.destination.port().to_be_bytes());
    Some(out)
}

#[cfg(test)]
#[path = "proxy_header_tests.rs"]
mod tests;
