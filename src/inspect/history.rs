//! `drain inspect --message ID`: one message's whole history in every run where it appears,
//! each transition with its time, state, destination and note, and the event it records
//! (derived from the state it leaves and its note, as `journal-format.md` section 3 writes them).

use serde::Serialize;

use super::RunRow;
use super::summary::Rejection;
use crate::base::{ContentHash, MessageId, Timestamp};
use crate::journal::{Corrupt, Reader};
use crate::journal::{MessageRecord, RunStatus, State, Transition};

/// One transition, as `--json` shows it: `dest` and `note` are always present (null when
/// none), and `event` names the operation that made it.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// `read`, `sent`, `not_delivered`, `rejected`, `refused`, `reassigned`, `acked`,
    /// `remove_failed` or `deleted`.
    pub event: &'static str,
    pub state: State,
    pub at: Timestamp,
    pub dest: Option<String>,
    /// The instance behind `dest` a `sent` was addressed to (omitted when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub note: Option<String>,
}

/// The message in one run.
#[derive(Clone, Debug, Serialize)]
pub struct InRun {
    pub seq: u64,
    /// Null when the run record itself is corrupt.
    pub run_id: Option<String>,
    pub run_status: Option<RunStatus>,
    pub queue: String,
    pub hash: ContentHash,
    pub size: u64,
    pub state: State,
    pub dest: Option<String>,
    /// The instance behind `dest` that holds it or may hold it (its latest `sent` was
    /// addressed to it); omitted when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub rejected_by: Vec<Rejection>,
    pub possible_duplicate: bool,
    pub remove_failed: Option<String>,
    pub history: Vec<Step>,
}

/// Everything the journal knows about one message.
#[derive(Clone, Debug, Serialize)]
pub struct MessageHistory {
    pub schema: u32,
    pub journal: String,
    pub message: String,
    pub runs: Vec<InRun>,
    pub corrupt_records: Vec<Corrupt>,
    /// Runs whose message records were compacted: not searched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compacted_runs: Vec<u64>,
}

/// The event a transition records.
pub fn event(t: &Transition) -> &'static str {
    let note = t.note.as_deref().unwrap_or("");
    match t.state {
        State::Read if t.dest.is_none() => "read",
        State::Read if note.starts_with("rejected: ") => "rejected",
        State::Read if note.starts_with("refused (transient): ") => "refused",
        State::Read if note.starts_with("reassigned, possible duplicate: ") => "reassigned",
        State::Read => "not_delivered",
        State::Sent => "sent",
        State::Acked if note.starts_with("removing the local copy failed: ") => "remove_failed",
        State::Acked => "acked",
        State::Deleted => "deleted",
    }
}

/// Looks `id` up in every run (or only run `only`), oldest first.
pub fn collect(
    reader: &Reader,
    id: MessageId,
    only: Option<u64>,
    schema: u32,
) -> anyhow::Result<MessageHistory> {
    let runs = reader.runs::<RunRow>()?;
    let mut out = MessageHistory {
        schema,
        journal: reader.path().display().to_string(),
        message: id.to_string(),
        runs: Vec::new(),
        corrupt_records: Vec::new(),
        compacted_runs: Vec::new(),
    };
    for seq in runs
        .seqs
        .iter()
        .copied()
        .filter(|s| only.is_none_or(|o| o == *s))
    {
        let run: Option<&RunRow> = runs.rows.iter().find(|r| r.seq == seq);
        if run.is_some_and(|r| r.compacted.is_some()) {
            out.compacted_runs.push(seq);
            continue;
        }
        match reader.message(seq, id)? {
            None => {}
            Some(Err(c)) => out.corrupt_records.push(c),
            Some(Ok(rec)) => out.runs.push(in_run(seq, run, rec)),
        }
    }
    Ok(out)
}

fn in_run(seq: u64, run: Option<&RunRow>, rec: MessageRecord) -> InRun {
    InRun {
        seq,
        run_id: run.map(|r| r.id.clone()),
        run_status: run.map(|r| r.status),
        queue: rec.queue.as_str().to_string(),
        hash: rec.hash,
        size: rec.size,
        state: rec.state,
        dest: rec.dest,
        instance: rec.instance,
        rejected_by: rec
            .rejected_by
            .into_iter()
            .map(|(dest, reason)| Rejection { dest, reason })
            .collect(),
        possible_duplicate: rec.possible_duplicate,
        remove_failed: rec.remove_failed,
        history: rec
            .history
            .into_iter()
            .map(|t| Step {
                event: event(&t),
                state: t.state,
                at: t.at,
                dest: t.dest,
                instance: t.instance,
                note: t.note,
            })
            .collect(),
    }
}
