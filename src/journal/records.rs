//! Journal records (stored as JSON values) and the operations that change them.
//!
//! The field names and JSON encodings here are the journal's format (`journal-format.md`
//! section 2): renaming or retyping one needs a new format version. The state machine that
//! applies a message op to its record is in `transition`. Built by the drain engine (ops) and
//! read by every journal reader.

use serde::{Deserialize, Serialize};

use crate::base::{ContentHash, MessageId, QueueKind, Timestamp};

/// The journal format version this build reads and writes (stored in the `meta` table): the
/// version of the record encodings below.
pub const FORMAT_VERSION: &str = "1";

/// A message's state within one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Read from the local spool and hashed; not sent anywhere (or known not delivered).
    Read,
    /// Handed to `dest`; it may hold the message. Never sent elsewhere while in this state.
    Sent,
    /// `dest` acknowledged it durably; the local copy may be removed.
    Acked,
    /// The local copy is removed. Final.
    Deleted,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Read => "read",
            State::Sent => "sent",
            State::Acked => "acked",
            State::Deleted => "deleted",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of a message's history.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Transition {
    pub state: State,
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest: Option<String>,
    /// The instance behind `dest` a `sent` was addressed to (`Drain-Target-Instance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Why: a failure reason, `stored` / `already held`, and so on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A message's record in one run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MessageRecord {
    pub queue: QueueKind,
    /// Lower-case hex BLAKE3 of the spool file.
    pub hash: ContentHash,
    pub size: u64,
    pub state: State,
    /// The destination of the latest `sent` / `acked`.
    #[serde(default)]
    pub dest: Option<String>,
    /// The instance behind `dest` the latest `sent` was addressed to (`Drain-Target-Instance`):
    /// the only one that may hold it and whose answer settles it. None: sent without a target
    /// (a destination that does not name its instances, or a journal from before this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Destinations that rejected it permanently, with the reason.
    #[serde(default)]
    pub rejected_by: Vec<(String, String)>,
    /// Set when it was sent to a second destination while the first may hold it.
    #[serde(default)]
    pub possible_duplicate: bool,
    /// The last failure to remove the local copy, if any.
    #[serde(default)]
    pub remove_failed: Option<String>,
    pub history: Vec<Transition>,
}

/// Lifecycle of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// In progress, or killed while in progress (SIGKILL, crash): `drain resume` settles it.
    Running,
    /// Ended with messages still in doubt (`sent` or `acked`), or stopped by a signal:
    /// `drain resume` settles it and drains the rest under the same run id.
    Interrupted,
    /// Ended with nothing in doubt; what was not delivered is back in the spool's hands.
    Finished,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Finished => "finished",
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One drain run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    /// Local sequence number (the key).
    pub seq: u64,
    /// Globally unique run id sent to receivers (scopes their dedupe), 32 hex digits.
    pub id: String,
    pub started_at: Timestamp,
    #[serde(default)]
    pub ended_at: Option<Timestamp>,
    pub destinations: Vec<String>,
    /// The options the run was started with, as given.
    pub options: serde_json::Value,
    pub status: RunStatus,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The final report, as JSON.
    #[serde(default)]
    pub summary: Option<serde_json::Value>,
    /// How many times this run was continued after an interruption.
    #[serde(default)]
    pub resumed: u32,
    /// Set when the run's message and unreadable records were dropped (`Compact`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted: Option<Compacted>,
}

/// What is kept of a finished run whose message records were dropped.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Compacted {
    pub at: Timestamp,
    /// The run's audit view (`drain inspect`'s run detail) as it was when compacted: opaque to
    /// the journal.
    pub detail: serde_json::Value,
}

/// A file the run could not read.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnreadableRecord {
    /// `unreadable` (I/O error) or `corrupt` (bad contents).
    pub kind: String,
    pub reason: String,
    pub at: Timestamp,
}

/// One change to the journal.
#[derive(Clone, Debug)]
pub enum Op {
    /// Insert or replace a run record.
    PutRun(RunRecord),
    /// A message was read and hashed (new, or read again while not in flight).
    Read {
        run: u64,
        id: MessageId,
        queue: QueueKind,
        hash: ContentHash,
        size: u64,
    },
    /// About to send to `dest` (and its `instance`). Must be durable before the request leaves.
    Sent {
        run: u64,
        id: MessageId,
        dest: String,
        /// Sent elsewhere while an earlier destination may hold it (`--reassign-after`).
        possible_duplicate: bool,
        /// The instance behind `dest` the request is addressed to, fixed before it leaves.
        instance: Option<String>,
    },
    /// The destination certainly does not hold it (refused before the request was sent, or
    /// answered that it does not hold it): back to `read`.
    NotDelivered {
        run: u64,
        id: MessageId,
        dest: String,
        reason: String,
    },
    /// Rejected by `dest`; permanent rejections are remembered so it is not offered there again.
    Rejected {
        run: u64,
        id: MessageId,
        dest: String,
        reason: String,
        permanent: bool,
    },
    /// `dest` acknowledged it durably (`note`: stored or already held; `instance`: the one
    /// behind `dest` that answered, if it named itself, remembered so that a resumed run
    /// tells it when the run finishes).
    Acked {
        run: u64,
        id: MessageId,
        dest: String,
        note: String,
        instance: Option<String>,
    },
    /// The local copy was removed durably.
    Deleted { run: u64, id: MessageId },
    /// Removing the local copy failed; the message stays `acked`.
    RemoveFailed {
        run: u64,
        id: MessageId,
        reason: String,
    },
    /// `--reassign-after`: the destination it was sent to stayed unreachable; it may go
    /// elsewhere and is flagged as a possible duplicate.
    Reassigned {
        run: u64,
        id: MessageId,
        from: String,
        reason: String,
    },
    /// Another instance behind `dest` than the one addressed parked it (`wire`, "Parking"):
    /// the message stays `sent` to `dest`, now pinned to `instance`, where the commit goes.
    /// Durable before the commit is sent.
    Parked {
        run: u64,
        id: MessageId,
        dest: String,
        instance: String,
    },
    /// Drops the message and unreadable records of finished run `seq`, keeping its run record
    /// with `detail` (its audit view) and the time.
    Compact { seq: u64, detail: serde_json::Value },
    /// A spool file could not be read.
    Unreadable {
        run: u64,
        path: String,
        kind: String,
        reason: String,
    },
}

impl Op {
    /// The message this op is about, if any.
    pub fn message_key(&self) -> Option<(u64, MessageId)> {
        match self {
            Op::Read { run, id, .. }
            | Op::Sent { run, id, .. }
            | Op::NotDelivered { run, id, .. }
            | Op::Rejected { run, id, .. }
            | Op::Acked { run, id, .. }
            | Op::Deleted { run, id }
            | Op::Reassigned { run, id, .. }
            | Op::Parked { run, id, .. }
            | Op::RemoveFailed { run, id, .. } => Some((*run, *id)),
            Op::PutRun(_) | Op::Unreadable { .. } | Op::Compact { .. } => None,
        }
    }
}
