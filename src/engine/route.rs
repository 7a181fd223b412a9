//! Routing: which destination each message goes to, and what happens until it is placed.
//!
//! Owns round-robin with failover ([`process_batch`]) and the send-until-settled loop for one
//! destination ([`send_to`]). Failover rules: a destination that cannot be reached or answers
//! 503 is skipped for this message and tried again at its next turn; when every destination
//! failed in a round, the batch waits with backoff and tries again (until it succeeds, a stop
//! is requested, or the fallback time comes). A permanent rejection excludes that destination
//! for that message; a message every destination rejected permanently stays in the spool
//! (exit 12). An ambiguous end pins the messages to that destination: a settling task beside
//! the workers asks it ([`settle_beside`]), so messages in doubt never hold a worker or stall
//! the healthy destinations; until it answers, that destination gets nothing new.
//!
//! Invariant: `sent(d)` is durable (ledger) before `deliver` sends to `d`. Uses `run`, `item`,
//! `ledger`, `deliver`, `settle` and `fallback`; called by `scan` and `resume`.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::answer::{Sorted, Step};
use super::deliver;
use super::fallback;
use super::item::Item;
use super::ledger;
use super::run::Run;
use super::settle::{self, Confirmed, FirstQuery};
use crate::base::backoff;

/// Requests of one batch answered `421` in a row (another instance than the target, behind a
/// balancer) before the destination counts as failed for the round (backoff): each is cheap
/// (refused before the body is read), and the target is picked anew for each.
const MAX_MISDIRECTED: u32 = 24;

/// What the journal already records for a batch handed to [`process_batch`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// Just read from the spool: journal them `read` first.
    Nothing,
    /// Already journaled `read` in this run.
    Read,
}

/// Sends a batch until each message is acknowledged, rejected by every destination, moved to
/// the fallback path, handed to a settling task (in doubt), or a stop is requested.
pub(crate) async fn process_batch(
    run: &Arc<Run>,
    items: Vec<Item>,
    recorded: Recorded,
) -> anyhow::Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    // A new batch is journaled `read` together with its first `sent`: one durable commit
    // before it leaves.
    let mut unrecorded = recorded == Recorded::Nothing;
    let mut pending = items;
    let mut failed_round: HashSet<usize> = HashSet::new();
    let mut round = 0u32;
    let mut misdirected = 0u32;
    let mut single = false;
    while !pending.is_empty() {
        if run.stopped() {
            // Not sent: still in the spool (journaled `read`, or not yet); a later run takes
            // them.
            return Ok(());
        }
        if let Some(fb) = run.fallback_due() {
            return fallback::move_items(run, fb, pending, unrecorded).await;
        }
        pending = drop_dead(run, pending);
        if pending.is_empty() {
            break;
        }
        // Subscribed before looking, so an answer that comes in between is not missed.
        let mut trust = run.state.trust_changes();
        let Some(d) = run.next_dest(|d| {
            !failed_round.contains(&d)
                && !run.state.is_suspect(d)
                && pending.iter().any(|i| !i.rejected.contains(&d))
        }) else {
            round += 1;
            let wait = run.until_fallback(backoff(round));
            if failed_round.is_empty() {
                tracing::debug!("waiting up to {wait:?} for destinations in doubt to answer");
            } else {
                tracing::warn!(
                    round,
                    waiting = ?wait,
                    "every destination failed for {} messages (or is settling messages in \
                     doubt); retrying in {:?}",
                    pending.len(),
                    wait
                );
            }
            tokio::select! {
                // A destination in doubt answered its query: not a failed round.
                Ok(()) = trust.changed() => round -= 1,
                stopped = run.pause(wait) => {
                    if stopped {
                        return Ok(());
                    }
                    failed_round.clear();
                }
            }
            continue;
        };
        let (mut sub, mut rest): (Vec<Item>, Vec<Item>) =
            pending.into_iter().partition(|i| !i.rejected.contains(&d));
        if single && sub.len() > 1 {
            rest.extend(sub.split_off(1));
        }
        let target = run.client.target(&run.set.dests[d]).await;
        let new = unrecorded.then_some(&rest[..]);
        ledger::sent(run, &run.set.name(d), target.as_deref(), &mut sub, new).await?;
        unrecorded = false;
        let sorted = match deliver::one_request(run, d, sub).await? {
            Step::Done(sorted) => sorted,
            Step::Ambiguous { pinned, rest } => {
                settle_beside(run, d, pinned);
                rest
            }
        };
        if sorted.misdirected {
            misdirected += 1;
            if misdirected >= MAX_MISDIRECTED {
                tracing::warn!(dest = %run.set.name(d), "{misdirected} requests in a row reached another instance than the one named; backing off");
                misdirected = 0;
                failed_round.insert(d);
            }
        } else if sorted.dest_failed {
            misdirected = 0;
            failed_round.insert(d);
        } else {
            misdirected = 0;
            round = 0;
        }
        single |= sorted.split;
        pending = rest;
        pending.extend(sorted.retry);
    }
    Ok(())
}

