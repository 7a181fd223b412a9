//! The content hash: BLAKE3 of a spool file, the same on every instance the message passes.

use std::fmt;
use std::str::FromStr;

use super::id::{hex, parse_hex};

/// BLAKE3 of a message's whole spool file. Written as 64 lower-case hex digits (in the
/// journal, on the wire, in `spool ls --json`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// Hashes `bytes`.
    pub fn of(bytes: &[u8]) -> ContentHash {
        ContentHash(*blake3::hash(bytes).as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<blake3::Hash> for ContentHash {
    fn from(h: blake3::Hash) -> Self {
        ContentHash(*h.as_bytes())
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({self})")
    }
}

impl FromStr for ContentHash {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_hex::<32>(s).map(ContentHash).ok_or_else(|| {
            format!(
                "invalid hash {:?}: expected 64 hex digits",
                s.chars().take(80).collect::<String>()
            )
        })
    }
}

super::serde_as_text!(ContentHash);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_matches_blake3() {
        let h = ContentHash::of(b"abc");
        assert_eq!(h.to_string(), blake3::hash(b"abc").to_hex().as_str());
        assert_eq!(h.to_string().parse::<ContentHash>().unwrap(), h);
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            format!("\"{h}\""),
            "serialized as a hex string"
        );
        assert!("xyz".parse::<ContentHash>().is_err());
    }
}
