//! What the intake store answers for one frame of a transfer, decided without the disk: the
//! frame's own checks (its bytes hash to the hash sent and form a valid spool file) and the
//! per-message results it can end with (`id_conflict`, `fenced`, `insufficient_storage`).
//!
//! Each result carries its typed [`RejectCode`]; the human reasons only begin with fixed words.
//! Used by `store` and `commit`.

use std::path::Path;

use crate::base::{ContentHash, MessageId};
use crate::spool::Message;
use crate::wire::{Frame, ItemResult, Outcome, RejectCode};

/// How the human reasons of rejected messages begin. Text only: senders and metrics act on
/// the result's [`RejectCode`], never on these words.
const REASON_HASH_MISMATCH: &str = "hash mismatch";
const REASON_MALFORMED: &str = "malformed spool file";
const REASON_ID_CONFLICT: &str = "id conflict";

/// A different message with the same id is held here, or being stored right now.
pub(super) fn id_conflict(hash: ContentHash, id: MessageId) -> ItemResult {
    item(
        hash,
        Some(id),
        Outcome::RejectedPermanent,
        Some(RejectCode::IdConflict),
        Some(format!(
            "{REASON_ID_CONFLICT}: a different message with id {id} is held here"
        )),
    )
}

/// A query or finish of this run came while the transfer was arriving: not stored, so that its
/// "not held" answer stays true.
pub(super) fn fenced(hash: ContentHash) -> ItemResult {
    item(
        hash,
        None,
        Outcome::RejectedTransient,
        Some(RejectCode::Fenced),
        Some(
            "fenced: a query or finish of this run came while this transfer was still \
             arriving, so it was not stored; send it again"
                .into(),
        ),
    )
}

pub(super) fn item(
    hash: ContentHash,
    id: Option<MessageId>,
    outcome: Outcome,
    code: Option<RejectCode>,
    reason: Option<String>,
) -> ItemResult {
    ItemResult {
        hash,
        id,
        outcome,
        code,
        reason,
    }
}

/// Checks a frame on its own (nothing read from disk): its bytes hash to the hash sent and
/// form a valid spool file. A failure is the frame's permanent rejection.
pub(super) fn check_frame(frame: Frame) -> Result<Message, ItemResult> {
    let sent = frame.hash;
    let actual = crate::spool::format::hash(&frame.file);
    if actual != sent {
        return Err(item(
            sent,
            None,
            Outcome::RejectedPermanent,
            Some(RejectCode::HashMismatch),
            Some(format!(
                "{REASON_HASH_MISMATCH}: the content hashes to {actual}"
            )),
        ));
    }
    Message::from_bytes(frame.file).map_err(|e| {
        item(
            sent,
            None,
            Outcome::RejectedPermanent,
            Some(RejectCode::Malformed),
            Some(format!("{REASON_MALFORMED}: {e}")),
        )
    })
}

/// The disk has no room for the message: nothing of it was written (the sender may send it
/// elsewhere).
pub(super) fn no_room(hash: ContentHash, dir: &Path) -> ItemResult {
    item(
        hash,
        None,
        Outcome::RejectedTransient,
        Some(RejectCode::InsufficientStorage),
        Some(format!(
            "no room on this instance's disk ({}); nothing stored",
            dir.display()
        )),
    )
}

/// Parked here for another instance's commit (`wire`, "Parking"): not stored.
pub(super) fn parked(hash: ContentHash, id: MessageId) -> ItemResult {
    item(hash, Some(id), Outcome::Parked, None, None)
}

/// Committed earlier (a commit sent again): held for this run.
pub(super) fn held_already(hash: ContentHash, id: MessageId) -> ItemResult {
    item(
        hash,
        Some(id),
        Outcome::AlreadyHeld,
        None,
        Some("held for this run (committed earlier)".into()),
    )
}

/// A commit named a message not parked here and not held: definitively not stored.
pub(super) fn not_parked(hash: ContentHash, id: MessageId) -> ItemResult {
    item(
        hash,
        Some(id),
        Outcome::RejectedTransient,
        Some(RejectCode::NotParked),
        Some(format!(
            "not parked here (expired, dropped by a query, or lost in a restart) and not held: \
             nothing stored; the parking lasts {} s",
            crate::wire::PARK_TTL.as_secs()
        )),
    )
}
