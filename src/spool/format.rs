//! The spool file format: one message per file, the same bytes on every instance.
//!
//! A spool file is what travels: the drain sends a file's bytes unchanged and the receiver
//! writes them unchanged, so a message's `hash` (BLAKE3 of the whole file) is the same on every
//! instance it passes through, and invariant 4 (id, envelope, body, queue, attempts, next retry
//! time kept exactly) holds by construction.
//!
//! ```text
//! DRAIN-SPOOL/1 <header-length>\n      first line, ASCII; header-length in decimal bytes
//! <header JSON, one line>\n            exactly header-length bytes, then one LF
//! <body>                               exactly header.body_len bytes, kept byte for byte
//! ```
//!
//! The header is a JSON object (unknown fields are ignored, so a later version may add some):
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `id` | 32 lower-case hex digits | 128-bit id assigned when the message was first stored |
//! | `queue` | `queue`, `bounce-lite`, `bounce-full`, `submission` | the queue kind |
//! | `from` | string | envelope sender |
//! | `to` | array of strings | envelope recipients (at least one) |
//! | `attempts` | integer | delivery attempts made so far |
//! | `next_retry_at` | RFC 3339 UTC or null | when the next attempt is due; null: never attempted |
//! | `created_at` | RFC 3339 UTC | when the message was first stored |
//! | `properties` | object of string to string | free-form properties |
//! | `body_len` | integer | length of the body in bytes (detects truncation) |
//!
//! Parsing never trusts the input: the first line is bounded, the header length is capped at
//! [`MAX_HEADER_LEN`], and the file length must equal header plus body exactly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::base::{ContentHash, MessageId, QueueKind, Timestamp};

/// Magic prefix of the first line.
pub const MAGIC: &[u8] = b"DRAIN-SPOOL/";
/// The only version this build writes and reads.
pub const VERSION: u32 = 1;
/// Largest header accepted (recipients lists can be long, but not unbounded).
pub const MAX_HEADER_LEN: usize = 4 << 20;
/// Longest first line accepted: magic, version, space, length, LF.
const MAX_FIRST_LINE: usize = 40;

/// Why a spool file's bytes are not a valid message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not a spool file (bad magic on the first line)")]
    BadMagic,
    #[error("unsupported spool format version {0} (this build reads version {VERSION})")]
    Version(u32),
    #[error("malformed first line")]
    FirstLine,
    #[error("header length {0} exceeds the limit of {MAX_HEADER_LEN} bytes")]
    HeaderTooLarge(usize),
    #[error("file truncated: {0}")]
    Truncated(&'static str),
    #[error("invalid header: {0}")]
    Header(String),
    #[error("body is {actual} bytes but the header says {expected}")]
    BodyLength { expected: u64, actual: u64 },
}

/// The envelope and metadata of a message: everything but the body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub id: MessageId,
    pub queue: QueueKind,
    pub from: String,
    pub to: Vec<String>,
    pub attempts: u32,
    pub next_retry_at: Option<Timestamp>,
    pub created_at: Timestamp,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    pub body_len: u64,
}

/// Encodes a whole spool file. `header.body_len` is set from `body`.
pub fn encode(header: &Header, body: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut header = header.clone();
    header.body_len = body.len() as u64;
    if header.to.is_empty() {
        return Err(FormatError::Header("no recipients".into()));
    }
    let json = serde_json::to_vec(&header).map_err(|e| FormatError::Header(e.to_string()))?;
    if json.len() > MAX_HEADER_LEN {
        return Err(FormatError::HeaderTooLarge(json.len()));
    }
    let first = format!("DRAIN-SPOOL/{VERSION} {}\n", json.len());
    let mut out = Vec::with_capacity(first.len() + json.len() + 1 + body.len());
    out.extend_from_slice(first.as_bytes());
    out.extend_from_slice(&json);
    out.push(b'\n');
    out.extend_from_slice(body);
    Ok(out)
}

/// A parsed spool file: the header and where the body starts in the bytes.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub header: Header,
    pub body_offset: usize,
}

/// Parses the first line only; returns (header length, offset of the header).
fn parse_first_line(bytes: &[u8]) -> Result<(usize, usize), FormatError> {
    let window = &bytes[..bytes.len().min(MAX_FIRST_LINE)];
    if !window.starts_with(MAGIC) {
        if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) {
            return Err(FormatError::Truncated("in the first line"));
        }
        return Err(FormatError::BadMagic);
    }
    let nl = window
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(if bytes.len() < MAX_FIRST_LINE {
            FormatError::Truncated("in the first line")
        } else {
            FormatError::FirstLine
        })?;
    let line = std::str::from_utf8(&window[MAGIC.len()..nl]).map_err(|_| FormatError::FirstLine)?;
    let (ver, len) = line.split_once(' ').ok_or(FormatError::FirstLine)?;
    let ver: u32 = ver.parse().map_err(|_| FormatError::FirstLine)?;
    if ver != VERSION {
        return Err(FormatError::Version(ver));
    }
    let len: usize = len.parse().map_err(|_| FormatError::FirstLine)?;
    if len > MAX_HEADER_LEN {
        return Err(FormatError::HeaderTooLarge(len));
    }
    Ok((len, nl + 1))
}

