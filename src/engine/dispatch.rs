//! Sending a batch: destination choice (round-robin with failover), the `sent` record before
//! each request, and what each kind of answer does to each message.
//!
//! Failover rules: a destination that cannot be reached or answers 503 is skipped for this
//! message and tried again at its next turn; when every destination failed in a round, the
//! batch waits with backoff and tries again (until it succeeds or a stop is requested). A
//! permanent rejection excludes that destination for that message; a message every destination
//! rejected permanently stays in the spool (exit 12). An ambiguous end pins the messages to
//! that destination (`settle`).

use std::collections::HashSet;

use bytes::Bytes;

use super::Ctx;
use super::client::Delivery;
use super::report::Problem;
use super::settle::Confirmed;
use crate::base::ContentHash;
use crate::journal::Op;
use crate::spool::{Entry, Message};
use crate::wire::{self, ItemResult, Outcome, RejectCode};

/// A message on its way: where it is on disk, its bytes, and who rejected it for good.
pub(crate) struct Item {
    pub entry: Entry,
    pub msg: Message,
    pub hash: ContentHash,
    /// Indexes into `ctx.dests` of destinations that rejected it permanently.
    pub rejected: Vec<usize>,
    pub reasons: Vec<String>,
}

impl Item {
    pub fn new(entry: Entry, msg: Message, rejected: Vec<usize>) -> Item {
        let hash = msg.hash;
        Item {
            entry,
            msg,
            hash,
            rejected,
            reasons: Vec::new(),
        }
    }

    fn size(&self) -> u64 {
        self.msg.bytes.len() as u64
    }

    /// Excludes destination `d` (named `dname`) for this message, saying why.
    pub fn exclude(&mut self, d: usize, dname: &str, reason: &str) {
        self.rejected.push(d);
        self.reasons.push(format!("{dname}: {reason}"));
    }

    /// Goes back to the hash of the content read (after asking about an older one).
    pub fn rehash(&mut self) {
        self.hash = self.msg.hash;
    }
}

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
}

