//! Wire protocol v1 between a draining instance (client) and `drain serve` (server), over HTTPS.
//!
//! This module owns the protocol: paths, headers, the frame format of a transfer body and every
//! request and response type, each field documented where it is defined. The drain engine's
//! client and the intake server both go through it; neither builds a body by hand.
//!
//! Every path carries the protocol version; a later version gets new paths and a server may
//! serve several. Within v1, changes are additive only: new optional JSON fields (a reader
//! ignores fields it does not know) and new [`RejectCode`] values (read as `unknown`).
//!
//! ## Identification
//!
//! Every `POST` identifies the sender with two headers:
//!
//! | header | value |
//! | --- | --- |
//! | `Drain-Sender` | the sending instance's id, 32 hex digits (`<data-dir>/instance-id`) |
//! | `Drain-Run` | the sending run's id, 32 hex digits |
//!
//! A missing or malformed one is `400`. A peer whose address is not in the server's
//! `accept_drain_from` gets `403` on every endpoint but health. A server with a client CA
//! (`client_ca`) refuses a sender without an acceptable client certificate earlier, at the TLS
//! handshake (an alert such as `certificate_required` or `unknown_ca`, before any HTTP): the
//! sender treats that as a `403`, permanent for this destination.
//!
//! ## `POST /v1/transfer`: store messages
//!
//! Body (`Content-Type: application/vnd.drain.batch.v1`): one or more frames (at most
//! [`MAX_FRAMES`]) back to back,
//!
//! ```text
//! hash      32 bytes   BLAKE3 of the spool file, as the sender computed it
//! length    8 bytes    big-endian length of the spool file
//! file      length bytes, the spool file exactly as on the sender's disk (see spool::format)
//! ```
//!
//! The server recomputes each hash and rejects a mismatch, stores each message in its own
//! spool durably (fsync) and only then answers `200` with a [`TransferResponse`]: one
//! [`ItemResult`] per frame, in order, each with an [`Outcome`] and, when rejected, a
//! [`RejectCode`]:
//!
//! ```json
//! {"version":1,"results":[
//!   {"hash":"<64 hex>","id":"<32 hex>","outcome":"stored"},
//!   {"hash":"<64 hex>","id":"<32 hex>","outcome":"already_held","reason":"stored earlier for this run"},
//!   {"hash":"<64 hex>","id":null,"outcome":"rejected_permanent","code":"hash_mismatch","reason":"hash mismatch: ..."}]}
//! ```
//!
//! Whole-request answers carry an [`ErrorResponse`] `{"version":1,"error":"...","code":"..."}`:
//!
//! | status | code | meaning for the sender |
//! | --- | --- | --- |
//! | `400` | `bad_request` | malformed body or headers: nothing stored |
//! | `400` | `bad_forwarding` | a trusted proxy's `X-Forwarded-For` / `Client-IP` is invalid or ambiguous (several `Client-IP` lines) |
//! | `415` | `unsupported_media_type` | the `Content-Type` is missing or not the endpoint's (transfer: `application/vnd.drain.batch.v1`, query: `application/json`) |
//! | `403` | `not_allowed` | this sender may not drain here: permanent for this destination |
//! | `408` | `timeout` | the body made no progress for the server's `body_idle_timeout`: nothing stored |
//! | `413` | `too_large` | the request is over the server's limit: send fewer messages per request |
//! | `421` | `misdirected` | `Drain-Target-Instance` names another instance: nothing stored (see below) |
//! | `503` | `not_accepting` | draining itself or shutting down: nothing stored, try another |
//! | other `5xx` | `transient` or none | the outcome is unknown |
//!
//! A `5xx` other than `503`, a dropped connection or a timeout leaves the outcome unknown:
//! the sender must ask with `/v1/query` before doing anything else with those messages.
//!
//! ## `POST /v1/query`: which of these does the server hold for this run?
//!
//! JSON [`QueryRequest`] (`Content-Type: application/json`) `{"messages": [{"id": "<32 hex>", "hash": "<64 hex>"}, ...]}` (at most
//! [`MAX_QUERY`], else `413`); answer `200` [`QueryResponse`] `{"version": 1, "held": [hash,
//! ...]}`: the messages the server holds for the `Drain-Sender` and `Drain-Run` of the request,
//! either recorded in its dedupe store or present in its spool with that id and hash (a server
//! killed between writing the file and recording it still answers truthfully). Durable: a hash
//! listed is on the server's disk, so "not held" means the message is not there and will not
//! appear. A "not held" can never be followed by a late store from a request the sender lost:
//! every transfer of the same `Drain-Sender` and `Drain-Run` whose body is still arriving when
//! the query comes is *fenced* for the hashes asked (when its body completes, those messages are
//! answered `rejected_transient` with code `fenced` and not stored), and the query waits only for
//! the transfers of that run already past that point and storing one of them (bounded by the
//! server's disk, never by a peer; beyond 30 s it answers `503` and the sender asks again). So a
//! query answers at once even while a transfer of its run is stalled, and no other sender's or
//! run's transfers delay it. A transfer that reaches the server after the query is not fenced.
//! A query writes nothing but in one crash-repair case: a copy found in the spool without its
//! dedupe record gets its directory fsynced (so "held" is durable) and, best effort, the record
//! and intake event it may have lost; a full disk never fails a query. Errors as for
//! transfers.
//!
//! A transfer's message the server's disk has no room for is answered `rejected_transient` with
//! code `insufficient_storage` before a byte of it is written: definitively not stored, so the
//! sender may send it elsewhere at once (copies the server already holds still answer
//! `already_held`).
//!
//! ## `POST /v1/finish`: the run has finished
//!
//! Empty body; answer `200` `{"version":1,"forgotten":true}`. The server may forget its dedupe keys for
//! (`Drain-Sender`, `Drain-Run`): every message of the run is settled, so no retry of it can
//! come. Every transfer of the run still arriving is fenced for all its messages (none will be
//! stored), and the finish waits only for those already storing. Keys also expire after the server's `--dedupe-retention` (default 7 days) in case
//! this never arrives.
//!
//! ## `GET /v1/health`
//!
//! No headers needed, no access check (for load balancers); `200` with [`HealthResponse`]
//! `{"version":1,"accepting":true}`; while transfers get `503` (draining or shutting down) it
//! answers `503` with `"accepting":false`, so a balancer's health check takes the instance out.
//!
//! Any other path or method: `404` with an [`ErrorResponse`].
//!
//! ## Instances behind one address (additions within v1)
//!
//! A destination address may be a load balancer in front of several instances, and "not held"
//! is only true of the instance that answers. So instances name themselves, and a sender can
//! name the instance a request is meant for:
//!
//! | header | on | value |
//! | --- | --- | --- |
//! | `Drain-Instance` | every response of `drain serve` (every endpoint, errors and `404` included, `/v1/health` too) | the answering instance's id, 32 hex digits |
//! | `Drain-Target-Instance` | a `POST` to `/v1/transfer`, `/v1/query` or `/v1/finish` (optional) | the id of the instance the request is meant for |
//!
//! A server whose own id differs from `Drain-Target-Instance` answers `421` with code
//! `misdirected` before it reads the body (the body is discarded), storing nothing and
//! answering nothing about any message: for a transfer that is a definitive "not stored", for a
//! query "ask again" (never "not held"). A request without the header is served as before (an
//! older sender); a response without `Drain-Instance` comes from an older server, which the
//! sender then addresses without a target, as before.
//!
//! The sender fixes the target before a transfer leaves: it journals the target instance with
//! the message's `sent` record (`journal-format.md`), then sends with `Drain-Target-Instance`.
//! Whatever happens to the answer (a lost response included), only that instance can hold the
//! message, and only its answer, through a query carrying the same target, settles it.
//!
//! ## Parking: a misdirected transfer is not wasted (additions within v1)
//!
//! A round-robin balancer that picks a backend per request sends most targeted transfers to
//! the wrong instance. Refusing them (`421`) after the body was sent costs the whole body, so a
//! sender may add `Drain-Park: 1` to a targeted transfer. An instance that is not the target
//! then reads the body as usual (same checks, same limits) and, instead of storing, **parks**
//! the messages: it keeps them in memory, invisible to its spool, its dedupe store and its
//! queries, and answers `200` with outcome `parked` for each frame it would have stored
//! (frames it rejects are answered as for a transfer). Its `Drain-Instance` names where they are
//! parked. Parked messages are presumed aborted: they are dropped after [`PARK_TTL`], when
//! the instance restarts, when a query or finish of the same run asks about them, and when the
//! parked total would pass the instance's limit (then the transfer is answered `421` as before).
//!
//! ### `POST /v1/commit`: store what was parked here
//!
//! Sent with `Drain-Target-Instance` naming the instance that parked (any other answers `421`,
//! nothing done), body as a query ([`QueryRequest`], `application/json`). The instance stores
//! each parked message exactly as a transfer would (durably, dedupe, event) and answers `200`
//! [`TransferResponse`], one result per message asked, in order: `stored`, `already_held` (it
//! holds it for this run already), a rejection, or `rejected_transient` with code
//! `not_parked`: it was not parked here (expired, aborted, restarted) and is not held, so it
//! was definitively not stored. A commit registers like a transfer for the query fence, so a
//! query never answers "not held" for a message a commit is storing.
//!
//! Why exactly once: a message becomes visible only by a commit, and the sender sends a commit
//! only after journaling the parking instance as the message's target (`journal-format.md`,
//! `Parked`). A crash or lost answer before that leaves the parked copy to expire, while the
//! journal still names the first target, which never saw the message. A lost commit answer
//! leaves the message in doubt at the parking instance, whose query first drops the parked copy
//! (so no late commit can store it after the answer) and then answers truthfully.

