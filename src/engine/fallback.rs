//! The fallback path (`--fallback-path DIR --automatic-fallback-after DURATION`): when the
//! destinations have not taken everything in time, the remaining messages move into DIR, a
//! complete data directory that `drain --data-dir DIR <DESTINATION>...` drains later (from
//! another machine, or a CronJob). Meant for unattended scale-down with a deadline.
//!
//! The move is crash-safe through the same journal states as a transfer, with the
//! pseudo-destination `fallback:<DIR>`: `sent` is durable before the copy is written, the copy
//! is durable (fsync) before `acked`, and the local file is removed only after `acked`. After a
//! crash, `drain resume` finds `sent(fallback:DIR)` messages and checks DIR for a copy with the
//! same hash before copying again, so a message is never in both places once settled.
//! Messages in doubt with a real destination are not moved: they may be held there.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::Ctx;
use super::dispatch::{self, Item};
use crate::base::MessageId;
use crate::instance::{Instance, InstanceLock};
use crate::journal::{MessageRecord, Op};
use crate::spool::{Entry, Spool};

/// Prefix of the journal's pseudo-destination for the fallback path.
pub const PREFIX: &str = "fallback:";

/// An open fallback data directory (locked while this run may write to it).
pub struct Fallback {
    pub dir: PathBuf,
    pub due: Instant,
    pub name: String,
    spool: Spool,
    _lock: InstanceLock,
}

impl Fallback {
    /// Opens (creating) DIR as a data directory and takes its lock.
    pub fn open(dir: &Path, due: Instant) -> anyhow::Result<Fallback> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("--fallback-path {}: {e}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| anyhow::anyhow!("--fallback-path {}: {e}", dir.display()))?;
        let inst = Instance::open(&dir)?;
        let lock = inst.try_lock("drain, writing its fallback")?;
        Ok(Fallback {
            name: format!("{PREFIX}{}", dir.display()),
            spool: Spool::open(&dir)?,
            dir,
            due,
            _lock: lock,
        })
    }
}

/// Moves `items` (journaled `read`) into the fallback directory.
pub(crate) async fn move_items(ctx: &Ctx, fb: &Fallback, items: Vec<Item>) -> anyhow::Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    dispatch::journal_sent(ctx, &fb.name, &items).await?;
    copy_and_remove(ctx, fb, items).await
}

/// Writes the copies durably, journals `acked`, removes the local files.
async fn copy_and_remove(ctx: &Ctx, fb: &Fallback, items: Vec<Item>) -> anyhow::Result<()> {
    let spool = fb.spool.clone();
    let msgs: Vec<_> = items.iter().map(|i| i.msg.clone()).collect();
    let stored = tokio::task::spawn_blocking(move || spool.store_many(&msgs)).await?;
    if let Err(e) = stored {
        let reason = format!("writing to the fallback path failed: {e}");
        tracing::error!("{reason}");
        dispatch::release(ctx, &fb.name, &items, &reason).await?;
        for i in &items {
            dispatch::give_up(ctx, i, &reason);
        }
        return Ok(());
    }
    ctx.journal
        .commit(
            items
                .iter()
                .map(|i| Op::Acked {
                    run: ctx.run_seq,
                    id: i.entry.id,
                    dest: fb.name.clone(),
                    note: "moved to the fallback path".into(),
                })
                .collect(),
        )
        .await?;
    {
        let mut r = ctx.report();
        r.fallback_path = Some(fb.dir.display().to_string());
        for i in &items {
            r.fallback.add(i.msg.bytes.len() as u64);
        }
    }
    dispatch::remove_local(ctx, items.into_iter().map(|i| i.entry).collect()).await
}

/// Settles messages an interrupted attempt left `sent` to the fallback path `dir`.
pub(crate) async fn settle(
    ctx: &Ctx,
    dir: &str,
    list: &[(MessageId, MessageRecord)],
) -> anyhow::Result<()> {
    let fb = Fallback::open(Path::new(dir), Instant::now())?;
    for chunk in list.chunks(256) {
        let mut copy = Vec::new();
        let mut acked = Vec::new();
        for (id, rec) in chunk {
            let entry = Entry {
                queue: rec.queue,
                id: *id,
                path: ctx.spool.path_of(rec.queue, *id),
            };
            let there = fb
                .spool
                .find(*id)
                .and_then(|e| fb.spool.read(&e).ok())
                .is_some_and(|m| m.hash == rec.hash);
            if there {
                acked.push(entry);
                continue;
            }
            match ctx.spool.read(&entry) {
                Ok(msg) => copy.push(Item::new(entry, msg, Vec::new())),
                Err(e) => {
                    // Neither here nor there: report it; the file's own error names it.
                    tracing::error!(id = %id, "in doubt with the fallback path and unreadable here: {e}");
                    ctx.report().undelivered.push(super::report::Problem {
                        what: id.to_string(),
                        reason: format!("not in the fallback path and unreadable here: {e}"),
                    });
                }
            }
        }
        if !acked.is_empty() {
            ctx.journal
                .commit(
                    acked
                        .iter()
                        .map(|e| Op::Acked {
                            run: ctx.run_seq,
                            id: e.id,
                            dest: fb.name.clone(),
                            note: "found in the fallback path".into(),
                        })
                        .collect(),
                )
                .await?;
            dispatch::remove_local(ctx, acked).await?;
        }
        copy_and_remove(ctx, &fb, copy).await?;
    }
    Ok(())
}
