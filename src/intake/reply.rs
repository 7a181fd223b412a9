//! Answers of the intake's HTTP endpoints: JSON bodies, and [`Reject`], a whole-request
//! refusal whose status and [`RejectCode`] are chosen together so they cannot disagree.
//!
//! Used by `handler` (the endpoints) and `connection` (unknown routes). Invariant: every
//! non-2xx answer has an [`ErrorResponse`] body; every refusal of a drain request carries its
//! code (403 `not_allowed`, 408 `timeout`, 413 `too_large`, 400 `bad_request` or
//! `bad_forwarding`, 415 `unsupported_media_type`, 421 `misdirected`, 503 `not_accepting`, 500 `transient`).

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use crate::wire::{self, ErrorResponse, RejectCode};

pub(crate) type Resp = Response<Full<Bytes>>;

/// A whole-request refusal, turned into an [`ErrorResponse`].
#[derive(Debug)]
pub(crate) struct Reject {
    status: StatusCode,
    code: Option<RejectCode>,
    message: String,
}

impl Reject {
    fn new(status: StatusCode, code: Option<RejectCode>, message: String) -> Reject {
        Reject {
            status,
            code,
            message,
        }
    }

    /// 403: the peer may not drain into this instance.
    pub fn not_allowed(message: String) -> Reject {
        Reject::new(StatusCode::FORBIDDEN, Some(RejectCode::NotAllowed), message)
    }

    /// 400: malformed body or headers.
    pub fn bad_request(message: String) -> Reject {
        Reject::new(
            StatusCode::BAD_REQUEST,
            Some(RejectCode::BadRequest),
            message,
        )
    }

    /// 400: a trusted proxy's forwarding headers are invalid or ambiguous.
    pub fn bad_forwarding(message: String) -> Reject {
        Reject::new(
            StatusCode::BAD_REQUEST,
            Some(RejectCode::BadForwarding),
            message,
        )
    }

    /// 415: the body is not of the endpoint's media type.
    pub fn unsupported_type(message: String) -> Reject {
        Reject::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some(RejectCode::UnsupportedMediaType),
            message,
        )
    }

    /// 413: the request is larger than accepted.
    pub fn too_large(message: String) -> Reject {
        Reject::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some(RejectCode::TooLarge),
            message,
        )
    }

    /// 408: the body made no progress for the body idle timeout; nothing stored.
    pub fn timeout(message: String) -> Reject {
        Reject::new(
            StatusCode::REQUEST_TIMEOUT,
            Some(RejectCode::Timeout),
            message,
        )
    }

    /// 503: not taking this request now (draining, shutting down, ask again).
    pub fn not_accepting(message: String) -> Reject {
        Reject::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(RejectCode::NotAccepting),
            message,
        )
    }

    /// 500: the server failed; the outcome of a transfer is unknown to the sender.
    pub fn failed(message: String) -> Reject {
        Reject::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(RejectCode::Transient),
            message,
        )
    }

    /// 421: the request names another instance (`Drain-Target-Instance`); nothing stored.
    pub fn misdirected(message: String) -> Reject {
        Reject::new(
            StatusCode::MISDIRECTED_REQUEST,
            Some(RejectCode::Misdirected),
            message,
        )
    }

    /// 404: no such endpoint (not a drain refusal: no code).
    pub fn not_found(message: String) -> Reject {
        Reject::new(StatusCode::NOT_FOUND, None, message)
    }
}

impl From<Reject> for Resp {
    fn from(r: Reject) -> Resp {
        json(
            r.status,
            &ErrorResponse {
                version: wire::VERSION,
                error: r.message,
                code: r.code,
            },
        )
    }
}

/// A JSON answer.
pub(crate) fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_carries_the_code_of_its_status() {
        let cases = [
            (
                Reject::not_allowed("x".into()),
                403,
                Some(RejectCode::NotAllowed),
            ),
            (
                Reject::too_large("x".into()),
                413,
                Some(RejectCode::TooLarge),
            ),
            (
                Reject::bad_request("x".into()),
                400,
                Some(RejectCode::BadRequest),
            ),
            (
                Reject::not_accepting("x".into()),
                503,
                Some(RejectCode::NotAccepting),
            ),
            (
                Reject::bad_forwarding("x".into()),
                400,
                Some(RejectCode::BadForwarding),
            ),
            (
                Reject::unsupported_type("x".into()),
                415,
                Some(RejectCode::UnsupportedMediaType),
            ),
            (Reject::failed("x".into()), 500, Some(RejectCode::Transient)),
            (
                Reject::misdirected("x".into()),
                421,
                Some(RejectCode::Misdirected),
            ),
            (Reject::timeout("x".into()), 408, Some(RejectCode::Timeout)),
            (Reject::not_found("x".into()), 404, None),
        ];
        for (reject, status, code) in cases {
            let resp: Resp = reject.into();
            assert_eq!(resp.status().as_u16(), status);
            let body = futures_body(resp);
            let e: ErrorResponse = serde_json::from_slice(&body).unwrap();
            assert_eq!((e.version, e.error.as_str(), e.code), (1, "x", code));
        }
    }

    fn futures_body(resp: Resp) -> Bytes {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(resp.into_body().collect()).unwrap().to_bytes()
    }
}
