//! Resuming: what an earlier, interrupted attempt of this run left `sent` or `acked` is settled
//! before anything new is sent.
//!
//! Owns the start-up pass over the run's journal records: `acked` messages only need their
//! local copy removed (ledger); `sent` ones are read again (within the byte budget) and settled
//! with the destination they were sent to (`settle`), then re-sent to it or routed anew
//! (`route`), as the outcome says. Messages in doubt with the fallback path go to `fallback`.
//! A `sent` message whose local file cannot be read is settled by a single query. Messages in
//! doubt are grouped by destination and the instance behind it they were sent to: only that
//! instance's answer settles them. Every instance the run's records name is remembered, so the
//! run's finish reaches it.
//!
//! Uses `run`, `item`, `ledger`, `client`, `settle`, `route`, `fallback` and `fallback_dir`;
//! called by `engine::run` when it continues an unfinished run.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::client::QueryError;
use super::failure::{Failure, FailureKind};
use super::fallback;
use super::fallback_dir;
use super::item::Item;
use super::ledger;
use super::report::Problem;
use super::route::{self, Recorded};
use super::run::Run;
use super::settle::{self, Confirmed, FirstQuery};
use crate::base::MessageId;
use crate::journal::{MessageRecord, State};
use crate::spool::{Entry, SpoolError};

/// Messages in doubt, by the destination they were sent to (as the journal names it) and the
/// instance behind it they were addressed to.
type InDoubt = BTreeMap<(String, Option<String>), Vec<(MessageId, MessageRecord)>>;

