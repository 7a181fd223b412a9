//! The ledger: the only code that writes a message's journal records and removes local copies.
//!
//! Every state change of a message goes through one function here, each one commit (one
//! durable group) of one kind of record: `sent` (with `read` first for a batch just read from
//! the spool, so a new batch costs one commit before it leaves), `parked`, `not delivered`,
//! `rejected`, `reassigned`, `acked`, `deleted` / `remove failed`, and `unreadable` for files;
//! plus the run record (`put_run`). The report's counts of what was delivered, removed or
//! failed follow the records they describe.
//!
//! Invariants (product.md): callers journal `sent` (and wait for it) before a request leaves;
//! a local file is removed only after its `acked` record is durable, and only here
//! ([`acked`], [`acked_entries`], [`moved_to_fallback`], [`remove_local`]).
//! Uses `run`, `item`, `report` and `fallback_dir`; called by `scan`, `route`, `deliver`,
//! `settle`, `commit`, `fallback`, `resume`, `retire` and `lifecycle`.

use super::fallback_dir::FallbackDir;
use super::item::Item;
use super::report::Problem;
use super::run::{Retiring, Run};
use crate::base::MessageId;
use crate::journal::{Journal, Op, RunRecord};
use crate::spool::{Entry, SpoolError};

/// The ids of `items`.
pub(crate) fn ids(items: &[Item]) -> impl Iterator<Item = MessageId> + '_ {
    items.iter().map(Item::id)
}

/// `read` records for new or re-read messages, with the content's hash and size.
fn read_ops<'a>(run: &'a Run, items: &'a [Item]) -> impl Iterator<Item = Op> + 'a {
    items.iter().map(|i| Op::Read {
        run: run.set.run_seq,
        id: i.id(),
        queue: i.entry.queue,
        hash: i.hash,
        size: i.size(),
    })
}

/// `read` -> `sent(dest)` addressed to `instance` behind it, durably, before anything leaves
/// (invariant 2); the items then carry the instance they are pinned to. `new`: the batch is
/// not journaled yet (just read from the spool); `items` and `new` are journaled `read` in the
/// same commit, so a new batch costs one durable commit before it is sent.
pub(crate) async fn sent(
    run: &Run,
    dest: &str,
    instance: Option<&str>,
    items: &mut [Item],
    new: Option<&[Item]>,
) -> anyhow::Result<()> {
    let mut ops: Vec<Op> = match new {
        Some(rest) => read_ops(run, items).chain(read_ops(run, rest)).collect(),
        None => Vec::new(),
    };
    ops.extend(ids(items).map(|id| Op::Sent {
        run: run.set.run_seq,
        id,
        dest: dest.to_string(),
        possible_duplicate: false,
        instance: instance.map(String::from),
    }));
    run.journal.commit(ops).await?;
    for i in items {
        i.instance = instance.map(String::from);
    }
    Ok(())
}

/// `sent(dest)` pinned anew to `instance`, the instance behind `dest` that parked them,
/// durably, before the commit to it leaves; the items then carry that instance.
pub(crate) async fn parked(
    run: &Run,
    dest: &str,
    instance: &str,
    items: &mut [Item],
) -> anyhow::Result<()> {
    let ops = ids(items)
        .map(|id| Op::Parked {
            run: run.set.run_seq,
            id,
            dest: dest.to_string(),
            instance: instance.to_string(),
        })
        .collect();
    run.journal.commit(ops).await?;
    for i in items {
        i.instance = Some(instance.to_string());
    }
    Ok(())
}

/// `sent` -> `read`: the destination certainly does not hold them.
pub(crate) async fn not_delivered(
    run: &Run,
    dest: &str,
    ids: impl Iterator<Item = MessageId>,
    reason: &str,
) -> anyhow::Result<()> {
    let ops = ids
        .map(|id| Op::NotDelivered {
            run: run.set.run_seq,
            id,
            dest: dest.to_string(),
            reason: reason.to_string(),
        })
        .collect();
    Ok(run.journal.commit(ops).await?)
}

/// One rejection of one message.
pub(crate) struct Rejection {
    pub id: MessageId,
    pub reason: String,
    pub permanent: bool,
}

/// `sent` -> `read`, remembering each rejection (a permanent one excludes `dest`).
pub(crate) async fn rejected_each(
    run: &Run,
    dest: &str,
    list: Vec<Rejection>,
) -> anyhow::Result<()> {
    let ops = list
        .into_iter()
        .map(|r| Op::Rejected {
            run: run.set.run_seq,
            id: r.id,
            dest: dest.to_string(),
            reason: r.reason,
            permanent: r.permanent,
        })
        .collect();
    Ok(run.journal.commit(ops).await?)
}