/// Sends a batch of freshly read messages (`journal_read`: record them `read` first) until
/// each is acknowledged, rejected by every destination, or a stop is requested.
pub(crate) async fn process_batch(
    ctx: &Ctx,
    items: Vec<Item>,
    journal_read: bool,
) -> anyhow::Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    if journal_read {
        ctx.journal
            .commit(
                items
                    .iter()
                    .map(|i| Op::Read {
                        run: ctx.run_seq,
                        id: i.entry.id,
                        queue: i.entry.queue,
                        hash: i.hash,
                        size: i.size(),
                    })
                    .collect(),
            )
            .await?;
    }
    let n = ctx.dests.len();
    let mut pending = items;
    let mut failed_round: HashSet<usize> = HashSet::new();
    let mut round = 0u32;
    let mut single = false;
    while !pending.is_empty() {
        if ctx.stop.is_set() {
            // Not sent: journaled `read`, still in the spool; a later run takes them.
            return Ok(());
        }
        if let Some(fb) = ctx.fallback_due() {
            return super::fallback::move_items(ctx, fb, pending).await;
        }
        let (dead, alive): (Vec<Item>, Vec<Item>) = pending.into_iter().partition(|i| {
            (0..n)
                .filter(|&d| ctx.active[d])
                .all(|d| i.rejected.contains(&d))
        });
        for i in dead {
            give_up(
                ctx,
                &i,
                &format!("rejected by every destination: {}", i.reasons.join("; ")),
            );
        }
        pending = alive;
        if pending.is_empty() {
            break;
        }
        let Some(d) = ctx.next_dest(|d| {
            !failed_round.contains(&d) && pending.iter().any(|i| !i.rejected.contains(&d))
        }) else {
            round += 1;
            let wait = ctx.until_fallback(backoff(round));
            tracing::warn!(
                round,
                waiting = ?wait,
                "every destination failed for {} messages; retrying in {:?}",
                pending.len(),
                wait
            );
            if ctx.stop.sleep(wait).await {
                return Ok(());
            }
            failed_round.clear();
            continue;
        };
        let (mut sub, rest): (Vec<Item>, Vec<Item>) =
            pending.into_iter().partition(|i| !i.rejected.contains(&d));
        let mut rest = rest;
        if single && sub.len() > 1 {
            rest.extend(sub.split_off(1));
        }
        let sorted = send(ctx, d, sub, false).await?;
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

pub use crate::base::backoff;

/// Records a message as not deliverable in this run; it stays in the spool.
pub(crate) fn give_up(ctx: &Ctx, item: &Item, reason: &str) {
    let id = item.entry.id.to_string();
    if ctx.mark_failed(id.clone()) {
        tracing::error!(id = %id, "cannot deliver {}: {reason}", item.entry.path.display());
        ctx.report().undelivered.push(Problem {
            what: id,
            reason: reason.to_string(),
        });
    }
}

/// How one request ended for its items.
pub(crate) enum Step {
    Done(Sorted),
    /// The destination may hold them: they stay pinned to it.
    Ambiguous(Vec<Item>),
}

/// Sends `items` to destination `d` (journaling `sent` first unless they already are `sent`
/// to it) and sorts out the answer. After an ambiguous end the items are confirmed with a
/// query and only re-sent to `d`.
pub(crate) async fn send(
    ctx: &Ctx,
    d: usize,
    items: Vec<Item>,
    already_sent: bool,
) -> anyhow::Result<Sorted> {
    if !already_sent {
        journal_sent(ctx, &ctx.dests[d].to_string(), &items).await?;
    }
    let mut items = items;
    loop {
        match deliver(ctx, d, items).await? {
            Step::Done(sorted) => return Ok(sorted),
            Step::Ambiguous(pinned) => match super::settle::confirm(ctx, d, pinned, true).await? {
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
            },
        }
    }
}

/// `read` -> `sent(dest)`, durably, before anything leaves (invariant 2).
pub(crate) async fn journal_sent(ctx: &Ctx, dest: &str, items: &[Item]) -> anyhow::Result<()> {
    ctx.journal
        .commit(
            items
                .iter()
                .map(|i| Op::Sent {
                    run: ctx.run_seq,
                    id: i.entry.id,
                    dest: dest.to_string(),
                    possible_duplicate: false,
                })
                .collect(),
        )
        .await?;
    Ok(())
}

/// One request to `d` with items already journaled `sent` to it.
pub(crate) async fn deliver(ctx: &Ctx, d: usize, items: Vec<Item>) -> anyhow::Result<Step> {
    let dest = ctx.dests[d].clone();
    let dname = dest.to_string();
    let body = encode(&items);
    let delivery = ctx.client.transfer(&dest, body, items.len()).await;
    let mut sorted = Sorted::default();
    match delivery {
        Delivery::NotDelivered(reason) => {
            tracing::warn!(dest = %dname, "{dname} did not take {} messages: {reason}; failing over", items.len());
            ctx.note_failure(&dname, &reason);
            release(ctx, &dname, &items, &reason).await?;
            sorted.dest_failed = true;
            sorted.retry = items;
        }
        Delivery::Refused {
            status,
            permanent,
            reason,
        } => {
            tracing::warn!(dest = %dname, "{dname} refused {} messages: {reason}", items.len());
            ctx.note_failure(&dname, &reason);
            if status == 413 && items.len() > 1 {
                release(ctx, &dname, &items, &reason).await?;
                sorted.split = true;
                sorted.retry = items;
            } else {
                reject(ctx, &dname, &items, &reason, permanent).await?;
                sorted.retry = items;
                if permanent {
                    for i in &mut sorted.retry {
                        i.exclude(d, &dname, &reason);
                    }
                }
                sorted.dest_failed = !permanent;
            }
        }
        Delivery::Ambiguous(reason) => {
            tracing::warn!(
                dest = %dname,
                "request to {dname} ended ambiguously ({reason}); its {} messages stay with {dname} until it confirms",
                items.len()
            );
            ctx.note_failure(&dname, &reason);
            return Ok(Step::Ambiguous(items));
        }
        Delivery::Answered(results) => {
            return Ok(Step::Done(answered(ctx, d, items, results).await?));
        }
    }
    Ok(Step::Done(sorted))
}

/// Applies per-message outcomes.
async fn answered(
    ctx: &Ctx,
    d: usize,
    items: Vec<Item>,
    results: Vec<ItemResult>,
) -> anyhow::Result<Sorted> {
    let dname = ctx.dests[d].to_string();
    let mut sorted = Sorted::default();
    let mut acked = Vec::new();
    let mut rejected_ops = Vec::new();
    for (mut item, res) in items.into_iter().zip(results) {
        let reason = res.reason.clone().unwrap_or_default();
        match res.outcome {
            Outcome::Stored | Outcome::AlreadyHeld => {
                let note = if res.outcome == Outcome::Stored {
                    "stored"
                } else {
                    "already held"
                };
                acked.push((item, note.to_string()));
            }
            Outcome::RejectedPermanent | Outcome::RejectedTransient => {
                ctx.note_failure(&dname, &reason);
                let mut permanent = res.outcome == Outcome::RejectedPermanent;
                if permanent && res.code == Some(RejectCode::HashMismatch) && changed_on_disk(&item)
                {
                    // Our copy changed under us: not the destination's fault; read it again.
                    permanent = false;
                }
                tracing::warn!(dest = %dname, id = %item.entry.id, "{dname} rejected {}: {reason}", item.entry.id);
                rejected_ops.push(Op::Rejected {
                    run: ctx.run_seq,
                    id: item.entry.id,
                    dest: dname.clone(),
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
    ctx.journal.commit(rejected_ops).await?;
    finish_acked(ctx, &dname, acked).await?;
    Ok(sorted)
}

/// True when the local file no longer hashes as it did when read.
fn changed_on_disk(item: &Item) -> bool {
    match crate::spool::read_file(&item.entry.path) {
        Ok(b) => crate::spool::format::hash(&b) != item.msg.hash,
        Err(_) => true,
    }
}

/// `sent` -> `read`: the destination certainly does not hold them.
pub(crate) async fn release(
    ctx: &Ctx,
    dest: &str,
    items: &[Item],
    reason: &str,
) -> anyhow::Result<()> {
    ctx.journal
        .commit(
            items
                .iter()
                .map(|i| Op::NotDelivered {
                    run: ctx.run_seq,
                    id: i.entry.id,
                    dest: dest.to_string(),
                    reason: reason.to_string(),
                })
                .collect(),
        )
        .await?;
    Ok(())
}

/// `sent` -> `read`, remembering the rejection (a permanent one excludes `dest`).
pub(crate) async fn reject(
    ctx: &Ctx,
    dest: &str,
    items: &[Item],
    reason: &str,
    permanent: bool,
) -> anyhow::Result<()> {
    ctx.journal
        .commit(
            items
                .iter()
                .map(|i| Op::Rejected {
                    run: ctx.run_seq,
                    id: i.entry.id,
                    dest: dest.to_string(),
                    reason: reason.to_string(),
                    permanent,
                })
                .collect(),
        )
        .await?;
    Ok(())
}

/// `acked` (durable) -> remove the local files (durable) -> `deleted`.
pub(crate) async fn finish_acked(
    ctx: &Ctx,
    dest: &str,
    acked: Vec<(Item, String)>,
) -> anyhow::Result<()> {
    if acked.is_empty() {
        return Ok(());
    }
    ctx.journal
        .commit(
            acked
                .iter()
                .map(|(i, note)| Op::Acked {
                    run: ctx.run_seq,
                    id: i.entry.id,
                    dest: dest.to_string(),
                    note: note.clone(),
                })
                .collect(),
        )
        .await?;
    {
        let mut r = ctx.report();
        for (i, _) in &acked {
            r.delivered
                .entry(dest.to_string())
                .or_default()
                .add(i.size());
            r.by_queue
                .entry(i.entry.queue.to_string())
                .or_default()
                .add(i.size());
        }
    }
    remove_local(ctx, acked.into_iter().map(|(i, _)| i.entry).collect()).await
}

/// Removes acknowledged local copies and journals the result of each.
pub(crate) async fn remove_local(ctx: &Ctx, entries: Vec<Entry>) -> anyhow::Result<()> {
    let spool = ctx.spool.clone();
    let (entries, results) = tokio::task::spawn_blocking(move || {
        let r = spool.remove_many(&entries);
        (entries, r)
    })
    .await?;
    let mut ops = Vec::with_capacity(entries.len());
    let mut removed = 0;
    for (e, r) in entries.iter().zip(results) {
        match r {
            Ok(()) => {
                removed += 1;
                ops.push(Op::Deleted {
                    run: ctx.run_seq,
                    id: e.id,
                });
            }
            Err(err) => {
                tracing::error!(id = %e.id, "delivered, but removing the local copy failed: {err}");
                ctx.mark_failed(e.id.to_string());
                ops.push(Op::RemoveFailed {
                    run: ctx.run_seq,
                    id: e.id,
                    reason: err.to_string(),
                });
                ctx.report().remove_failed.push(Problem {
                    what: e.id.to_string(),
                    reason: err.to_string(),
                });
            }
        }
    }
    ctx.journal.commit(ops).await?;
    ctx.report().removed += removed;
    Ok(())
}