/// Settles what an earlier attempt of this run left `sent` or `acked`, before anything new is
/// sent.
pub(crate) async fn resume_in_doubt(run: &Arc<Run>) -> anyhow::Result<()> {
    let mut sent: InDoubt = BTreeMap::new();
    let mut acked = Vec::new();
    run.journal.for_each_message(run.set.run_seq, |id, rec| {
        if let (Some(d), Some(i)) = (&rec.dest, &rec.instance) {
            run.client.instances.seen(d, i);
        }
        match rec.state {
            State::Sent => sent
                .entry((rec.dest.clone().unwrap_or_default(), rec.instance.clone()))
                .or_default()
                .push((id, rec)),
            State::Acked => acked.push(Entry {
                queue: rec.queue,
                id,
                path: run.spool.path_of(rec.queue, id),
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
            ledger::remove_local(run, chunk.to_vec()).await?;
        }
    }
    for ((dname, instance), list) in sent {
        if let Some(dir) = dname.strip_prefix(fallback_dir::PREFIX) {
            tracing::info!(
                "{} messages are in doubt with the fallback path {dir}",
                list.len()
            );
            fallback::settle(run, dir, &list).await?;
            continue;
        }
        let Some(d) = run.set.dest_index(&dname) else {
            anyhow::bail!(
                "journal: messages are in doubt with {dname:?}, which is not a destination of the run"
            );
        };
        tracing::info!(
            "{} messages are in doubt with {dname}{}: asking it (beside the new sends)",
            list.len(),
            instance
                .as_deref()
                .map(|i| format!(" (instance {i})"))
                .unwrap_or_default()
        );
        // Each destination is settled by a task of its own, beside the scan: one that does not
        // answer holds up nothing else, and gets nothing new until it answers.
        run.state.suspect(d);
        let task = {
            let run = run.clone();
            async move {
                for chunk in list.chunks(run.set.batch_max.max(64)) {
                    if run.stopped() {
                        return Ok(());
                    }
                    settle_chunk(&run, d, chunk).await?;
                }
                Ok(())
            }
        };
        run.state.add_settling(tokio::spawn(task));
    }
    Ok(())
}

/// Reads the local copies of `chunk` (in doubt with `d`); an unreadable one is settled alone.
/// Returns the items and the ids of those whose file changed since they were sent.
async fn read_pinned(
    run: &Run,
    d: usize,
    chunk: &[(MessageId, MessageRecord)],
) -> anyhow::Result<(Vec<Item>, Vec<MessageId>)> {
    let spool = run.spool.clone();
    let entries: Vec<Entry> = chunk
        .iter()
        .map(|(id, r)| Entry {
            queue: r.queue,
            id: *id,
            path: spool.path_of(r.queue, *id),
        })
        .collect();
    let read = run.read_entries(entries).await?;
    let mut items = Vec::new();
    let mut changed = Vec::new();
    for ((entry, r), (_, rec)) in read.into_iter().zip(chunk) {
        match r {
            Ok(msg) => {
                let mut item = Item::new(entry, msg, run.set.rejected_by(rec));
                item.instance = rec.instance.clone();
                if item.hash != rec.hash {
                    // The file changed since it was sent: ask about what was sent.
                    item.hash = rec.hash;
                    changed.push(item.id());
                }
                items.push(item);
            }
            Err(err) => {
                let missing = matches!(&err, SpoolError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
                lost_local(run, d, entry, rec, &err.to_string(), missing).await?;
            }
        }
    }
    Ok((items, changed))
}

/// Settles one chunk of messages in doubt with `d`, then sends on what `d` does not hold.
async fn settle_chunk(
    run: &Arc<Run>,
    d: usize,
    chunk: &[(MessageId, MessageRecord)],
) -> anyhow::Result<()> {
    let bytes: u64 = chunk.iter().map(|(_, r)| r.size).sum();
    let _permit = run
        .budget
        .clone()
        .acquire_many_owned(run.set.permits_for(bytes))
        .await?;
    let (items, changed) = read_pinned(run, d, chunk).await?;
    if items.is_empty() {
        return Ok(());
    }
    let rest = match settle::confirm(run, d, items, FirstQuery::Now).await? {
        Confirmed::Stopped => return Ok(()),
        Confirmed::Reassigned(mut items) | Confirmed::Refused(mut items) => {
            // Back to `read`: journal them read again with their current content.
            items.iter_mut().for_each(Item::rehash);
            return route::process_batch(run, items, Recorded::Nothing).await;
        }
        Confirmed::NotHeld(rest) => rest,
    };
    // A changed file goes back through `read` with its new content; the rest is re-sent to
    // the destination it is pinned to.
    let (mut changed, same): (Vec<Item>, Vec<Item>) =
        rest.into_iter().partition(|i| changed.contains(&i.id()));
    if !changed.is_empty() {
        let why = "the local file changed since it was sent";
        ledger::not_delivered(run, &run.set.name(d), ledger::ids(&changed), why).await?;
        changed.iter_mut().for_each(Item::rehash);
        route::process_batch(run, changed, Recorded::Nothing).await?;
    }
    if same.is_empty() {
        return Ok(());
    }
    let sorted = route::resend_to(run, d, same).await?;
    route::process_batch(run, sorted.retry, Recorded::Read).await
}

/// A message journaled `sent` whose local file cannot be read: it can only be settled by the
/// destination holding it.
async fn lost_local(
    run: &Run,
    d: usize,
    entry: Entry,
    rec: &MessageRecord,
    err: &str,
    missing: bool,
) -> anyhow::Result<()> {
    let dname = run.set.name(d);
    let mut held = Err(QueryError::Misdirected(Failure::new(
        FailureKind::Other,
        "not asked",
    )));
    // A `421` (another instance behind a balancer answered) is asked again a few times.
    for _ in 0..=settle::QUICK_RETRIES {
        held = run
            .client
            .query(
                &run.set.dests[d],
                rec.instance.as_deref(),
                &[(entry.id, rec.hash)],
            )
            .await;
        if !matches!(held, Err(QueryError::Misdirected(_))) {
            break;
        }
    }
    let id = entry.id;
    let why = match held {
        Ok(h) if h.contains(&rec.hash) => {
            let note = "held (confirmed by query)";
            return ledger::acked_entries(run, &dname, vec![entry], note).await;
        }
        // Settle the record when the destination answered, so the run can finish; the
        // message is reported undelivered (exit 12) and the scan skips it.
        Ok(_) => {
            let why = format!("{dname} does not hold it and the local copy cannot be read ({err})");
            ledger::not_delivered(run, &dname, std::iter::once(id), &why).await?;
            why
        }
        Err(e) => {
            let why = format!("cannot ask {dname} ({e}) and the local copy cannot be read ({err})");
            if let QueryError::Refused(reason) = e {
                let reason = reason.to_string();
                ledger::rejected(run, &dname, std::iter::once(id), &reason, true).await?;
            }
            why
        }
    };
    tracing::error!(id = %id, missing, "in-doubt message: {why}");
    run.state.mark_failed(id.to_string());
    run.state.report().undelivered.push(Problem {
        what: id.to_string(),
        reason: why,
    });
    Ok(())
}