use bytes::{Buf, Bytes};
use serde::{Deserialize, Serialize};

use crate::base::{ContentHash, MessageId};

pub const TRANSFER_PATH: &str = "/v1/transfer";
pub const QUERY_PATH: &str = "/v1/query";
pub const HEALTH_PATH: &str = "/v1/health";
pub const FINISH_PATH: &str = "/v1/finish";
pub const HDR_SENDER: &str = "drain-sender";
pub const HDR_RUN: &str = "drain-run";
/// On every response: the answering instance's id.
pub const HDR_INSTANCE: &str = "drain-instance";
/// On a request: the instance it is meant for; any other answers `421` `misdirected`.
pub const HDR_TARGET_INSTANCE: &str = "drain-target-instance";
/// On a targeted transfer: `1` lets another instance park the messages instead of `421`.
pub const HDR_PARK: &str = "drain-park";
/// Stores what a transfer parked at the instance it names.
pub const COMMIT_PATH: &str = "/v1/commit";
/// How long an instance keeps parked messages waiting for their commit.
pub const PARK_TTL: std::time::Duration = std::time::Duration::from_secs(120);
pub const BATCH_CONTENT_TYPE: &str = "application/vnd.drain.batch.v1";
/// The `Content-Type` of a `POST /v1/query` body.
pub const QUERY_CONTENT_TYPE: &str = "application/json";

