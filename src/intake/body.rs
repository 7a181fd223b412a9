//! Reading a request body within its own budget: at most a size limit (a declared
//! `Content-Length` over it is refused before a byte is read) and never more than the body idle
//! timeout without a byte arriving. Nothing shared is held while a body is read, so a slow or
//! stalled peer delays only its own request.
//!
//! Called by `handler` for transfers and queries; knows nothing of the protocol.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
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
pub(crate) async fn read(
    mut body: Incoming,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, BodyError> {
    if declared_over(&body, limit) {
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
                return Err(BodyError::TooLarge(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
}