/// `sent` -> `read` for all of `ids`, for the same reason.
pub(crate) async fn rejected(
    run: &Run,
    dest: &str,
    ids: impl Iterator<Item = MessageId>,
    reason: &str,
    permanent: bool,
) -> anyhow::Result<()> {
    let list = ids
        .map(|id| Rejection {
            id,
            reason: reason.to_string(),
            permanent,
        })
        .collect();
    rejected_each(run, dest, list).await
}

/// `sent(from)` -> `read`, flagged as a possible duplicate (`--reassign-after`).
pub(crate) async fn reassigned(
    run: &Run,
    from: &str,
    items: &[Item],
    why: &str,
) -> anyhow::Result<()> {
    let ops = ids(items)
        .map(|id| Op::Reassigned {
            run: run.set.run_seq,
            id,
            from: from.to_string(),
            reason: why.to_string(),
        })
        .collect();
    run.journal.commit(ops).await?;
    let mut r = run.state.report();
    for id in ids(items) {
        r.possible_duplicates.push(Problem {
            what: id.to_string(),
            reason: format!(
                "reassigned away from {from}, unreachable past --reassign-after ({why}); it may \
                 hold it too"
            ),
        });
    }
    Ok(())
}

/// One `acked` to journal: who took it, how, and which instance behind `dest` answered.
struct Ack {
    dest: String,
    id: MessageId,
    note: String,
    by: Option<String>,
}

impl Ack {
    fn new(dest: &str, id: MessageId, note: &str) -> Ack {
        Ack {
            dest: dest.to_string(),
            id,
            note: note.to_string(),
            by: None,
        }
    }
}

/// Commits `acked(dest)` for each, in one commit.
async fn commit_acked(run: &Run, acked: Vec<Ack>) -> anyhow::Result<()> {
    let ops = acked
        .into_iter()
        .map(|a| Op::Acked {
            run: run.set.run_seq,
            id: a.id,
            dest: a.dest,
            note: a.note,
            instance: a.by,
        })
        .collect();
    Ok(run.journal.commit(ops).await?)
}

/// For a group of acknowledged batches (of any destinations): `acked(dest)` in one commit
/// (durable) -> remove the local files (one directory sync per queue) -> `deleted`.
pub(crate) async fn acked(run: &Run, group: Vec<Retiring>) -> anyhow::Result<()> {
    if group.iter().all(|b| b.acked.is_empty()) {
        return Ok(());
    }
    let each = group
        .iter()
        .flat_map(|b| {
            b.acked.iter().map(|a| Ack {
                by: a.by.clone(),
                ..Ack::new(&b.dest, a.entry.id, &a.note)
            })
        })
        .collect();
    commit_acked(run, each).await?;
    {
        let mut r = run.state.report();
        for b in &group {
            for a in &b.acked {
                r.delivered.entry(b.dest.clone()).or_default().add(a.size);
                r.by_queue
                    .entry(a.entry.queue.to_string())
                    .or_default()
                    .add(a.size);
            }
        }
    }
    // The claims go with the entries' removal (dropped with `group` below).
    let entries = group
        .iter()
        .flat_map(|b| b.acked.iter().map(|a| a.entry.clone()))
        .collect();
    remove_local(run, entries).await
}

/// `acked(dest)` for messages known only by their entries (settling after an interruption),
/// then their local copies removed.
pub(crate) async fn acked_entries(
    run: &Run,
    dest: &str,
    entries: Vec<Entry>,
    note: &str,
) -> anyhow::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let each = entries.iter().map(|e| Ack::new(dest, e.id, note));
    commit_acked(run, each.collect()).await?;
    remove_local(run, entries).await
}

/// `acked(fallback:DIR)` for copies written durably into the fallback directory, then the
/// local copies removed. `completed`: the moves an interrupted attempt began (counted apart
/// from this invocation's).
pub(crate) async fn moved_to_fallback(
    run: &Run,
    fb: &FallbackDir,
    items: Vec<Item>,
    completed: bool,
) -> anyhow::Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let note = "moved to the fallback path";
    let each = ids(&items).map(|id| Ack::new(&fb.name, id, note));
    commit_acked(run, each.collect()).await?;
    {
        let mut r = run.state.report();
        r.fallback_path = Some(fb.dir.display().to_string());
        for i in &items {
            if completed {
                r.fallback_completed += 1;
            } else {
                r.fallback.add(i.size());
            }
        }
    }
    remove_local(run, items.into_iter().map(|i| i.entry).collect()).await
}

