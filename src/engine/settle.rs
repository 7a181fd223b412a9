//! Settling messages whose fate is unknown: ask the destination they were sent to.
//!
//! Two sources: a request that ended ambiguously during this invocation, and messages an
//! earlier, interrupted attempt of the run left journaled `sent` or `acked`. A `sent` message
//! is never offered to another destination while the one it was sent to may hold it: we query
//! that destination (with backoff, until it answers or a stop is requested), acknowledge what
//! it holds, and re-send the rest to it alone. `acked` messages only need their local copy
//! removed. The one exception to "never elsewhere" is `--reassign-after`: when the destination
//! stays unreachable that long (measured per destination), the messages go elsewhere and each
//! is flagged in the journal as a possible duplicate.

use std::collections::{BTreeMap, HashSet};

use super::Ctx;
use super::client::QueryError;
use super::dispatch::{self, Item, backoff};
use crate::base::ContentHash;
use crate::base::MessageId;
use crate::journal::{Op, State};
use crate::spool::{Entry, SpoolError};

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

/// Queries `d` for `items` (journaled `sent` to `d`) until it answers; acknowledges and removes
/// what it holds.
pub(crate) async fn confirm(
    ctx: &Ctx,
    d: usize,
    items: Vec<Item>,
    wait_first: bool,
) -> anyhow::Result<Confirmed> {
    let dest = ctx.dests[d].clone();
    let dname = dest.to_string();
    let mut attempt = 0u32;
    loop {
        if (wait_first || attempt > 0) && ctx.stop.sleep(backoff(attempt + 1)).await {
            return Ok(Confirmed::Stopped);
        }
        if ctx.stop.is_set() {
            return Ok(Confirmed::Stopped);
        }
        attempt += 1;
        let asked: Vec<_> = items.iter().map(|i| (i.entry.id, i.hash)).collect();
        match ctx.client.query(&dest, &asked).await {
            Err(QueryError::Refused(e)) => {
                tracing::warn!(dest = %dname, "{dname} refuses this sender ({e}): it holds none of the {} messages", items.len());
                ctx.note_failure(&dname, &e);
                dispatch::reject(ctx, &dname, &items, &e, true).await?;
                let mut items = items;
                for i in &mut items {
                    i.exclude(d, &dname, &e);
                }
                return Ok(Confirmed::Refused(items));
            }
            Err(QueryError::Unavailable(e)) => {
                tracing::warn!(
                    dest = %dname,
                    "cannot confirm {} in-doubt messages with {dname} (attempt {attempt}): {e}",
                    items.len()
                );
                ctx.note_failure(&dname, &format!("query: {e}"));
                let since = ctx.unreachable_since(d);
                if let Some(after) = ctx.reassign_after
                    && since.elapsed() >= after
                {
                    return reassign(ctx, d, items, &e).await;
                }
            }
            Ok(held) => {
                ctx.reachable(d);
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
                    .map(|i| (i, "held (confirmed by query)".to_string()))
                    .collect();
                dispatch::finish_acked(ctx, &dname, acked).await?;
                return Ok(Confirmed::NotHeld(no));
            }
        }
    }
}

/// Releases messages pinned to an unreachable destination (`--reassign-after`).
async fn reassign(ctx: &Ctx, d: usize, items: Vec<Item>, why: &str) -> anyhow::Result<Confirmed> {
    let dname = ctx.dests[d].to_string();
    tracing::error!(
        dest = %dname,
        "{dname} stayed unreachable past --reassign-after: sending {} in-doubt messages elsewhere; \
         each is flagged as a possible duplicate in the journal",
        items.len()
    );
    ctx.journal
        .commit(
            items
                .iter()
                .map(|i| Op::Reassigned {
                    run: ctx.run_seq,
                    id: i.entry.id,
                    from: dname.clone(),
                    reason: why.to_string(),
                })
                .collect(),
        )
        .await?;
    let mut items = items;
    for i in &mut items {
        i.exclude(d, &dname, "unreachable, reassigned");
    }
    Ok(Confirmed::Reassigned(items))
}

/// Settles what an earlier attempt of this run left `sent` or `acked`, before anything new is
/// sent.
pub(crate) async fn resume_in_doubt(ctx: &Ctx) -> anyhow::Result<()> {
    let mut sent: BTreeMap<String, Vec<(MessageId, crate::journal::MessageRecord)>> =
        BTreeMap::new();
    let mut acked = Vec::new();
    ctx.journal.for_each_message(ctx.run_seq, |id, rec| {
        match rec.state {
            State::Sent => sent
                .entry(rec.dest.clone().unwrap_or_default())
                .or_default()
                .push((id, rec)),
            State::Acked => acked.push(Entry {
                queue: rec.queue,
                id,
                path: ctx.spool.path_of(rec.queue, id),
            }),
            State::Read | State::Deleted => {}
        }
        Ok(())
    })?;
    if !acked.is_empty() {
        tracing::info!(
            "removing {} local copies acknowledged before the interruption",
            acked.len()
        );
        for chunk in acked.chunks(1024) {
            dispatch::remove_local(ctx, chunk.to_vec()).await?;
        }
    }
    for (dname, list) in sent {
        if let Some(dir) = dname.strip_prefix(super::fallback::PREFIX) {
            tracing::info!(
                "{} messages are in doubt with the fallback path {dir}",
                list.len()
            );
            super::fallback::settle(ctx, dir, &list).await?;
            continue;
        }
        let Some(d) = ctx.dest_index(&dname) else {
            anyhow::bail!(
                "journal: messages are in doubt with {dname:?}, which is not a destination of the run"
            );
        };
        tracing::info!(
            "{} messages are in doubt with {dname}: asking it",
            list.len()
        );
        for chunk in list.chunks(ctx.batch_max.max(64)) {
            if ctx.stop.is_set() {
                return Ok(());
            }
            settle_chunk(ctx, d, chunk).await?;
        }
    }
    Ok(())
}