/// Gives up on the messages every active destination rejected permanently; returns the rest.
fn drop_dead(run: &Run, pending: Vec<Item>) -> Vec<Item> {
    let n = run.set.dests.len();
    let (dead, alive): (Vec<Item>, Vec<Item>) = pending.into_iter().partition(|i| {
        (0..n)
            .filter(|&d| run.set.active[d])
            .all(|d| i.rejected.contains(&d))
    });
    for i in dead {
        let reason = format!("rejected by every destination: {}", i.reasons.join("; "));
        ledger::give_up(run, &i, &reason);
    }
    alive
}

/// Hands messages in doubt with `d` to a settling task beside the workers; `d` gets nothing
/// new until it answers a query. The task holds budget for the bytes it keeps.
fn settle_beside(run: &Arc<Run>, d: usize, items: Vec<Item>) {
    run.state.suspect(d);
    let task: Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> = Box::pin({
        let run = run.clone();
        async move {
            let bytes: u64 = items.iter().map(Item::size).sum();
            let _permit = run
                .budget
                .clone()
                .acquire_many_owned(run.set.permits_for(bytes))
                .await?;
            let sorted = settle_then_send(&run, d, items, FirstQuery::AfterBackoff).await?;
            process_batch(&run, sorted.retry, Recorded::Read).await
        }
    });
    run.state.add_settling(tokio::spawn(task));
}

/// Confirms `items` (journaled `sent` to `d`) with `d`, then re-sends to `d` what it does not
/// hold, until every one is placed or released for other destinations (returned as `retry`).
pub(crate) async fn settle_then_send(
    run: &Arc<Run>,
    d: usize,
    items: Vec<Item>,
    first: FirstQuery,
) -> anyhow::Result<Sorted> {
    let mut items = items;
    let mut first = first;
    // What earlier requests of this loop released while others stayed in doubt.
    let mut released = Sorted::default();
    loop {
        match settle::confirm(run, d, items, first).await? {
            Confirmed::NotHeld(rest) if !rest.is_empty() => items = rest,
            Confirmed::Reassigned(retry) | Confirmed::Refused(retry) => {
                released.merge(Sorted {
                    retry,
                    dest_failed: true,
                    ..Sorted::default()
                });
                return Ok(released);
            }
            // All confirmed held, or stopped with them still in doubt.
            Confirmed::NotHeld(_) | Confirmed::Stopped => return Ok(released),
        }
        match deliver::one_request(run, d, items).await? {
            Step::Done(sorted) => {
                released.merge(sorted);
                return Ok(released);
            }
            Step::Ambiguous { pinned, rest } => {
                released.merge(rest);
                items = pinned;
            }
        }
        first = FirstQuery::AfterBackoff;
    }
}

/// Re-sends `items`, journaled `sent` to `d` and not held by it, to `d`; settles again if
/// that ends in doubt too.
pub(crate) async fn resend_to(
    run: &Arc<Run>,
    d: usize,
    items: Vec<Item>,
) -> anyhow::Result<Sorted> {
    match deliver::one_request(run, d, items).await? {
        Step::Done(sorted) => Ok(sorted),
        Step::Ambiguous { pinned, mut rest } => {
            rest.merge(settle_then_send(run, d, pinned, FirstQuery::AfterBackoff).await?);
            Ok(rest)
        }
    }
}