/// Where the header ends (the offset just past its line feed), from the first line alone.
/// `prefix` needs only the first line (at most 40 bytes).
pub fn header_end(prefix: &[u8]) -> Result<u64, FormatError> {
    let (hlen, hstart) = parse_first_line(prefix)?;
    Ok((hstart + hlen + 1) as u64)
}

/// Checks a file's first line and header, given its first bytes (through the header's line
/// feed) and the file's total size: the body must be exactly `body_len` bytes. Lets a reader
/// refuse a truncated or padded file before reading its body.
pub fn check_size(prefix: &[u8], file_len: u64) -> Result<(), FormatError> {
    let (hlen, hstart) = parse_first_line(prefix)?;
    let hend = hstart + hlen;
    if prefix.len() < hend + 1 {
        return Err(FormatError::Truncated("in the header"));
    }
    let header = parse_header(&prefix[hstart..=hend])?;
    let actual = file_len.saturating_sub((hend + 1) as u64);
    if actual != header.body_len {
        return Err(FormatError::BodyLength {
            expected: header.body_len,
            actual,
        });
    }
    Ok(())
}

/// Parses the header JSON and its line feed.
fn parse_header(with_lf: &[u8]) -> Result<Header, FormatError> {
    let Some((b'\n', json)) = with_lf.split_last() else {
        return Err(FormatError::Header(
            "header not followed by a line feed".into(),
        ));
    };
    let header: Header =
        serde_json::from_slice(json).map_err(|e| FormatError::Header(e.to_string()))?;
    if header.to.is_empty() {
        return Err(FormatError::Header("no recipients".into()));
    }
    Ok(header)
}

/// Parses a whole spool file's bytes, checking every length.
pub fn parse(bytes: &[u8]) -> Result<Parsed, FormatError> {
    let (hlen, hstart) = parse_first_line(bytes)?;
    let hend = hstart + hlen;
    if bytes.len() < hend + 1 {
        return Err(FormatError::Truncated("in the header"));
    }
    let header = parse_header(&bytes[hstart..=hend])?;
    let body_offset = hend + 1;
    let actual = (bytes.len() - body_offset) as u64;
    if actual != header.body_len {
        return Err(FormatError::BodyLength {
            expected: header.body_len,
            actual,
        });
    }
    Ok(Parsed {
        header,
        body_offset,
    })
}

/// BLAKE3 of a whole spool file, the message's `hash` everywhere.
pub fn hash(bytes: &[u8]) -> ContentHash {
    ContentHash::of(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(body: &[u8]) -> Vec<u8> {
        let h = Header {
            id: MessageId([7; 16]),
            queue: QueueKind::BounceFull,
            from: "a@example.com".into(),
            to: vec!["b@example.com".into()],
            attempts: 3,
            next_retry_at: Some(Timestamp::parse("2030-01-02T03:04:05.123456789+02:00").unwrap()),
            created_at: Timestamp::parse("2026-01-01T00:00:00Z").unwrap(),
            properties: BTreeMap::from([("k".into(), "v\nw".into())]),
            body_len: 0,
        };
        encode(&h, body).unwrap()
    }

    #[test]
    fn round_trip_keeps_everything() {
        let body = b"line\r\nbare\nno final\xff\x00";
        let bytes = sample(body);
        let p = parse(&bytes).unwrap();
        assert_eq!(&bytes[p.body_offset..], body);
        assert_eq!(p.header.attempts, 3);
        assert_eq!(
            p.header.next_retry_at.unwrap().to_string(),
            "2030-01-02T01:04:05.123456789Z"
        );
        assert_eq!(p.header.queue, QueueKind::BounceFull);
    }

    /// Found by reasoning about the fuzz target's round trip: a time that is in year 10000
    /// once normalised to UTC used to panic in the parser.
    #[test]
    fn out_of_range_times_are_errors_not_panics() {
        let bytes = sample(b"x");
        let text = String::from_utf8_lossy(&bytes).replace(
            "2030-01-02T01:04:05.123456789Z",
            "9999-12-31T23:59:59.9999-23:59",
        );
        let err = parse(text.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample(b"hello");
        for n in 0..bytes.len() {
            assert!(parse(&bytes[..n]).is_err(), "prefix of {n} bytes parsed");
        }
        let mut longer = bytes.clone();
        longer.push(b'x');
        assert!(matches!(
            parse(&longer),
            Err(FormatError::BodyLength { .. })
        ));
    }

    /// Invariant 7 for the spool format: any mutation of a valid file parses or is rejected
    /// with an error, never a panic, and whatever parses round-trips.
    #[test]
    fn random_mutations_never_panic() {
        let base = sample(b"Subject: x\r\n\r\nbody\r\n");
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut b = base.clone();
            for _ in 0..(rnd() % 4 + 1) {
                let i = (rnd() as usize) % b.len();
                match rnd() % 4 {
                    0 => b[i] = rnd() as u8,
                    1 => {
                        b.remove(i);
                    }
                    2 => b.insert(i, rnd() as u8),
                    _ => b.truncate(i),
                }
                if b.is_empty() {
                    b.push(b'D');
                }
            }
            if let Ok(p) = parse(&b) {
                let again = encode(&p.header, &b[p.body_offset..]).unwrap();
                assert_eq!(parse(&again).unwrap().header, p.header);
            }
        }
    }
}