/// Whether a `Content-Type` value names `expected` (parameters such as `; charset=utf-8`
/// and the case of the type are ignored).
pub fn media_type_is(value: &str, expected: &str) -> bool {
    value
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(expected))
}
pub const VERSION: u32 = 1;
/// Most frames in one transfer request.
pub const MAX_FRAMES: usize = 4096;
/// Most hashes in one query.
pub const MAX_QUERY: usize = 10_000;
/// Bytes of a frame before the file.
pub const FRAME_HEADER_LEN: usize = 40;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("batch truncated in frame {0}")]
    Truncated(usize),
    #[error("batch has more than {MAX_FRAMES} frames")]
    TooManyFrames,
    #[error("empty batch")]
    Empty,
}

/// Appends one frame header; the caller appends the file bytes after it.
pub fn put_frame_header(buf: &mut Vec<u8>, hash: &ContentHash, len: u64) {
    buf.extend_from_slice(hash.as_bytes());
    buf.extend_from_slice(&len.to_be_bytes());
}

/// One frame of a transfer body.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The hash the sender computed; the server checks it against the file.
    pub hash: ContentHash,
    pub file: Bytes,
}

/// Splits a transfer body into frames without copying file bytes.
pub fn decode_batch(mut body: Bytes) -> Result<Vec<Frame>, WireError> {
    let mut frames = Vec::new();
    while body.has_remaining() {
        if frames.len() == MAX_FRAMES {
            return Err(WireError::TooManyFrames);
        }
        if body.len() < FRAME_HEADER_LEN {
            return Err(WireError::Truncated(frames.len()));
        }
        let mut hash = [0u8; 32];
        body.copy_to_slice(&mut hash);
        let len = body.get_u64();
        if (body.len() as u64) < len {
            return Err(WireError::Truncated(frames.len()));
        }
        let file = body.split_to(len as usize);
        frames.push(Frame {
            hash: ContentHash(hash),
            file,
        });
    }
    if frames.is_empty() {
        return Err(WireError::Empty);
    }
    Ok(frames)
}

