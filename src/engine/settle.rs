//! Settling messages whose fate is unknown: ask the destination they were sent to.
//!
//! Owns the query loop ([`confirm`]) and `--reassign-after`. A `sent` message is never offered
//! to another destination while the one it was sent to may hold it: we query that destination
//! (with backoff, until it answers or a stop is requested), acknowledge what it holds (ledger:
//! `acked`, then removal), and return the rest as an outcome ([`Confirmed`]); the caller decides
//! what happens next (re-send to the same destination, or route elsewhere). The one exception
//! to "never elsewhere" is `--reassign-after`: when the destination stays unreachable that long
//! (measured per instance), the messages are journaled `reassigned` (possible duplicates).
//!
//! Behind a load balancer, messages are pinned to the instance they were sent to (the items
//! carry it, from the journal): the query names it (`Drain-Target-Instance`), and a `421` (another
//! instance answered) means "ask again", soon ([`QUICK_RETRIES`] times), never "not held".
//!
//! Never sends and never calls back into routing. Uses `run`, `item`, `ledger` and `client`;
//! called by `route` (after an ambiguous request) and `resume` (after an interruption).

use std::collections::HashSet;

use super::client::QueryError;
use super::item::Item;
use super::ledger;
use super::run::Run;
use crate::base::{ContentHash, backoff};

/// Queries answered `421` (another instance behind the balancer) that are asked again almost
/// at once, before the normal backoff applies.
pub(crate) const QUICK_RETRIES: u32 = 12;
/// The pause before asking again after a `421`.
const QUICK_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// How confirming in-doubt messages with their destination ended.
pub(crate) enum Confirmed {
    /// A stop was requested first: they stay in doubt for `drain resume`.
    Stopped,
    /// The destination answered; these (still `sent` to it) it does not hold: re-send to it.
    NotHeld(Vec<Item>),
    /// `--reassign-after` expired with the destination unreachable: these are `read` again,
    /// flagged as possible duplicates, and excluded from that destination.
    Reassigned(Vec<Item>),
    /// The destination refuses this sender (403), so it holds none of them: `read` again,
    /// excluded from that destination.
    Refused(Vec<Item>),
}

/// When the first query goes out.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum FirstQuery {
    /// At once (messages left in doubt by an earlier attempt).
    Now,
    /// After one backoff step (a request just ended ambiguously: give the destination time).
    AfterBackoff,
}

/// Queries `d` for `items` (journaled `sent` to `d`) until it answers; acknowledges and removes
/// what it holds.
pub(crate) async fn confirm(
    run: &Run,
    d: usize,
    items: Vec<Item>,
    first: FirstQuery,
) -> anyhow::Result<Confirmed> {
    let dest = run.set.dests[d].clone();
    let dname = dest.to_string();
    // Journaled together, so pinned to the same instance.
    let target = items.first().and_then(|i| i.instance.clone());
    let target = target.as_deref();
    let mut attempt = 0u32;
    let mut quick = 0u32;
    let mut misdirected = false;
    // Another instance behind `d` answered while ours did not: only ours is unreachable.
    let mut others_answer = false;
    // Queries that did not reach our instance, in this call.
    let mut misses = 0u32;
    loop {
        let wait = if misdirected && quick <= QUICK_RETRIES {
            QUICK_PAUSE
        } else {
            backoff(attempt + 1)
        };
        let wait_now = first == FirstQuery::AfterBackoff || attempt > 0;
        if wait_now && run.pause(wait).await {
            return Ok(Confirmed::Stopped);
        }
        if run.stopped() {
            return Ok(Confirmed::Stopped);
        }
        if !misdirected || quick > QUICK_RETRIES {
            attempt += 1;
        }
        let asked: Vec<_> = items.iter().map(|i| (i.id(), i.hash)).collect();
        let answer = run.client.query(&dest, target, &asked).await;
        misdirected = matches!(answer, Err(QueryError::Misdirected(_)));
        others_answer |= misdirected;
        if misdirected {
            quick += 1;
        } else {
            quick = 0;
        }
        match answer {
            Err(QueryError::Refused(e)) => {
                run.state.trusted(d);
                tracing::warn!(dest = %dname, "{dname} refuses this sender ({e}): it holds none of the {} messages", items.len());
                run.state.note_failure(&dname, &e);
                let e = e.to_string();
                ledger::rejected(run, &dname, ledger::ids(&items), &e, true).await?;
                let mut items = items;
                for i in &mut items {
                    i.exclude(d, &dname, &e);
                }
                return Ok(Confirmed::Refused(items));
            }
            Err(QueryError::Unavailable(e) | QueryError::Misdirected(e)) => {
                if misdirected {
                    // Another instance behind `d` answered, definitively: `d` may take new
                    // messages (each pinned to its own instance); only these wait for theirs.
                    run.state.trusted(d);
                }
                if quick == 0 || quick > QUICK_RETRIES {
                    tracing::warn!(
                        dest = %dname,
                        instance = target.unwrap_or("-"),
                        "cannot confirm {} in-doubt messages with {dname}{} (attempt {attempt}): {e}",
                        items.len(),
                        target.map(|t| format!(" (instance {t})")).unwrap_or_default()
                    );
                    run.state.note_failure(&dname, &e);
                }
                misses += 1;
                let since = run.state.unreachable_since(d, target);
                // With other instances answering, the time may have gone to the balancer
                // (a dead backend it still tries): our instance must also have been missed
                // more often than chance explains.
                let enough = !others_answer || misses > QUICK_RETRIES + 1;
                if let Some(after) = run.set.reassign_after
                    && since.elapsed() >= after
                    && enough
                {
                    let gone = if others_answer { target } else { None };
                    return reassign(run, d, gone, items, &e.to_string()).await;
                }
            }
            Ok(held) => {
                run.state.reachable(d, target);
                run.state.trusted(d);
                let held: HashSet<ContentHash> = held.into_iter().collect();
                let (yes, no): (Vec<Item>, Vec<Item>) =
                    items.into_iter().partition(|i| held.contains(&i.hash));
                tracing::info!(
                    dest = %dname,
                    "{dname} confirms it holds {} of the in-doubt messages; re-sending {} to it",
                    yes.len(),
                    no.len()
                );
                let acked = yes
                    .into_iter()
                    .map(|i| i.into_acked("held (confirmed by query)".to_string(), None))
                    .collect();
                run.retire(&dname, acked).await?;
                return Ok(Confirmed::NotHeld(no));
            }
        }
    }
}

/// Releases messages pinned to an unreachable destination (`--reassign-after`). `gone`: only
/// that instance behind `d` stayed unreachable while others answered; then `d` stays open to
/// them (another instance takes them) and the instance is no longer picked as a target.
async fn reassign(
    run: &Run,
    d: usize,
    gone: Option<&str>,
    items: Vec<Item>,
    why: &str,
) -> anyhow::Result<Confirmed> {
    let dname = run.set.name(d);
    let what = gone.map_or_else(|| dname.clone(), |i| format!("{dname} (instance {i})"));
    tracing::error!(
        dest = %dname,
        "{what} stayed unreachable past --reassign-after: sending {} in-doubt messages elsewhere; \
         each is flagged as a possible duplicate in the journal",
        items.len()
    );
    ledger::reassigned(run, &dname, &items, why).await?;
    run.state.trusted(d);
    let mut items = items;
    match gone {
        Some(i) => run.client.instances.forget(&dname, i),
        None => {
            for i in &mut items {
                i.exclude(d, &dname, "unreachable, reassigned");
            }
        }
    }
    Ok(Confirmed::Reassigned(items))
}