/// Removes acknowledged local copies and journals the result of each (`deleted` or
/// `remove failed`). Callers: only after the `acked` records are durable.
///
/// The unlinks are not synced here: `retire::close` syncs the queue directories once at the
/// end of the invocation, before the run can be recorded finished. A power cut before that
/// may bring a file back whose record says `deleted`; the continuing run removes it again
/// ([`removed_again`]), as the journal says it is delivered.
pub(crate) async fn remove_local(run: &Run, entries: Vec<Entry>) -> anyhow::Result<()> {
    let (entries, results) = unlink(run, entries).await?;
    let seq = run.set.run_seq;
    let mut ops = Vec::with_capacity(entries.len());
    let mut removed = 0;
    for (e, r) in entries.iter().zip(results) {
        match r {
            Ok(()) => {
                removed += 1;
                ops.push(Op::Deleted { run: seq, id: e.id });
            }
            Err(err) => {
                ops.push(Op::RemoveFailed {
                    run: seq,
                    id: e.id,
                    reason: err.to_string(),
                });
                removal_failed(run, e, &err);
            }
        }
    }
    run.journal.commit(ops).await?;
    run.state.report().removed += removed;
    Ok(())
}

/// Files back in the spool whose record in this run says `deleted` with the same content: a
/// power cut undid their unlink (see [`remove_local`]). Delivered already, so removed again
/// and not sent; the journal keeps `deleted`. A failure is reported like any removal failure.
pub(crate) async fn removed_again(run: &Run, entries: Vec<Entry>) -> anyhow::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let (entries, results) = unlink(run, entries).await?;
    for (e, r) in entries.iter().zip(results) {
        match r {
            Ok(()) => tracing::warn!(
                id = %e.id,
                "{}: delivered and removed earlier in this run, back after a crash with the \
                 same content: removed again, not sent",
                e.path.display()
            ),
            Err(err) => removal_failed(run, e, &err),
        }
    }
    Ok(())
}

/// Unlinks `entries` off the runtime's threads (no directory sync: see [`remove_local`]).
async fn unlink(
    run: &Run,
    entries: Vec<Entry>,
) -> anyhow::Result<(Vec<Entry>, Vec<Result<(), SpoolError>>)> {
    let spool = run.spool.clone();
    Ok(tokio::task::spawn_blocking(move || {
        let r = spool.unlink_many(&entries);
        (entries, r)
    })
    .await?)
}

/// Logs and reports a delivered message whose local copy could not be removed; it is not
/// retried in this invocation.
fn removal_failed(run: &Run, e: &Entry, err: &SpoolError) {
    tracing::error!(id = %e.id, "delivered, but removing the local copy failed: {err}");
    run.state.mark_failed(e.id.to_string());
    run.state.report().remove_failed.push(Problem {
        what: e.id.to_string(),
        reason: err.to_string(),
    });
}

/// Journals and reports a file that could not be read (once per invocation).
pub(crate) async fn unreadable(run: &Run, err: SpoolError) -> anyhow::Result<()> {
    let path = err
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| err.to_string());
    if !run.state.mark_failed(path.clone()) {
        return Ok(());
    }
    tracing::warn!("cannot read {err}");
    let op = Op::Unreadable {
        run: run.set.run_seq,
        path: path.clone(),
        kind: err.kind().to_string(),
        reason: err.to_string(),
    };
    run.journal.commit(vec![op]).await?;
    // The path is the problem's name: the reason need not repeat it.
    let text = err.to_string();
    let reason = text
        .strip_prefix(&format!("{path}: "))
        .unwrap_or(&text)
        .to_string();
    run.state
        .report()
        .unreadable
        .push(Problem { what: path, reason });
    Ok(())
}

/// Records a message as not deliverable in this run (once per invocation); it stays `read`
/// in the journal and in the spool.
pub(crate) fn give_up(run: &Run, item: &Item, reason: &str) {
    let id = item.id().to_string();
    if run.state.mark_failed(id.clone()) {
        tracing::error!(id = %id, "cannot deliver {}: {reason}", item.entry.path.display());
        run.state.report().undelivered.push(Problem {
            what: id,
            reason: reason.to_string(),
        });
    }
}

/// Inserts or replaces the run's own record.
pub(crate) async fn put_run(journal: &Journal, record: RunRecord) -> anyhow::Result<()> {
    Ok(journal.commit(vec![Op::PutRun(record)]).await?)
}
