//! What the intake store answers for one frame of a transfer before anything is written: the
//! frame's own checks (its bytes hash to the hash sent and form a valid spool file), the
//! per-message results it can end with (`id_conflict`, `fenced`, `insufficient_storage`), and
//! [`room_for`], which refuses what the disk has no room for.
//!
//! Each result carries its typed [`RejectCode`]; the human reasons only begin with fixed words.
//! Used by `store` and `commit`.

use std::path::Path;

use std::collections::HashSet;

use super::store::DedupeEntry;
use crate::base::{ContentHash, MessageId};
use crate::spool::{Message, Spool};
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
/// Keeps only the new messages the disk has room for (with a margin for the directory,
/// the events and the dedupe records); the others are answered `insufficient_storage`
/// before a byte of them is written: definitively not stored, so the sender may send them
/// elsewhere. Copies found held are not affected (they are here already).
pub(super) fn room_for(
    spool: &Spool,
    to_store: Vec<Message>,
    entries: Vec<DedupeEntry>,
    results: &mut [ItemResult],
) -> (Vec<Message>, Vec<DedupeEntry>) {
    const MARGIN: u64 = 4 << 20;
    if to_store.is_empty() {
        return (to_store, entries);
    }
    let dir = spool.queue_dir(to_store[0].header.queue);
    let Ok(mut free) = crate::base::durable::available_bytes(&dir) else {
        return (to_store, entries);
    };
    free = free.saturating_sub(MARGIN);
    let mut keep = Vec::with_capacity(to_store.len());
    let mut refused = HashSet::new();
    for m in to_store {
        let need = m.bytes.len() as u64 * 2;
        if need <= free {
            free -= need;
            keep.push(m);
        } else {
            refused.insert(m.hash.0);
        }
    }
    if refused.is_empty() {
        return (keep, entries);
    }
    tracing::warn!(
        "the disk holding {} is full: {} messages refused (507), nothing of them written",
        dir.display(),
        refused.len()
    );
    for r in results.iter_mut() {
        if r.outcome == Outcome::Stored && refused.contains(&r.hash.0) {
            *r = no_room(r.hash, &dir);
        }
    }
    let entries = entries
        .into_iter()
        .filter(|e| !refused.contains(&e.hash))
        .collect();
    (keep, entries)
}
