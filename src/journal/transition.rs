//! The message state machine: `Op::apply_to` checks an op against the message's current
//! record and returns the next record, or why the op is refused ([`Refused`]).
//!
//! The allowed transitions are the table of `journal-format.md` section 3 (a unit test reads
//! that table and checks every cell against this code). Each op kind has its own small
//! function; every accepted op appends one `Transition` to the history. Called by the journal's
//! writer for every message op it commits, and by tests.

use super::records::{MessageRecord, Op, State, Transition};
use crate::base::{ContentHash, QueueKind, Timestamp};

/// An op's kind, named as in `journal-format.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    PutRun,
    Read,
    Sent,
    NotDelivered,
    Rejected,
    Reassigned,
    Acked,
    Deleted,
    RemoveFailed,
    Parked,
    Unreadable,
    Compact,
}

impl OpKind {
    /// Every kind that changes a message record.
    pub const MESSAGE_OPS: [OpKind; 9] = [
        OpKind::Read,
        OpKind::Sent,
        OpKind::NotDelivered,
        OpKind::Rejected,
        OpKind::Reassigned,
        OpKind::Acked,
        OpKind::Deleted,
        OpKind::RemoveFailed,
        OpKind::Parked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::PutRun => "PutRun",
            OpKind::Read => "Read",
            OpKind::Sent => "Sent",
            OpKind::NotDelivered => "NotDelivered",
            OpKind::Rejected => "Rejected",
            OpKind::Reassigned => "Reassigned",
            OpKind::Acked => "Acked",
            OpKind::Deleted => "Deleted",
            OpKind::RemoveFailed => "RemoveFailed",
            OpKind::Parked => "Parked",
            OpKind::Unreadable => "Unreadable",
            OpKind::Compact => "Compact",
        }
    }
}

impl std::fmt::Display for OpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an op was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Only `Read` may create a message's record.
    #[error("{op} on a message never read")]
    NoRecord { op: OpKind },
    /// The op is not allowed in the message's current state.
    #[error("{op} while {state}")]
    State { op: OpKind, state: State },
    /// The op answers a send to `dest`, but the message is not `sent` to `dest`.
    #[error("{op} for {dest} while {state} (recorded destination: {})", recorded.as_deref().unwrap_or("none"))]
    Destination {
        op: OpKind,
        dest: String,
        state: State,
        recorded: Option<String>,
    },
    /// `PutRun`, `Unreadable` and `Compact` do not change a message record.
    #[error("{op} is not a message transition")]
    NotAMessageOp { op: OpKind },
}

impl Op {
    /// This op's kind.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::PutRun(_) => OpKind::PutRun,
            Op::Read { .. } => OpKind::Read,
            Op::Sent { .. } => OpKind::Sent,
            Op::NotDelivered { .. } => OpKind::NotDelivered,
            Op::Rejected { .. } => OpKind::Rejected,
            Op::Reassigned { .. } => OpKind::Reassigned,
            Op::Acked { .. } => OpKind::Acked,
            Op::Deleted { .. } => OpKind::Deleted,
            Op::RemoveFailed { .. } => OpKind::RemoveFailed,
            Op::Parked { .. } => OpKind::Parked,
            Op::Unreadable { .. } => OpKind::Unreadable,
            Op::Compact { .. } => OpKind::Compact,
        }
    }

    /// Applies a message op to the current record (None: not yet journaled), checking the
    /// transition. Returns the new record, or why the transition is refused.
    pub fn apply_to(&self, cur: Option<MessageRecord>) -> Result<MessageRecord, Refused> {
        let op = self.kind();
        if let Op::Read {
            queue, hash, size, ..
        } = self
        {
            return read(cur, *queue, *hash, *size);
        }
        let Some(r) = cur else {
            return Err(match op {
                OpKind::PutRun | OpKind::Unreadable | OpKind::Compact => {
                    Refused::NotAMessageOp { op }
                }
                _ => Refused::NoRecord { op },
            });
        };
        match self {
            Op::Sent {
                dest,
                possible_duplicate,
                instance,
                ..
            } => sent(r, dest, *possible_duplicate, instance.clone()),
            Op::NotDelivered { dest, reason, .. } => {
                let r = from_sent_to(r, op, dest)?;
                Ok(back_to_read(r, dest, reason.clone()))
            }
            Op::Rejected {
                dest,
                reason,
                permanent,
                ..
            } => rejected(from_sent_to(r, op, dest)?, dest, reason, *permanent),
            Op::Reassigned { from, reason, .. } => {
                let mut r = from_sent_to(r, op, from)?;
                r.possible_duplicate = true;
                let note = format!("reassigned, possible duplicate: {reason}");
                Ok(back_to_read(r, from, note))
            }
            Op::Acked {
                dest,
                note,
                instance,
                ..
            } => {
                let mut r = from_sent_to(r, op, dest)?;
                r.state = State::Acked;
                let mut t = step(State::Acked, Some(dest), Some(note.clone()));
                if instance.is_some() {
                    r.instance = instance.clone();
                    t.instance = instance.clone();
                }
                r.history.push(t);
                Ok(r)
            }
            Op::Deleted { .. } => {
                let mut r = from_state(r, op, State::Acked)?;
                r.state = State::Deleted;
                r.remove_failed = None;
                r.history.push(step(State::Deleted, None, None));
                Ok(r)
            }
            Op::RemoveFailed { reason, .. } => {
                let mut r = from_state(r, op, State::Acked)?;
                r.remove_failed = Some(reason.clone());
                let note = format!("removing the local copy failed: {reason}");
                r.history.push(step(State::Acked, None, Some(note)));
                Ok(r)
            }
            Op::Parked { dest, instance, .. } => {
                let mut r = from_sent_to(r, op, dest)?;
                r.instance = Some(instance.clone());
                let note = format!("parked at instance {instance}; committing there");
                let mut t = step(State::Sent, Some(dest), Some(note));
                t.instance = Some(instance.clone());
                r.history.push(t);
                Ok(r)
            }
            Op::Read { .. } | Op::PutRun(_) | Op::Unreadable { .. } | Op::Compact { .. } => {
                Err(Refused::NotAMessageOp { op })
            }
        }
    }
}

