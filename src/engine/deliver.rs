//! Delivering: one request with messages already journaled `sent` to one destination, and what
//! each kind of answer does to each message.
//!
//! Owns the encoding of a transfer body and the classification of an answer into [`Step`]:
//! acknowledged messages go to the ledger (`acked`, then removal), rejected or not delivered
//! ones back to `read` (a permanent rejection excludes the destination for that message), and
//! an ambiguous end leaves them pinned (`sent`) to the destination for `settle`. Whether a
//! rejection is permanent is decided by the answer's typed [`RejectCode`] and status, never by
//! its text. Uses `run`, `item`, `ledger` and `client`; called by `route`.

use bytes::Bytes;

use super::client::Delivery;
use super::failure::{Failure, FailureKind};
use super::item::Item;
use super::ledger::{self, Rejection};
use super::run::Run;
use crate::wire::{self, ItemResult, Outcome, RejectCode};

/// Encodes items as one transfer body.
pub(crate) fn encode(items: &[Item]) -> Bytes {
    let len: usize = items
        .iter()
        .map(|i| wire::FRAME_HEADER_LEN + i.msg.bytes.len())
        .sum();
    let mut buf = Vec::with_capacity(len);
    for i in items {
        wire::put_frame_header(&mut buf, &i.msg.hash, i.size());
        buf.extend_from_slice(&i.msg.bytes);
    }
    Bytes::from(buf)
}

/// What became of the items of one request.
#[derive(Default)]
pub(crate) struct Sorted {
    /// Not acknowledged, free to go to any destination not in their `rejected`.
    pub retry: Vec<Item>,
    /// The destination failed transiently for these (skip it for the rest of the round).
    pub dest_failed: bool,
    /// The request was too large: send one message per request.
    pub split: bool,
    /// Another instance than the target answered (`421`): not a failure of the destination;
    /// send again at once, to an instance picked anew.
    pub misdirected: bool,
}

/// How one request ended for its items.
pub(crate) enum Step {
    Done(Sorted),
    /// The destination may hold them: they stay pinned (`sent`) to it.
    Ambiguous(Vec<Item>),
}

/// One request to `d` with items already journaled `sent` to it (addressed to the instance
/// they carry, the same for all: they were journaled together).
pub(crate) async fn one_request(run: &Run, d: usize, items: Vec<Item>) -> anyhow::Result<Step> {
    let dest = run.set.dests[d].clone();
    let dname = dest.to_string();
    let body = encode(&items);
    let target = items.first().and_then(|i| i.instance.clone());
    let delivery = run
        .client
        .transfer(&dest, target.as_deref(), body, items.len())
        .await;
    let mut sorted = Sorted::default();
    match delivery {
        Delivery::Misdirected(reason) => {
            tracing::debug!(dest = %dname, "{dname}: another instance than {} answered: {reason}; sending again", target.as_deref().unwrap_or("?"));
            let reason = reason.to_string();
            ledger::not_delivered(run, &dname, ledger::ids(&items), &reason).await?;
            sorted.misdirected = true;
            sorted.retry = items;
        }
        Delivery::NotDelivered(reason) => {
            tracing::warn!(dest = %dname, "{dname} did not take {} messages: {reason}; failing over", items.len());
            run.state.note_failure(&dname, &reason);
            let reason = reason.to_string();
            ledger::not_delivered(run, &dname, ledger::ids(&items), &reason).await?;
            sorted.dest_failed = true;
            sorted.retry = items;
        }
        Delivery::Refused {
            status,
            permanent,
            reason,
        } => {
            tracing::warn!(dest = %dname, "{dname} refused {} messages: {reason}", items.len());
            run.state.note_failure(&dname, &reason);
            let reason = reason.to_string();
            if status == 413 && items.len() > 1 {
                ledger::not_delivered(run, &dname, ledger::ids(&items), &reason).await?;
                sorted.split = true;
                sorted.retry = items;
            } else {
                sorted = refused(run, d, items, &reason, permanent).await?;
            }
        }
        Delivery::HandshakeRefused(r) => {
            // As a 403: this sender may not drain there, and nothing reached its storage.
            let failure = super::client::refused(&r);
            let reason = r.to_string();
            tracing::error!(dest = %dname, "{dname} {reason}: it takes none of our messages");
            run.state.note_failure(&dname, &failure);
            sorted = refused(run, d, items, &reason, true).await?;
        }
        Delivery::Ambiguous(reason) => {
            tracing::warn!(
                dest = %dname,
                "request to {dname} ended ambiguously ({reason}); its {} messages stay with {dname} until it confirms",
                items.len()
            );
            run.state.note_failure(&dname, &reason);
            return Ok(Step::Ambiguous(items));
        }
        Delivery::Answered(results) => {
            return Ok(Step::Done(answered(run, d, items, results).await?));
        }
    }
    Ok(Step::Done(sorted))
}

/// A whole request refused: back to `read`; a permanent refusal excludes `d` for these.
async fn refused(
    run: &Run,
    d: usize,
    items: Vec<Item>,
    reason: &str,
    permanent: bool,
) -> anyhow::Result<Sorted> {
    let dname = run.set.name(d);
    ledger::rejected(run, &dname, ledger::ids(&items), reason, permanent).await?;
    let mut retry = items;
    if permanent {
        for i in &mut retry {
            i.exclude(d, &dname, reason);
        }
    }
    Ok(Sorted {
        retry,
        dest_failed: !permanent,
        ..Sorted::default()
    })
}

/// Applies per-message outcomes: rejections first, then the acknowledgements (and removals).
async fn answered(
    run: &Run,
    d: usize,
    items: Vec<Item>,
    results: Vec<ItemResult>,
) -> anyhow::Result<Sorted> {
    let dname = run.set.name(d);
    let mut sorted = Sorted::default();
    let mut acked = Vec::new();
    let mut rejections = Vec::new();
    for (mut item, res) in items.into_iter().zip(results) {
        let reason = res.reason.clone().unwrap_or_default();
        match res.outcome {
            Outcome::Stored => acked.push((item, "stored".to_string())),
            Outcome::AlreadyHeld => acked.push((item, "already held".to_string())),
            Outcome::RejectedPermanent | Outcome::RejectedTransient => {
                let code = res.code.unwrap_or(RejectCode::Unknown).as_str();
                run.state
                    .note_failure(&dname, &Failure::new(FailureKind::Rejected(code), &reason));
                let mut permanent = res.outcome == Outcome::RejectedPermanent;
                if permanent && res.code == Some(RejectCode::HashMismatch) && changed_on_disk(&item)
                {
                    // Our copy changed under us: not the destination's fault; read it again.
                    permanent = false;
                }
                tracing::warn!(dest = %dname, id = %item.id(), "{dname} rejected {}: {reason}", item.id());
                rejections.push(Rejection {
                    id: item.id(),
                    reason: reason.clone(),
                    permanent,
                });
                if permanent {
                    item.exclude(d, &dname, &reason);
                } else {
                    sorted.dest_failed = true;
                }
                sorted.retry.push(item);
            }
        }
    }
    ledger::rejected_each(run, &dname, rejections).await?;
    ledger::acked(run, &dname, acked).await?;
    Ok(sorted)
}

/// True when the local file no longer hashes as it did when read.
fn changed_on_disk(item: &Item) -> bool {
    match crate::spool::read_file(&item.entry.path) {
        Ok(b) => crate::spool::format::hash(&b) != item.msg.hash,
        Err(_) => true,
    }
}
