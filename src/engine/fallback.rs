//! The fallback path (`--fallback-path DIR --automatic-fallback-after DURATION`): when the
//! destinations have not taken everything in time, the remaining messages move into DIR, a
//! complete data directory that `drain --data-dir DIR <DESTINATION>...` drains later (from
//! another machine, or a CronJob). Meant for unattended scale-down with a deadline.
//!
//! The move is crash-safe through the same journal states as a transfer, with the
//! pseudo-destination `fallback:<DIR>`: `sent` is durable before the copy is written, the copy
//! is durable (fsync) before `acked`, and the local file is removed only after `acked` (all
//! records through the ledger). After a crash, `drain resume` finds `sent(fallback:DIR)`
//! messages and checks DIR for a copy with the same hash before copying again, so a message is
//! never in both places once settled. Messages in doubt with a real destination are not moved:
//! they may be held there.
//!
//! Uses `run`, `item`, `ledger` and `fallback_dir`; called by `route` (when the time has come)
//! and `resume` (messages in doubt with the fallback path).

use std::path::Path;
use std::time::Instant;

use super::fallback_dir::FallbackDir;
use super::item::Item;
use super::ledger;
use super::run::Run;
use crate::base::MessageId;
use crate::journal::MessageRecord;
use crate::spool::Entry;

/// Moves `items` (journaled `read`, or `new`: not journaled yet) into the fallback directory.
pub(crate) async fn move_items(
    run: &Run,
    fb: &FallbackDir,
    mut items: Vec<Item>,
    new: bool,
) -> anyhow::Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    ledger::sent(run, &fb.name, None, &mut items, new.then_some(&[])).await?;
    copy_and_remove(run, fb, items, Move::New).await
}

/// What a copy into the fallback path completes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Move {
    /// A move of this invocation (counted as moved: exit 13).
    New,
    /// A move an interrupted attempt began (counted apart: the rest decides the exit code).
    Completed,
}

/// Writes the copies durably, journals `acked`, removes the local files. A copy that fails is
/// reported with its own file's error; the others are moved.
async fn copy_and_remove(
    run: &Run,
    fb: &FallbackDir,
    items: Vec<Item>,
    how: Move,
) -> anyhow::Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let msgs: Vec<_> = items.iter().map(|i| i.msg.clone()).collect();
    let results = fb.store(msgs).await?;
    let mut moved = Vec::new();
    let mut failed = Vec::new();
    for (item, r) in items.into_iter().zip(results) {
        match r {
            Ok(()) => moved.push(item),
            Err(e) => failed.push((item, format!("writing to the fallback path failed: {e}"))),
        }
    }
    for (item, reason) in &failed {
        tracing::error!(id = %item.id(), "{reason}");
        ledger::not_delivered(run, &fb.name, std::iter::once(item.id()), reason).await?;
        ledger::give_up(run, item, reason);
    }
    ledger::moved_to_fallback(run, fb, moved, how == Move::Completed).await
}

/// Settles messages an interrupted attempt left `sent` to the fallback path `dir`: a copy
/// found there is acknowledged, a missing one written (completing the move). The run's own
/// fallback directory (already locked by this run) is used when it is the same directory.
pub(crate) async fn settle(
    run: &Run,
    dir: &str,
    list: &[(MessageId, MessageRecord)],
) -> anyhow::Result<()> {
    let opened;
    let fb = match run.fallback.as_ref().filter(|f| f.is(Path::new(dir))) {
        Some(own) => own,
        None => {
            opened = FallbackDir::open(Path::new(dir), Instant::now())?;
            &opened
        }
    };
    for chunk in list.chunks(256) {
        let mut copy = Vec::new();
        let mut there = Vec::new();
        for (id, rec) in chunk {
            let entry = Entry {
                queue: rec.queue,
                id: *id,
                path: run.spool.path_of(rec.queue, *id),
            };
            if fb.holds(*id, &rec.hash) {
                there.push(entry);
                continue;
            }
            match run.spool.read_limited(&entry, run.set.max_message) {
                Ok(msg) => copy.push(Item::new(entry, msg, Vec::new())),
                Err(e) => {
                    // Neither here nor there: report it; the file's own error names it.
                    tracing::error!(id = %id, "in doubt with the fallback path and unreadable here: {e}");
                    run.state.report().undelivered.push(super::report::Problem {
                        what: id.to_string(),
                        reason: format!("not in the fallback path and unreadable here: {e}"),
                    });
                }
            }
        }
        run.state.report().fallback_completed += there.len() as u64;
        ledger::acked_entries(run, &fb.name, there, "found in the fallback path").await?;
        copy_and_remove(run, fb, copy, Move::Completed).await?;
    }
    Ok(())
}