fn step(state: State, dest: Option<&String>, note: Option<String>) -> Transition {
    Transition {
        state,
        at: Timestamp::now(),
        dest: dest.cloned(),
        instance: None,
        note,
    }
}

/// `r`, if it is in `state`.
fn from_state(r: MessageRecord, op: OpKind, state: State) -> Result<MessageRecord, Refused> {
    if r.state == state {
        Ok(r)
    } else {
        Err(Refused::State { op, state: r.state })
    }
}

/// `r`, if it is `sent` to `dest` (an answer from, or about, a send to `dest`).
fn from_sent_to(r: MessageRecord, op: OpKind, dest: &str) -> Result<MessageRecord, Refused> {
    if r.state == State::Sent && r.dest.as_deref() == Some(dest) {
        Ok(r)
    } else {
        Err(Refused::Destination {
            op,
            dest: dest.to_string(),
            state: r.state,
            recorded: r.dest,
        })
    }
}

/// `Read`: creates the record, or reads a `read` one again (a new hash forgets rejections).
fn read(
    cur: Option<MessageRecord>,
    queue: QueueKind,
    hash: ContentHash,
    size: u64,
) -> Result<MessageRecord, Refused> {
    let mut rec = match cur {
        None => MessageRecord {
            queue,
            hash,
            size,
            state: State::Read,
            dest: None,
            instance: None,
            rejected_by: Vec::new(),
            possible_duplicate: false,
            remove_failed: None,
            history: Vec::new(),
        },
        Some(r) => from_state(r, OpKind::Read, State::Read)?,
    };
    if rec.hash != hash {
        // The file changed since it was last read: earlier rejections no longer apply.
        rec.rejected_by.clear();
    }
    rec.hash = hash;
    rec.size = size;
    rec.queue = queue;
    rec.history.push(step(State::Read, None, None));
    Ok(rec)
}

/// `Sent`: only from `read`; records the destination and the instance addressed behind it.
fn sent(
    r: MessageRecord,
    dest: &String,
    possible_duplicate: bool,
    instance: Option<String>,
) -> Result<MessageRecord, Refused> {
    let mut r = from_state(r, OpKind::Sent, State::Read)?;
    r.state = State::Sent;
    r.dest = Some(dest.clone());
    r.instance = instance.clone();
    r.possible_duplicate |= possible_duplicate;
    let note = possible_duplicate.then(|| "possible duplicate: reassigned".to_string());
    let mut t = step(State::Sent, Some(dest), note);
    t.instance = instance;
    r.history.push(t);
    Ok(r)
}

/// `Rejected`: back to `read`; a permanent rejection excludes `dest` from now on.
fn rejected(
    mut r: MessageRecord,
    dest: &String,
    reason: &str,
    permanent: bool,
) -> Result<MessageRecord, Refused> {
    let kind = if permanent {
        "rejected"
    } else {
        "refused (transient)"
    };
    if permanent && !r.rejected_by.iter().any(|(d, _)| d == dest) {
        r.rejected_by.push((dest.clone(), reason.to_string()));
    }
    Ok(back_to_read(r, dest, format!("{kind}: {reason}")))
}

/// Back to `read` after a send to `dest` that certainly did not deliver (the recorded `dest`
/// is kept).
fn back_to_read(mut r: MessageRecord, dest: &String, note: String) -> MessageRecord {
    r.state = State::Read;
    r.history.push(step(State::Read, Some(dest), Some(note)));
    r
}
