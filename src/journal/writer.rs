//! The journal's single writer: applies groups of ops (see `groupcommit`) and checks each
//! message transition through `Op::apply_to`.

use std::path::Path;

use redb::{ReadableTable, WriteTransaction};

use super::{
    JournalError, MESSAGES, MessageRecord, Op, RUNS, UNREADABLE, UnreadableRecord, db_err,
};
use crate::base::Timestamp;

/// Applies every op of every request in `groups` inside `txn`.
pub(super) fn apply_group(
    txn: &WriteTransaction,
    path: &Path,
    groups: &[Vec<Op>],
) -> Result<(), JournalError> {
    let enc = |e: serde_json::Error| JournalError::Writer(e.to_string());
    let mut runs = txn.open_table(RUNS).map_err(|e| db_err(path, e))?;
    let mut msgs = txn.open_table(MESSAGES).map_err(|e| db_err(path, e))?;
    let mut unreadable = txn.open_table(UNREADABLE).map_err(|e| db_err(path, e))?;
    for op in groups.iter().flatten() {
        match op {
            Op::PutRun(run) => {
                let v = serde_json::to_vec(run).map_err(enc)?;
                runs.insert(run.seq, v.as_slice())
                    .map_err(|e| db_err(path, e))?;
            }
            Op::Unreadable {
                run,
                path: file,
                kind,
                reason,
            } => {
                let rec = UnreadableRecord {
                    kind: kind.clone(),
                    reason: reason.clone(),
                    at: Timestamp::now(),
                };
                let v = serde_json::to_vec(&rec).map_err(enc)?;
                unreadable
                    .insert((*run, file.as_str()), v.as_slice())
                    .map_err(|e| db_err(path, e))?;
            }
            op => {
                let Some((run, id)) = op.message_key() else {
                    continue;
                };
                let cur: Option<MessageRecord> =
                    match msgs.get((run, id.0)).map_err(|e| db_err(path, e))? {
                        None => None,
                        Some(v) => Some(serde_json::from_slice(v.value()).map_err(|e| {
                            JournalError::Corrupt {
                                path: path.to_path_buf(),
                                key: format!("message {id} of run {run}"),
                                reason: e.to_string(),
                            }
                        })?),
                    };
                let next = op
                    .apply_to(cur)
                    .map_err(|reason| JournalError::Transition {
                        run,
                        id: id.to_string(),
                        reason,
                    })?;
                let v = serde_json::to_vec(&next).map_err(enc)?;
                msgs.insert((run, id.0), v.as_slice())
                    .map_err(|e| db_err(path, e))?;
            }
        }
    }
    Ok(())
}