/// Outcome of one message of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Written to the server's spool and made durable by this request.
    Stored,
    /// Already durable on the server for this sender's run (a repeated request, or a repeated
    /// frame): acknowledged again, not stored twice.
    AlreadyHeld,
    /// Not stored, and retrying the same bytes at this server will not change that.
    RejectedPermanent,
    /// Not stored; the same request may succeed later.
    RejectedTransient,
    /// Held, not stored, by an instance other than the target, until a commit names it
    /// (answered only to a transfer carrying `Drain-Park`).
    Parked,
}

impl Outcome {
    pub fn is_acked(self) -> bool {
        matches!(self, Outcome::Stored | Outcome::AlreadyHeld)
    }
}

/// Why a message or a whole request was refused: a stable, machine-readable code beside the
/// human `reason`. Senders act on the code, never on the text. Additive within v1: a code this
/// build does not know reads as [`RejectCode::Unknown`], and an answer without a code (an older
/// server) is classified by its outcome or status alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// The frame's bytes do not hash to the hash sent with them.
    HashMismatch,
    /// The frame is not a valid spool file.
    Malformed,
    /// The server holds a different message under the same id.
    IdConflict,
    /// The request (or one message) is larger than the server accepts (`413`).
    TooLarge,
    /// The sender is not allowed to drain into this server (`403`).
    NotAllowed,
    /// The request or its headers are malformed (`400`).
    BadRequest,
    /// A trusted proxy's forwarding headers are invalid or ambiguous (`400`): an address that
    /// is not one, or several `Client-IP` lines.
    BadForwarding,
    /// The request's `Content-Type` is not the endpoint's (`415`).
    UnsupportedMediaType,
    /// The server is not taking messages right now: draining itself, shutting down (`503`).
    NotAccepting,
    /// A temporary failure on the server; the same request may succeed later.
    Transient,
    /// The request body made no progress for the server's `body_idle_timeout` (`408`): nothing
    /// stored; the same request may be sent again.
    Timeout,
    /// A message refused (`rejected_transient`) because a query or finish of the same run came
    /// while this transfer was still arriving: not stored, so that the query's "not held" stays
    /// true. Send it again.
    Fenced,
    /// The server's disk has no room for the message: nothing of it was stored.
    InsufficientStorage,
    /// The request named another instance (`Drain-Target-Instance`) than the one it reached
    /// (`421`, behind a load balancer): nothing stored, nothing answered; ask again.
    Misdirected,
    /// A commit asked for a message this instance has not parked (expired, aborted by a query
    /// or a restart) and does not hold: not stored; send it again.
    NotParked,
    /// A code from a newer peer that this build does not know.
    #[serde(other)]
    Unknown,
}

impl RejectCode {
    /// The code as written on the wire (`hash_mismatch`, ...), also the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::HashMismatch => "hash_mismatch",
            RejectCode::Malformed => "malformed",
            RejectCode::IdConflict => "id_conflict",
            RejectCode::TooLarge => "too_large",
            RejectCode::NotAllowed => "not_allowed",
            RejectCode::BadRequest => "bad_request",
            RejectCode::BadForwarding => "bad_forwarding",
            RejectCode::UnsupportedMediaType => "unsupported_media_type",
            RejectCode::NotAccepting => "not_accepting",
            RejectCode::Transient => "transient",
            RejectCode::Timeout => "timeout",
            RejectCode::Fenced => "fenced",
            RejectCode::InsufficientStorage => "insufficient_storage",
            RejectCode::Misdirected => "misdirected",
            RejectCode::NotParked => "not_parked",
            RejectCode::Unknown => "unknown",
        }
    }
}

