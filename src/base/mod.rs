//! The vocabulary every other module shares, at the bottom of the import graph: it imports
//! nothing from the rest of the crate.
//!
//! - [`MessageId`], [`ContentHash`], [`Timestamp`], [`QueueKind`]: what a message is called,
//!   what its bytes hash to, when things happen, which queue it belongs to;
//! - [`Destination`]: where a drain sends (host and port, HTTPS);
//! - [`durable`]: the one way a file is made durable (temp file, fsync, rename, directory
//!   fsync), private (0600 files, 0700 directories), and the [`FileError`] that names the file
//!   at fault;
//! - [`backoff`], [`units`]: retry pacing and byte formatting, one definition each.

/// Serialises a type as its `Display` text and deserialises it with its text parser (`FromStr`,
/// or a `parse` function): ids, hashes and times are strings in every file and on the wire.
macro_rules! serde_as_text {
    ($t:ty) => {
        serde_as_text!($t, |s: &str| s.parse::<$t>());
    };
    ($t:ty, $parse:expr) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                ($parse)(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}
use serde_as_text;

pub mod durable;
pub mod units;

mod dest;
mod hash;
mod id;
mod queue;
mod time;

use std::time::Duration;

pub use dest::{BadDestination, Destination, check_bind_ip};
pub use durable::{FileError, sync_dir, write_atomic};
pub use hash::ContentHash;
pub use id::{BadId, MessageId, hex, parse_hex};
pub use queue::QueueKind;
pub use time::Timestamp;

/// Exponential backoff for retry round `round` (1-based): 1 s, 2 s, 4 s ... capped at 30 s.
pub fn backoff(round: u32) -> Duration {
    Duration::from_secs(1u64 << round.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

/// An error and its causes on one line ("error sending request: connection refused"), each
/// cause once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// Every error in `e`'s chain, `e` first, looking inside `io::Error`s too (whose `source()`
/// skips the error they wrap: where rustls and others put theirs). For typed classification
/// (downcasts), never for matching text.
pub fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut next = Some(e);
    while let Some(cur) = next {
        out.push(cur);
        next = match cur
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => cur.source(),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        let secs: Vec<u64> = (0..9).map(|r| backoff(r).as_secs()).collect();
        assert_eq!(secs, [1, 1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
