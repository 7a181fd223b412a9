//! Compacting the journal: a finished run's audit (the run detail `drain inspect` shows) is
//! computed once and kept in its run record, then its message and unreadable records are
//! dropped (`journal-format.md`, `Compact`). So the journal stops growing with every run while
//! `inspect` keeps showing what each run did; only single messages' histories go.
//!
//! Invariants: only `finished` runs are compacted (a run that is running or interrupted still
//! needs every record to settle), each in its own journal commit, after its audit was built
//! from the records it replaces. Called by the drain engine at the start of a run (runs older
//! than `--journal-retention`) and by `drain compact`.

use std::time::Duration;

use super::RunRow;
use super::summary::Collector;
use crate::base::Timestamp;
use crate::journal::{Journal, JournalError, Op, RunRecord, RunStatus};

/// Items kept per anomaly list in a compacted run's audit (what `inspect` lists of it later).
const KEPT_PER_LIST: usize = 1_000;

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compaction {
    /// The runs compacted, by sequence number.
    pub runs: Vec<u64>,
    /// Message records dropped.
    pub messages: u64,
}

/// Compacts every finished run that ended at least `older_than` ago (and is not compacted yet).
pub async fn compact(journal: &Journal, older_than: Duration) -> Result<Compaction, JournalError> {
    let now = Timestamp::now();
    let mut done = Compaction::default();
    for run in journal.runs()? {
        if !due(&run, now, older_than) {
            continue;
        }
        let row = row_of(&run);
        let mut c = Collector::new(&row, KEPT_PER_LIST);
        let mut messages = 0;
        journal.for_each_message(run.seq, |id, rec| {
            messages += 1;
            c.message(id, Ok(rec));
            Ok(())
        })?;
        for (path, rec) in journal.unreadable(run.seq)? {
            c.unreadable(path, Ok(rec));
        }
        let detail = serde_json::to_value(c.finish(now)).map_err(|e| JournalError::Encode {
            path: journal.path().to_path_buf(),
            key: format!("run {}", run.seq),
            reason: e.to_string(),
        })?;
        journal
            .commit(vec![Op::Compact {
                seq: run.seq,
                detail,
            }])
            .await?;
        done.runs.push(run.seq);
        done.messages += messages;
    }
    Ok(done)
}

/// Whether `run` is finished, not compacted yet, and ended at least `older_than` before `now`.
fn due(run: &RunRecord, now: Timestamp, older_than: Duration) -> bool {
    run.status == RunStatus::Finished
        && run.compacted.is_none()
        && run
            .ended_at
            .is_some_and(|end| now.unix_nanos() - end.unix_nanos() >= older_than.as_nanos() as i128)
}

fn row_of(run: &RunRecord) -> RunRow {
    RunRow {
        seq: run.seq,
        id: run.id.clone(),
        status: run.status,
        started_at: run.started_at,
        ended_at: run.ended_at,
        destinations: run.destinations.clone(),
        exit_code: run.exit_code,
        resumed: run.resumed,
        compacted: None,
    }
}