async fn settle_chunk(
    ctx: &Ctx,
    d: usize,
    chunk: &[(MessageId, crate::journal::MessageRecord)],
) -> anyhow::Result<()> {
    let bytes: u64 = chunk.iter().map(|(_, r)| r.size).sum();
    let _permit = ctx
        .budget
        .clone()
        .acquire_many_owned(ctx.permits_for(bytes))
        .await?;
    let spool = ctx.spool.clone();
    let entries: Vec<Entry> = chunk
        .iter()
        .map(|(id, r)| Entry {
            queue: r.queue,
            id: *id,
            path: spool.path_of(r.queue, *id),
        })
        .collect();
    let read = tokio::task::spawn_blocking(move || {
        entries
            .into_iter()
            .map(|e| {
                let r = spool.read(&e);
                (e, r)
            })
            .collect::<Vec<_>>()
    })
    .await?;
    let mut items = Vec::new();
    let mut changed = Vec::new();
    for ((entry, r), (_, rec)) in read.into_iter().zip(chunk) {
        match r {
            Ok(msg) => {
                let mut item = Item::new(entry, msg, ctx.rejected_by(rec));
                if item.hash != rec.hash {
                    // The file changed since it was sent: ask about what was sent.
                    item.hash = rec.hash;
                    changed.push(item.entry.id);
                }
                items.push(item);
            }
            Err(err) => {
                let missing = matches!(&err, SpoolError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
                lost_local(ctx, d, entry, rec, &err.to_string(), missing).await?;
            }
        }
    }
    if items.is_empty() {
        return Ok(());
    }
    let rest = match confirm(ctx, d, items, false).await? {
        Confirmed::Stopped => return Ok(()),
        Confirmed::Reassigned(items) | Confirmed::Refused(items) => {
            // Back to `read`: journal them read again with their current content.
            let mut items = items;
            items.iter_mut().for_each(Item::rehash);
            return dispatch::process_batch(ctx, items, true).await;
        }
        Confirmed::NotHeld(rest) => rest,
    };
    // A changed file goes back through `read` with its new content; the rest is re-sent to
    // the destination it is pinned to.
    let (changed, same): (Vec<Item>, Vec<Item>) = rest
        .into_iter()
        .partition(|i| changed.contains(&i.entry.id));
    if !changed.is_empty() {
        let dname = ctx.dests[d].to_string();
        dispatch::release(
            ctx,
            &dname,
            &changed,
            "the local file changed since it was sent",
        )
        .await?;
        let mut fresh = changed;
        fresh.iter_mut().for_each(Item::rehash);
        dispatch::process_batch(ctx, fresh, true).await?;
    }
    if same.is_empty() {
        return Ok(());
    }
    let sorted = dispatch::send(ctx, d, same, true).await?;
    dispatch::process_batch(ctx, sorted.retry, false).await
}

/// A message journaled `sent` whose local file cannot be read: it can only be settled by the
/// destination holding it.
async fn lost_local(
    ctx: &Ctx,
    d: usize,
    entry: Entry,
    rec: &crate::journal::MessageRecord,
    err: &str,
    missing: bool,
) -> anyhow::Result<()> {
    let dname = ctx.dests[d].to_string();
    let held = ctx
        .client
        .query(&ctx.dests[d], &[(entry.id, rec.hash)])
        .await;
    match held {
        Ok(h) if h.contains(&rec.hash) => {
            ctx.journal
                .commit(vec![Op::Acked {
                    run: ctx.run_seq,
                    id: entry.id,
                    dest: dname,
                    note: "held (confirmed by query)".into(),
                }])
                .await?;
            dispatch::remove_local(ctx, vec![entry]).await
        }
        other => {
            // Settle the record when the destination answered, so the run can finish; the
            // message is reported undelivered (exit 12) and the scan skips it.
            let why = match &other {
                Ok(_) => {
                    format!("{dname} does not hold it and the local copy cannot be read ({err})")
                }
                Err(e) => {
                    format!("cannot ask {dname} ({e}) and the local copy cannot be read ({err})")
                }
            };
            let op = match other {
                Ok(_) => Some(Op::NotDelivered {
                    run: ctx.run_seq,
                    id: entry.id,
                    dest: dname.clone(),
                    reason: why.clone(),
                }),
                Err(QueryError::Refused(e)) => Some(Op::Rejected {
                    run: ctx.run_seq,
                    id: entry.id,
                    dest: dname.clone(),
                    reason: e,
                    permanent: true,
                }),
                Err(QueryError::Unavailable(_)) => None,
            };
            if let Some(op) = op {
                ctx.journal.commit(vec![op]).await?;
            }
            tracing::error!(id = %entry.id, missing, "in-doubt message: {why}");
            ctx.mark_failed(entry.id.to_string());
            ctx.report().undelivered.push(super::report::Problem {
                what: entry.id.to_string(),
                reason: why,
            });
            Ok(())
        }
    }
}
