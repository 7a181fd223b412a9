//! Scanning and reading: streams the spool to the workers, reads each batch of files within
//! the byte budget, journals unreadable files, and hands readable messages to `dispatch`.

use std::sync::Arc;

use tokio::sync::{Mutex as AsyncMutex, mpsc};

use super::Ctx;
use super::dispatch::{self, Item};
use super::report::Problem;
use crate::journal::{Op, State};
use crate::spool::{Entry, SpoolError};

/// One scanned file: the entry and its size, or why it could not even be listed.
type Scanned = Result<(Entry, u64), SpoolError>;

/// Drains the spool with `workers` tasks, in passes until a pass finds nothing new (messages
/// added during the drain are not left behind).
pub(super) async fn drain_spool(ctx: &Arc<Ctx>, workers: usize) -> anyhow::Result<()> {
    loop {
        let before = ctx.report().total().messages + ctx.failed_count();
        one_pass(ctx, workers).await?;
        let after = ctx.report().total().messages + ctx.failed_count();
        if ctx.stop.is_set() || after == before {
            return Ok(());
        }
    }
}

/// One pass over the spool.
async fn one_pass(ctx: &Arc<Ctx>, workers: usize) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<Scanned>(1024);
    let spool = ctx.spool.clone();
    let stop = ctx.stop.clone();
    let scanner = tokio::task::spawn_blocking(move || {
        for item in spool.scan() {
            if stop.is_set() {
                break;
            }
            let item = item.and_then(|e| match std::fs::metadata(&e.path) {
                Ok(m) => Ok((e, m.len())),
                Err(err) => Err(SpoolError::io(&e.path, err)),
            });
            if tx.blocking_send(item).is_err() {
                break;
            }
        }
    });
    let rx = Arc::new(AsyncMutex::new(rx));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let ctx = ctx.clone();
        let rx = rx.clone();
        tasks.spawn(async move { worker(ctx, rx).await });
    }
    let mut first_err = None;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // A journal failure: stop everything, nothing more may be sent.
                ctx.stop.request();
                first_err.get_or_insert(e);
            }
            Err(e) => {
                ctx.stop.request();
                first_err.get_or_insert(anyhow::anyhow!("a drain worker failed: {e}"));
            }
        }
    }
    let _ = scanner.await;
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Takes batches until the scan is exhausted or a stop is requested.
async fn worker(ctx: Arc<Ctx>, rx: Arc<AsyncMutex<mpsc::Receiver<Scanned>>>) -> anyhow::Result<()> {
    loop {
        if ctx.stop.is_set() {
            return Ok(());
        }
        let mut batch: Vec<(Entry, u64)> = Vec::new();
        let mut bytes = 0u64;
        {
            let mut rx = rx.lock().await;
            while batch.len() < ctx.batch_max && bytes < ctx.batch_bytes {
                let next = if batch.is_empty() {
                    match rx.recv().await {
                        Some(n) => n,
                        None => break,
                    }
                } else {
                    match rx.try_recv() {
                        Ok(n) => n,
                        Err(_) => break,
                    }
                };
                match next {
                    Ok((e, size)) => {
                        if ctx.has_failed(&e.id.to_string()) {
                            continue;
                        }
                        bytes += size;
                        batch.push((e, size));
                    }
                    Err(err) => unreadable(&ctx, err).await?,
                }
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let permits = ctx.permits_for(bytes);
        let _permit = ctx.budget.clone().acquire_many_owned(permits).await?;
        let spool = ctx.spool.clone();
        let read = tokio::task::spawn_blocking(move || {
            batch
                .into_iter()
                .map(|(e, _)| {
                    let r = spool.read(&e);
                    (e, r)
                })
                .collect::<Vec<_>>()
        })
        .await?;
        // One read transaction for the batch's journal records.
        let ids: Vec<_> = read.iter().map(|(e, _)| e.id).collect();
        let records = ctx.journal.messages(ctx.run_seq, &ids)?;
        let mut items = Vec::with_capacity(read.len());
        for ((entry, r), rec) in read.into_iter().zip(records) {
            match r {
                Ok(msg) => {
                    if let Some(item) = admit(&ctx, entry, msg, rec) {
                        items.push(item);
                    }
                }
                Err(SpoolError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    tracing::debug!(id = %entry.id, "gone before it was read");
                }
                Err(err) => {
                    unreadable(&ctx, err).await?;
                }
            }
        }
        dispatch::process_batch(&ctx, items, true).await?;
    }
}

/// A message may already be journaled in this run (a continued run, or a rescan): only `read`
/// ones (or new ones) are sent; `sent` / `acked` ones belong to `settle`.
fn admit(
    ctx: &Ctx,
    entry: Entry,
    msg: crate::spool::Message,
    rec: Option<crate::journal::MessageRecord>,
) -> Option<Item> {
    let mut rejected = Vec::new();
    if let Some(rec) = rec {
        match rec.state {
            State::Read => {
                if rec.hash == msg.hash {
                    rejected = ctx.rejected_by(&rec);
                }
            }
            State::Sent | State::Acked => return None,
            State::Deleted => {
                tracing::warn!(
                    id = %entry.id,
                    "{}: this message was delivered and removed earlier in this run, but the file is back; leaving it",
                    entry.path.display()
                );
                return None;
            }
        }
    }
    Some(Item::new(entry, msg, rejected))
}

/// Journals and reports a file that could not be read (once per invocation).
async fn unreadable(ctx: &Ctx, err: SpoolError) -> anyhow::Result<()> {
    let path = err
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| err.to_string());
    if !ctx.mark_failed(path.clone()) {
        return Ok(());
    }
    tracing::warn!("cannot read {err}");
    ctx.journal
        .commit(vec![Op::Unreadable {
            run: ctx.run_seq,
            path: path.clone(),
            kind: err.kind().to_string(),
            reason: err.to_string(),
        }])
        .await?;
    ctx.report().unreadable.push(Problem {
        what: path,
        reason: err.to_string(),
    });
    Ok(())
}
