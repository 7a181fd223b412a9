//! Scanning and reading: streams the spool to the workers, reads and hashes each batch of files
//! within the byte budget, and hands readable messages to `route`.
//!
//! Owns the passes over the spool and the worker tasks. Invariants: memory is bounded by the
//! byte budget (a batch holds its permits until it is placed), not by the spool's size; a
//! message already journaled `sent` or `acked` in this run is left to `resume`/`settle`; a
//! file that failed once in this invocation is not retried by a rescan. Unreadable files are
//! journaled through the ledger. Uses `run`, `item`, `ledger` and `route`; called by
//! `engine::run`.

use std::sync::Arc;

use tokio::sync::{Mutex as AsyncMutex, mpsc};

use super::item::{Claim, Item};
use super::ledger;
use super::route::{self, Recorded};
use super::run::Run;
use crate::journal::{MessageRecord, State};
use crate::spool::{Entry, Message, SpoolError};

/// One scanned file: the entry and its size, or why it could not even be listed.
type Scanned = Result<(Entry, u64), SpoolError>;

/// The scan's output, shared by the workers.
type Feed = Arc<AsyncMutex<mpsc::Receiver<Scanned>>>;

/// Drains the spool with the run's worker tasks, in passes until a pass finds nothing new
/// (messages added during the drain are not left behind).
pub(crate) async fn drain_spool(run: &Arc<Run>) -> anyhow::Result<()> {
    loop {
        let before = run.state.report().total().messages + run.state.failed_count();
        one_pass(run).await?;
        let after = run.state.report().total().messages + run.state.failed_count();
        if run.stopped() || after == before {
            return Ok(());
        }
    }
}

/// One pass over the spool.
async fn one_pass(run: &Arc<Run>) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<Scanned>(1024);
    let spool = run.spool.clone();
    let stop = run.stop.clone();
    let scanner = tokio::task::spawn_blocking(move || {
        for item in spool.scan() {
            if stop.is_cancelled() {
                break;
            }
            // lstat: the size of the file itself, never of what a symlink points to.
            let item = match item.map(|e| (std::fs::symlink_metadata(&e.path), e)) {
                Ok((Ok(m), e)) => Ok((e, m.len())),
                // Listed, then removed: retired by this run (acknowledged in an earlier pass
                // or settled beside the scan) or taken by the mail server. Not a failure.
                Ok((Err(err), _)) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Ok((Err(err), e)) => Err(SpoolError::io(&e.path, err)),
                Err(err) => Err(err),
            };
            if tx.blocking_send(item).is_err() {
                break;
            }
        }
    });
    let rx: Feed = Arc::new(AsyncMutex::new(rx));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..run.set.workers {
        let run = run.clone();
        let rx = rx.clone();
        tasks.spawn(async move { worker(run, rx).await });
    }
    // Only the workers may hold the receiver: once they stop, the scanner's next send fails
    // and it ends, even when it was blocked on a full channel (a stop mid-scan).
    drop(rx);
    let mut first_err = None;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // A journal failure: stop everything, nothing more may be sent.
                run.stop.cancel();
                first_err.get_or_insert(e);
            }
            Err(e) => {
                run.stop.cancel();
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
async fn worker(run: Arc<Run>, rx: Feed) -> anyhow::Result<()> {
    loop {
        if run.stopped() {
            return Ok(());
        }
        let (batch, bytes) = take_batch(&run, &rx).await?;
        if batch.is_empty() {
            return Ok(());
        }
        let permits = run.set.permits_for(bytes);
        let _permit = run.budget.clone().acquire_many_owned(permits).await?;
        let items = read_batch(&run, batch).await?;
        route::process_batch(&run, items, Recorded::Nothing).await?;
    }
}

/// How long a batch waits for the scan to fill it once it has its first message.
const FILL_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// The next batch from the scan (up to the batch's count and bytes) and its size in bytes.
async fn take_batch(run: &Run, rx: &Feed) -> anyhow::Result<(Vec<Entry>, u64)> {
    let mut batch = Vec::new();
    let mut bytes = 0u64;
    let mut rx = rx.lock().await;
    let mut deadline = tokio::time::Instant::now();
    while batch.len() < run.set.batch_max && bytes < run.set.batch_bytes {
        let next = if batch.is_empty() {
            let first = rx.recv().await;
            // Counted from the first message, however long the scan took to list it.
            deadline = tokio::time::Instant::now() + FILL_WAIT;
            match first {
                Some(n) => n,
                None => break,
            }
        } else {
            // A full batch from the start: the scan may be just behind (a request and its
            // syncs cost the same for 1 message or 64); a slow scan is not waited for long.
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(n)) => n,
                Ok(None) | Err(_) => break,
            }
        };
        match next {
            Ok((e, size)) => {
                if run.state.has_failed(&e.id.to_string()) {
                    continue;
                }
                bytes += size;
                batch.push(e);
            }
            Err(err) => ledger::unreadable(run, err).await?,
        }
    }
    Ok((batch, bytes))
}

