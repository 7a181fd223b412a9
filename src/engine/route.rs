//! Routing: which destination each message goes to, and what happens until it is placed.
//!
//! Owns round-robin with failover ([`process_batch`]) and the send-until-settled loop for one
//! destination ([`send_to`]). Failover rules: a destination that cannot be reached or answers
//! 503 is skipped for this message and tried again at its next turn; when every destination
//! failed in a round, the batch waits with backoff and tries again (until it succeeds, a stop
//! is requested, or the fallback time comes). A permanent rejection excludes that destination
//! for that message; a message every destination rejected permanently stays in the spool
//! (exit 12). An ambiguous end pins the messages to that destination: `settle` asks it, and
//! this module decides from the outcome (a loop here, no mutual calls).
//!
//! Invariant: `sent(d)` is durable (ledger) before `deliver` sends to `d`. Uses `run`, `item`,
//! `ledger`, `deliver`, `settle` and `fallback`; called by `scan` and `resume`.

use std::collections::HashSet;

use super::deliver::{self, Sorted, Step};
use super::fallback;
use super::item::Item;
use super::ledger;
use super::run::Run;
use super::settle::{self, Confirmed, FirstQuery};
use crate::base::backoff;

/// What the journal already records for a batch handed to [`process_batch`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// Just read from the spool: journal them `read` first.
    Nothing,
    /// Already journaled `read` in this run.
    Read,
}

/// What the journal already records for items handed to [`send_to`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum SentTo {
    /// `read`: journal `sent(d)` before the request.
    NotYet,
    /// Already `sent(d)` (in doubt with it, it said it does not hold them).
    Already,
}

/// Sends a batch until each message is acknowledged, rejected by every destination, moved to
/// the fallback path, or a stop is requested.
pub(crate) async fn process_batch(
    run: &Run,
    items: Vec<Item>,
    recorded: Recorded,
) -> anyhow::Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    if recorded == Recorded::Nothing {
        ledger::read(run, &items).await?;
    }
    let mut pending = items;
    let mut failed_round: HashSet<usize> = HashSet::new();
    let mut round = 0u32;
    let mut single = false;
    while !pending.is_empty() {
        if run.stopped() {
            // Not sent: journaled `read`, still in the spool; a later run takes them.
            return Ok(());
        }
        if let Some(fb) = run.fallback_due() {
            return fallback::move_items(run, fb, pending).await;
        }
        pending = drop_dead(run, pending);
        if pending.is_empty() {
            break;
        }
        let Some(d) = run.next_dest(|d| {
            !failed_round.contains(&d) && pending.iter().any(|i| !i.rejected.contains(&d))
        }) else {
            round += 1;
            let wait = run.until_fallback(backoff(round));
            tracing::warn!(
                round,
                waiting = ?wait,
                "every destination failed for {} messages; retrying in {:?}",
                pending.len(),
                wait
            );
            if run.pause(wait).await {
                return Ok(());
            }
            failed_round.clear();
            continue;
        };
        let (mut sub, mut rest): (Vec<Item>, Vec<Item>) =
            pending.into_iter().partition(|i| !i.rejected.contains(&d));
        if single && sub.len() > 1 {
            rest.extend(sub.split_off(1));
        }
        let sorted = send_to(run, d, sub, SentTo::NotYet).await?;
        if sorted.dest_failed {
            failed_round.insert(d);
        } else {
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

/// Sends `items` to destination `d` (journaling `sent` first unless they already are `sent`
/// to it) and sorts out the answer. After an ambiguous end the items are confirmed with a
/// query and only re-sent to `d`.
pub(crate) async fn send_to(
    run: &Run,
    d: usize,
    items: Vec<Item>,
    sent: SentTo,
) -> anyhow::Result<Sorted> {
    if sent == SentTo::NotYet {
        ledger::sent(run, &run.set.name(d), &items).await?;
    }
    let mut items = items;
    loop {
        let pinned = match deliver::one_request(run, d, items).await? {
            Step::Done(sorted) => return Ok(sorted),
            Step::Ambiguous(pinned) => pinned,
        };
        match settle::confirm(run, d, pinned, FirstQuery::AfterBackoff).await? {
            Confirmed::NotHeld(rest) if !rest.is_empty() => items = rest,
            Confirmed::Reassigned(retry) | Confirmed::Refused(retry) => {
                return Ok(Sorted {
                    retry,
                    dest_failed: true,
                    split: false,
                });
            }
            // All confirmed held, or stopped with them still in doubt.
            Confirmed::NotHeld(_) | Confirmed::Stopped => return Ok(Sorted::default()),
        }
    }
}
