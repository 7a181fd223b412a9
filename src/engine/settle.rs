//! Settling messages whose fate is unknown: ask the destination they were sent to.
//!
//! Two sources: a request that ended ambiguously during this invocation, and messages an
//! earlier, interrupted attempt of the run left journaled `sent` or `acked`. A `sent` message
//! is never offered to another destination while the one it was sent to may hold it: we query
//! that destination (with backoff, until it answers or a stop is requested), acknowledge what
//! it holds, and re-send the rest to it alone. `acked` messages only need their local copy
//! removed.

use std::collections::{BTreeMap, HashSet};

use super::Ctx;
use super::dispatch::{self, Item, backoff};
use crate::journal::{Op, State};
use crate::spool::{Entry, MessageId, SpoolError};

/// Queries `d` for `items` (journaled `sent` to `d`) until it answers; acknowledges and removes
/// what it holds. Returns the ones it does not hold (still `sent` to `d`), or `None` when a
/// stop was requested first (they stay in doubt for `drain resume`).
pub(crate) async fn confirm(
    ctx: &Ctx,
    d: usize,
    items: Vec<Item>,
    wait_first: bool,
) -> anyhow::Result<Option<Vec<Item>>> {
    let dest = ctx.dests[d].clone();
    let dname = dest.to_string();
    let mut attempt = 0u32;
    loop {
        if (wait_first || attempt > 0) && ctx.stop.sleep(backoff(attempt + 1)).await {
            return Ok(None);
        }
        if ctx.stop.is_set() {
            return Ok(None);
        }
        attempt += 1;
        let hashes: Vec<String> = items.iter().map(|i| i.hash.clone()).collect();
        match ctx.client.query(&dest, &hashes).await {
            Err(e) => {
                tracing::warn!(
                    dest = %dname,
                    "cannot confirm {} in-doubt messages with {dname} (attempt {attempt}): {e}",
                    items.len()
                );
                ctx.note_failure(&dname, &format!("query: {e}"));
            }
            Ok(held) => {
                let held: HashSet<String> = held.into_iter().collect();
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
                return Ok(Some(no));
            }
        }
    }
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
        let Some(d) = ctx.dests.iter().position(|x| x.to_string() == dname) else {
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
    for ((entry, r), (_, rec)) in read.into_iter().zip(chunk) {
        match r {
            Ok(msg) => items.push(Item::new(entry, msg, Vec::new())),
            Err(err) => {
                let missing = matches!(&err, SpoolError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
                lost_local(ctx, d, entry, rec, &err.to_string(), missing).await?;
            }
        }
    }
    if items.is_empty() {
        return Ok(());
    }
    let Some(rest) = confirm(ctx, d, items, false).await? else {
        return Ok(());
    };
    if rest.is_empty() {
        return Ok(());
    }
    let sorted = dispatch::send(ctx, d, rest, true).await?;
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
        .query(&ctx.dests[d], std::slice::from_ref(&rec.hash))
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
            let why = match other {
                Ok(_) => {
                    format!("{dname} does not hold it and the local copy cannot be read ({err})")
                }
                Err(e) => {
                    format!("cannot ask {dname} ({e}) and the local copy cannot be read ({err})")
                }
            };
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
