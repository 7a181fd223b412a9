//! Applying a destination's answer to the messages of one request: what each kind of answer
//! does to each message, and what is left to do with them ([`Sorted`], [`Step`]).
//!
//! Acknowledged messages go to the ledger (`acked`, then removal), rejected or not delivered
//! ones back to `read` (a permanent rejection excludes the destination for that message).
//! Whether a rejection is permanent is decided by the answer's typed [`RejectCode`] and status,
//! never by its text. Uses `run`, `item`, `ledger` and `failure`; called by `deliver` (transfer
//! answers), `commit` (commit answers) and `route`.

use super::failure::{Failure, FailureKind};
use super::item::Item;
use super::ledger::{self, Rejection};
use super::run::Run;
use crate::tls::HandshakeRefusal;
use crate::wire::{ItemResult, Outcome, RejectCode};

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

impl Sorted {
    /// Adds what became of other items of the same request.
    pub fn merge(&mut self, other: Sorted) {
        self.retry.extend(other.retry);
        self.dest_failed |= other.dest_failed;
        self.split |= other.split;
        self.misdirected |= other.misdirected;
    }
}

/// How one request ended for its items.
pub(crate) enum Step {
    Done(Sorted),
    /// The destination may hold `pinned`: they stay pinned (`sent`) to it; `rest` is what
    /// became of the others (a request whose parked messages could not be committed).
    Ambiguous {
        pinned: Vec<Item>,
        rest: Sorted,
    },
}

impl Step {
    pub(super) fn in_doubt(pinned: Vec<Item>) -> Step {
        Step::Ambiguous {
            pinned,
            rest: Sorted::default(),
        }
    }
}

/// The request certainly did not reach the destination's storage (not connected, 503, 507):
/// back to `read`, and the destination counts as failed for the round.
pub(crate) async fn not_taken(
    run: &Run,
    d: usize,
    items: Vec<Item>,
    reason: &Failure,
) -> anyhow::Result<Sorted> {
    let dname = run.set.name(d);
    tracing::warn!(dest = %dname, "{dname} did not take {} messages: {reason}; failing over", items.len());
    run.state.note_failure(&dname, reason);
    ledger::not_delivered(run, &dname, ledger::ids(&items), &reason.to_string()).await?;
    Ok(Sorted {
        retry: items,
        dest_failed: true,
        ..Sorted::default()
    })
}

/// The whole request refused with `status` (a 413 on several messages: sent again one per
/// request).
pub(crate) async fn refused_request(
    run: &Run,
    d: usize,
    items: Vec<Item>,
    status: u16,
    permanent: bool,
    reason: &Failure,
) -> anyhow::Result<Sorted> {
    let dname = run.set.name(d);
    tracing::warn!(dest = %dname, "{dname} refused {} messages: {reason}", items.len());
    run.state.note_failure(&dname, reason);
    let reason = reason.to_string();
    if status == 413 && items.len() > 1 {
        ledger::not_delivered(run, &dname, ledger::ids(&items), &reason).await?;
        return Ok(Sorted {
            retry: items,
            split: true,
            ..Sorted::default()
        });
    }
    refused(run, d, items, &reason, permanent).await
}

/// Its TLS layer refused our client certificate: as a 403, permanent for this destination,
/// and nothing reached its storage.
pub(crate) async fn handshake_refused(
    run: &Run,
    d: usize,
    items: Vec<Item>,
    r: &HandshakeRefusal,
) -> anyhow::Result<Sorted> {
    let dname = run.set.name(d);
    let reason = r.to_string();
    tracing::error!(dest = %dname, "{dname} {reason}: it takes none of our messages");
    run.state.note_failure(&dname, &super::client::refused(r));
    refused(run, d, items, &reason, true).await
}

/// A whole request refused: back to `read`; a permanent refusal excludes `d` for these.
pub(crate) async fn refused(
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

/// Applies per-message outcomes: rejections first, then the acknowledgements (and removals),
/// each journaled with the instance that gave it (`by`, when the answer named one).
pub(crate) async fn answered(
    run: &Run,
    d: usize,
    items: Vec<Item>,
    results: Vec<ItemResult>,
    by: Option<String>,
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
            // Only a transfer that allowed parking gets `parked`, and `commit` takes those
            // out before this: here it is a broken answer, so not acknowledged.
            Outcome::RejectedPermanent | Outcome::RejectedTransient | Outcome::Parked => {
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
                } else if res.code != Some(RejectCode::NotParked) {
                    // (A parked copy that expired is no failure of the destination: sent again
                    // at once.)
                    sorted.dest_failed = true;
                }
                sorted.retry.push(item);
            }
        }
    }
    ledger::rejected_each(run, &dname, rejections).await?;
    let acked = acked
        .into_iter()
        .map(|(i, n)| i.into_acked(n, by.clone()))
        .collect();
    run.retire(&dname, acked).await?;
    Ok(sorted)
}

/// True when the local file no longer hashes as it did when read.
fn changed_on_disk(item: &Item) -> bool {
    match crate::spool::read_file(&item.entry.path) {
        Ok(b) => crate::spool::format::hash(&b) != item.msg.hash,
        Err(_) => true,
    }
}
