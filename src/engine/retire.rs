//! Retiring acknowledged messages: the one task of a run that journals `acked`, removes local
//! copies and journals `deleted`, off the workers' path.
//!
//! Workers and settling tasks hand what a destination acknowledged to this task
//! ([`Run::retire`]) and go on with the next batch; the task folds everything queued meanwhile
//! into one group: one `acked` commit, one removal pass (unlinks only: the queue directories
//! are synced once, when the run closes this task), one `deleted` commit (`ledger::acked`).
//! So a request no longer waits for two commits and the removals of the one before it, and
//! syncs per message fall as the drain gets faster.
//!
//! Invariants: a local copy is still removed only after its `acked` record is durable (the
//! ledger's order within a group); until that commit the messages are `sent` in the journal,
//! which a crash leaves in doubt and `resume` settles by asking the destination, as after any
//! interrupted request (journal-format.md, crash table). The run closes the queue and waits for
//! this task ([`close`]) before it counts the report, so a stop (SIGTERM) retires everything
//! acknowledged before the process ends. A journal failure here stops the run.
//!
//! Uses `run` and `ledger`; started and closed by `engine::run`, fed by `answer` and `settle`.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::ledger;
use super::report::Problem;
use super::run::{Retiring, Run};

/// Acknowledged batches that may wait for the task before workers wait for it.
pub(crate) const QUEUE: usize = 256;

/// Most batches folded into one group (bounds a group's commits and removal pass).
const GROUP_MAX: usize = 256;

/// Starts the task on the receiving end of `run.retiring`.
pub(crate) fn start(
    run: &Arc<Run>,
    rx: mpsc::Receiver<Retiring>,
) -> JoinHandle<anyhow::Result<()>> {
    tokio::spawn(retire_all(run.clone(), rx))
}

async fn retire_all(run: Arc<Run>, mut rx: mpsc::Receiver<Retiring>) -> anyhow::Result<()> {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(more) => group.push(more),
                Err(_) => break,
            }
        }
        if let Err(e) = ledger::acked(&run, group).await {
            // Nothing more may be sent: the journal cannot record what comes back.
            run.stop.cancel();
            return Err(e);
        }
    }
    Ok(())
}

/// Closes the queue (nothing more is acknowledged: every worker and settling task ended),
/// waits until everything queued is retired, then makes this invocation's removals durable:
/// one fsync per queue directory (`ledger::remove_local` does not sync), before the run can
/// be recorded finished. Returns the problem when only that fsync failed (the report's
/// `removals_not_durable`: exit 40/41, the run left open for `drain resume`).
pub(crate) async fn close(
    run: &Run,
    task: JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<Option<Problem>> {
    run.retiring
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let retired = match task.await {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!(
            "retiring acknowledged messages failed: {e}"
        )),
    };
    // Even after an error: whatever was removed should stay removed.
    let spool = run.spool.clone();
    let synced = match tokio::task::spawn_blocking(move || spool.sync_queue_dirs()).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let Err(why) = synced else {
        return retired.map(|()| None);
    };
    let reason = format!(
        "fsync after removing delivered messages failed ({why}): a power cut may bring some \
         back; `drain resume` removes them again"
    );
    tracing::error!("{}: {reason}", run.spool.root().display());
    retired.map(|()| {
        Some(Problem {
            what: run.spool.root().display().to_string(),
            reason,
        })
    })
}
