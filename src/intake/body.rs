//! Request bodies: reading one up to a limit, and getting rid of one that is refused.
//!
//! A refused request's body is not dropped on the spot: over HTTP/2, dropping it before the
//! answer is sent resets the stream with CANCEL, and the client (curl: "Stream error in the
//! HTTP/2 framing layer") never reads the refusal; over HTTP/1.1 the unread bytes turn into a
//! connection reset the sender would have to treat as "maybe stored". So the answer goes out
//! at once and the body is read and discarded in the background, bounded by
//! [`DISCARD_BYTES`] and [`DISCARD_TIME`]; once the answer is complete, dropping what is left
//! makes HTTP/2 reset the stream with NO_ERROR, which clients accept (RFC 9113 §8.1).
//! Used by `handler`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// Most bytes of a refused body read (and discarded) before the rest is dropped.
pub const DISCARD_BYTES: u64 = 64 << 20;
/// Longest a refused body is read before the rest is dropped.
pub const DISCARD_TIME: Duration = Duration::from_secs(10);

/// Why a body could not be read whole.
#[derive(Debug)]
pub enum BodyError {
    /// Longer than the limit; what is left of it is being discarded.
    TooLarge,
    /// The connection failed while reading.
    Read(hyper::Error),
}

/// Reads the whole body, at most `limit` bytes; a longer one is [`BodyError::TooLarge`] and
/// its rest is discarded in the background ([`discard`]).
pub async fn read(mut body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                discard(body);
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Reads and discards `body` in the background (bounded), so the answer already given is
/// what the client reads.
pub fn discard(mut body: Incoming) {
    tokio::spawn(async move {
        let mut seen = 0u64;
        let _ = tokio::time::timeout(DISCARD_TIME, async {
            while seen < DISCARD_BYTES {
                match body.frame().await {
                    Some(Ok(f)) => seen += f.data_ref().map_or(0, |d| d.len() as u64),
                    _ => break,
                }
            }
        })
        .await;
        // Dropped here: after the answer in all but pathological cases.
    });
}