/// Reads and hashes a batch; returns the messages to send.
async fn read_batch(run: &Run, batch: Vec<Entry>) -> anyhow::Result<Vec<Item>> {
    // Claim each id before looking at the journal: a file with the same id in another queue
    // is then either still claimed (in flight) or already journaled under its queue.
    let mut claimed = Vec::with_capacity(batch.len());
    for entry in batch {
        match run.state.claims.claim(entry.id, &entry.path) {
            Ok(c) => claimed.push((entry, c)),
            // The same file, still on its way (settling beside the scan): not a conflict.
            Err(other) if other == entry.path => {}
            Err(other) => ledger::unreadable(run, conflict(&entry, other)).await?,
        }
    }
    let (batch, claims): (Vec<Entry>, Vec<Claim>) = claimed.into_iter().unzip();
    let read = run.read_entries(batch).await?;
    // One read transaction for the batch's journal records.
    let ids: Vec<_> = read.iter().map(|(e, _)| e.id).collect();
    let records = run.journal.messages(run.set.run_seq, &ids)?;
    let mut items = Vec::with_capacity(read.len());
    let mut again = Vec::new();
    for (((entry, r), rec), claim) in read.into_iter().zip(records).zip(claims) {
        match r {
            Ok(msg) => match admit(run, entry, msg, rec, claim) {
                Admit::Send(item) => items.push(*item),
                Admit::Skip => {}
                Admit::Refuse(err) => ledger::unreadable(run, err).await?,
                Admit::RemoveAgain(entry, claim) => again.push((entry, claim)),
            },
            Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(id = %entry.id, "gone before it was read");
            }
            Err(err) => ledger::unreadable(run, err).await?,
        }
    }
    // Each claim holds until its file is gone.
    let (again, _claims): (Vec<Entry>, Vec<Claim>) = again.into_iter().unzip();
    ledger::removed_again(run, again).await?;
    Ok(items)
}

fn conflict(entry: &Entry, other: std::path::PathBuf) -> SpoolError {
    SpoolError::IdConflict {
        path: entry.path.clone(),
        id: entry.id,
        other,
    }
}

/// What to do with a file read from the spool.
enum Admit {
    Send(Box<Item>),
    /// Journaled `sent`/`acked` in this run: `settle` and `resume` own it.
    Skip,
    /// Left in place and reported (exit 11).
    Refuse(SpoolError),
    /// Delivered and removed in this run, back after a power cut: removed again.
    RemoveAgain(Entry, Claim),
}

/// A message may already be journaled in this run (a continued run, or a rescan): only `read`
/// ones (or new ones) are sent; `sent` / `acked` ones belong to `settle`. A record of another
/// queue means a second file with the same id; a `deleted` one, a file that came back.
fn admit(run: &Run, entry: Entry, msg: Message, rec: Option<MessageRecord>, claim: Claim) -> Admit {
    let mut rejected = Vec::new();
    if let Some(rec) = rec {
        if rec.queue != entry.queue {
            let other = run.spool.path_of(rec.queue, entry.id);
            return Admit::Refuse(conflict(&entry, other));
        }
        match rec.state {
            State::Read => {
                if rec.hash == msg.hash {
                    rejected = run.set.rejected_by(&rec);
                }
            }
            State::Sent | State::Acked => return Admit::Skip,
            // The same content: a power cut undid its unlink (`ledger::removed_again`).
            State::Deleted if rec.hash == msg.hash => return Admit::RemoveAgain(entry, claim),
            State::Deleted => {
                return Admit::Refuse(SpoolError::Reappeared {
                    path: entry.path,
                    id: entry.id,
                });
            }
        }
    }
    Admit::Send(Box::new(Item::claimed(entry, msg, rejected, claim)))
}
