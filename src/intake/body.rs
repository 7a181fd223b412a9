//! Request bodies: reading one within its own budget, and getting rid of one that is refused.
//!
//! Reading: at most a size limit (a declared `Content-Length` over it is refused before a byte
//! is read) and never more than the body idle timeout without a byte arriving. Nothing shared
//! is held while a body is read, so a slow or stalled peer delays only its own request.
//!
//! Refusing: a refused request's body is not dropped on the spot. Over HTTP/2, dropping it
//! before the answer is sent resets the stream with CANCEL, and the client (curl: "Stream
//! error in the HTTP/2 framing layer") never reads the refusal; over HTTP/1.1 the unread bytes
//! turn into a connection reset the sender would have to treat as "maybe stored". So the answer
//! goes out at once and the body is read and discarded in the background, bounded by
//! [`DISCARD_BYTES`] and [`DISCARD_TIME`]; once the answer is complete, dropping what is left
//! makes HTTP/2 reset the stream with NO_ERROR, which clients accept (RFC 9113 §8.1).
//!
//! Called by `handler` for transfers and queries; knows nothing of the protocol.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

/// Most bytes of a refused body read (and discarded) before the rest is dropped.
pub const DISCARD_BYTES: u64 = 64 << 20;
/// Longest a refused body is read before the rest is dropped.
pub const DISCARD_TIME: Duration = Duration::from_secs(10);

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// Longer than the limit; what is left of it is being discarded.
    #[error("request body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("no byte of the request body arrived for {}", humantime::format_duration(*.0))]
    Idle(Duration),
    #[error("reading the request body failed: {0}")]
    Read(#[from] hyper::Error),
}

/// True when the body declares (`Content-Length`) more than `limit` bytes: refuse it at once.
pub(crate) fn declared_over(body: &Incoming, limit: usize) -> bool {
    body.size_hint().lower() > limit as u64
}

/// Reads the whole body: at most `limit` bytes, each wait for the next bytes at most `idle`.
/// A body over the limit is refused and its rest discarded in the background ([`discard`]).
pub(crate) async fn read(
    mut body: Incoming,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, BodyError> {
    if declared_over(&body, limit) {
        discard(body);
        return Err(BodyError::TooLarge(limit));
    }
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(BodyError::Idle(idle)),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(frame)) => frame?,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                discard(body);
                return Err(BodyError::TooLarge(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
}

/// Reads and discards `body` in the background (bounded), so the answer already given is
/// what the client reads.
pub(crate) fn discard(mut body: Incoming) {
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
