//! Committing what another instance parked: a transfer addressed to one instance behind a
//! balancer that reached another is parked there (`wire`, "Parking"); this journals that
//! instance as the messages' target, then commits them there with `POST /v1/commit`.
//!
//! Invariants: `Parked` (pinned to the parking instance) is durable before the commit leaves,
//! so whatever happens to the commit, only that instance can hold the messages and only its
//! answer settles them; a commit that reaches another instance (`421`) is sent again at once
//! (a small request, cheap to repeat); one that never reaches it, or ends without an answer,
//! leaves the messages in doubt with that instance, whose query drops the parked copies first.
//! Uses `run`, `item`, `ledger`, `answer` and `client`; called by `deliver`.

use std::time::Duration;

use super::answer::{self, Sorted, Step};
use super::client::Delivery;
use super::item::Item;
use super::ledger;
use super::run::Run;
use crate::base::{ContentHash, MessageId};
use crate::wire::{ItemResult, Outcome};

/// Commits that reach another instance (`421`) before the messages are left in doubt with
/// the parking instance (through a round-robin balancer of n instances each try reaches it
/// with probability 1/n).
const COMMIT_TRIES: u32 = 32;
/// Tries sent back to back before pausing between them (the balancer may have taken the
/// instance out for a moment).
const TRIES_AT_ONCE: u32 = 12;

/// A transfer to `d` answered `parked` by `instance` (for some items; the others were answered
/// as usual): applies the others' answers, journals the parked ones `Parked` and commits them.
pub(crate) async fn parked(
    run: &Run,
    d: usize,
    items: Vec<Item>,
    instance: String,
    results: Vec<ItemResult>,
) -> anyhow::Result<Step> {
    let (mut waiting, mut others, mut answers) = (Vec::new(), Vec::new(), Vec::new());
    for (item, res) in items.into_iter().zip(results) {
        if res.outcome == Outcome::Parked {
            waiting.push(item);
        } else {
            others.push(item);
            answers.push(res);
        }
    }
    let mut sorted = if others.is_empty() {
        Sorted::default()
    } else {
        answer::answered(run, d, others, answers, Some(instance.clone())).await?
    };
    let dname = run.set.name(d);
    ledger::parked(run, &dname, &instance, &mut waiting).await?;
    match commit(run, d, &instance, waiting).await? {
        Step::Done(s) => {
            sorted.merge(s);
            Ok(Step::Done(sorted))
        }
        Step::Ambiguous { pinned, rest } => {
            sorted.merge(rest);
            Ok(Step::Ambiguous {
                pinned,
                rest: sorted,
            })
        }
    }
}

/// Sends the commit of `items` (journaled `Parked` with `instance`) until `instance` answers.
async fn commit(run: &Run, d: usize, instance: &str, items: Vec<Item>) -> anyhow::Result<Step> {
    let dest = run.set.dests[d].clone();
    let dname = dest.to_string();
    let asked: Vec<(MessageId, ContentHash)> = items.iter().map(|i| (i.id(), i.msg.hash)).collect();
    for attempt in 0..COMMIT_TRIES {
        if attempt >= TRIES_AT_ONCE {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let reason = match run.client.commit(&dest, instance, &asked).await {
            Delivery::Misdirected(_) => continue,
            Delivery::Answered { results, .. } => {
                let by = Some(instance.to_string());
                return Ok(Step::Done(
                    answer::answered(run, d, items, results, by).await?,
                ));
            }
            // Never reached it, or it is not accepting: nothing committed; the parked copies
            // expire there.
            Delivery::NotDelivered(reason) => {
                return Ok(Step::Done(answer::not_taken(run, d, items, &reason).await?));
            }
            Delivery::Refused {
                status,
                permanent,
                reason,
            } => {
                let s = answer::refused_request(run, d, items, status, permanent, &reason).await?;
                return Ok(Step::Done(s));
            }
            Delivery::HandshakeRefused(r) => {
                return Ok(Step::Done(
                    answer::handshake_refused(run, d, items, &r).await?,
                ));
            }
            Delivery::Ambiguous(reason) => reason.to_string(),
            Delivery::Parked { .. } => "a commit answered \"parked\"".to_string(),
        };
        tracing::warn!(dest = %dname, "commit of {} messages at instance {instance} behind {dname} ended ambiguously ({reason}); they stay with it until it confirms", items.len());
        return Ok(Step::in_doubt(items));
    }
    tracing::warn!(dest = %dname, "{COMMIT_TRIES} commits of {} messages reached other instances than {instance} behind {dname}; they stay with it until it answers a query", items.len());
    Ok(Step::in_doubt(items))
}