/// The answer for one frame of a transfer, in frame order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemResult {
    /// The hash as sent in the frame.
    pub hash: ContentHash,
    /// The message id, when the file could be parsed.
    #[serde(default)]
    pub id: Option<MessageId>,
    pub outcome: Outcome,
    /// Why it was rejected, for `rejected_*` outcomes (absent from servers before the code
    /// was added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<RejectCode>,
    /// A human explanation (or, for `already_held`, where the copy was found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `200` answer to `POST /v1/transfer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferResponse {
    /// Protocol version of the answer ([`VERSION`]).
    pub version: u32,
    /// One result per frame, in the order of the frames.
    pub results: Vec<ItemResult>,
}

/// One message asked about: its id and the hash that was sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryItem {
    pub id: MessageId,
    pub hash: ContentHash,
}

/// Body of `POST /v1/query`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryRequest {
    /// At most [`MAX_QUERY`] messages.
    pub messages: Vec<QueryItem>,
}

/// `200` answer to `POST /v1/query`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryResponse {
    /// Protocol version of the answer ([`VERSION`]).
    pub version: u32,
    /// The hashes, among those asked, that are durable on the server for the request's
    /// sender and run. A hash not listed is not there and will not appear.
    pub held: Vec<ContentHash>,
}

/// `200` answer to `GET /v1/health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResponse {
    /// Protocol version of the answer ([`VERSION`]).
    pub version: u32,
    /// False while the server refuses transfers with `503` (draining itself, shutting down).
    pub accepting: bool,
}

/// Body of every non-`200` answer, on every endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// Protocol version of the answer ([`VERSION`]).
    pub version: u32,
    /// A human explanation, for logs and reports.
    pub error: String,
    /// What kind of refusal it is (absent from servers before the code was added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<RejectCode>,
}

/// Checks a `Drain-Sender` / `Drain-Run` value: exactly 32 hex digits.
pub fn valid_token(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_ignore_parameters_and_case() {
        assert!(media_type_is("application/json", QUERY_CONTENT_TYPE));
        assert!(media_type_is(
            " Application/JSON; charset=utf-8",
            QUERY_CONTENT_TYPE
        ));
        assert!(media_type_is(BATCH_CONTENT_TYPE, BATCH_CONTENT_TYPE));
        assert!(!media_type_is(
            "application/x-www-form-urlencoded",
            QUERY_CONTENT_TYPE
        ));
        assert!(!media_type_is("", BATCH_CONTENT_TYPE));
        assert_eq!(
            RejectCode::UnsupportedMediaType.as_str(),
            "unsupported_media_type"
        );
        let c: RejectCode = serde_json::from_str("\"bad_forwarding\"").unwrap();
        assert_eq!(c, RejectCode::BadForwarding);
    }

    #[test]
    fn frames_round_trip_and_truncation_is_detected() {
        let mut buf = Vec::new();
        for body in [&b""[..], b"abc", b"\x00\xff"] {
            let h = ContentHash::of(body);
            put_frame_header(&mut buf, &h, body.len() as u64);
            buf.extend_from_slice(body);
        }
        let frames = decode_batch(Bytes::from(buf.clone())).unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(&frames[1].file[..], b"abc");
        assert_eq!(frames[2].hash, ContentHash::of(b"\x00\xff"));
        for n in 1..buf.len() {
            if n == 40 || n == 83 {
                continue; // ends exactly on a frame boundary
            }
            assert!(
                decode_batch(Bytes::copy_from_slice(&buf[..n])).is_err(),
                "{n}"
            );
        }
        assert_eq!(decode_batch(Bytes::new()).unwrap_err(), WireError::Empty);
    }

    /// Invariant 7 for request bodies: arbitrary bytes decode or fail cleanly, and a frame's
    /// length can never reach past the body.
    #[test]
    fn arbitrary_bodies_never_panic() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for n in 0..5_000usize {
            let len = n % 200;
            let mut body = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                body.push(x as u8);
            }
            if len >= 40 && n % 3 == 0 {
                // A plausible length field, sometimes just right, sometimes off by one.
                let l = (len - 40) as u64 + (n % 2) as u64;
                body[32..40].copy_from_slice(&l.to_be_bytes());
            }
            if let Ok(frames) = decode_batch(Bytes::from(body)) {
                let total: usize = frames.iter().map(|f| 40 + f.file.len()).sum();
                assert_eq!(total, len);
            }
        }
    }
}
