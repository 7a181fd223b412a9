//! The journal's single writer: applies one group of requests (see `groupcommit`) inside the
//! group's write transaction, checking each message transition through `Op::apply_to`.
//!
//! Ops are applied in submission order, so several ops on one message in one group see each
//! other. Any error (a refused transition, a corrupt current record) fails the whole group:
//! the transaction is aborted and nothing of it is committed. Called only by the journal's
//! group-commit thread.

use std::path::Path;

use redb::{ReadableTable, Table, WriteTransaction};

use super::error::JournalError;
use super::records::{Compacted, Op, RunRecord, RunStatus, UnreadableRecord};
use super::tables::{self, MESSAGES, RUNS, UNREADABLE};
use crate::base::{MessageId, Timestamp};

type Messages<'t> = Table<'t, (u64, [u8; 16]), &'static [u8]>;

/// Applies every op of every request in `groups` inside `txn`.
pub(super) fn apply_group(
    txn: &WriteTransaction,
    path: &Path,
    groups: &[Vec<Op>],
) -> Result<(), JournalError> {
    let db_err = |e: redb::TableError| JournalError::db(path, e);
    let mut runs = txn.open_table(RUNS).map_err(db_err)?;
    let mut msgs = txn.open_table(MESSAGES).map_err(db_err)?;
    let mut unreadable = txn.open_table(UNREADABLE).map_err(db_err)?;
    let store_err = |e: redb::StorageError| JournalError::db(path, e);
    for op in groups.iter().flatten() {
        match op {
            Op::PutRun(run) => {
                let v = encode(path, || format!("run {}", run.seq), run)?;
                runs.insert(run.seq, v.as_slice()).map_err(store_err)?;
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
                let v = encode(path, || format!("unreadable {file} of run {run}"), &rec)?;
                unreadable
                    .insert((*run, file.as_str()), v.as_slice())
                    .map_err(store_err)?;
            }
            Op::Compact { seq, detail } => {
                compact(&mut runs, &mut msgs, &mut unreadable, path, *seq, detail)?;
            }
            op => {
                if let Some((run, id)) = op.message_key() {
                    apply_message_op(&mut msgs, path, op, run, id)?;
                }
            }
        }
    }
    Ok(())
}

/// `Compact`: a finished run keeps its run record (with `detail`) and loses its message and
/// unreadable records.
fn compact(
    runs: &mut Table<'_, u64, &'static [u8]>,
    msgs: &mut Messages<'_>,
    unreadable: &mut Table<'_, (u64, &'static str), &'static [u8]>,
    path: &Path,
    seq: u64,
    detail: &serde_json::Value,
) -> Result<(), JournalError> {
    let store_err = |e: redb::StorageError| JournalError::db(path, e);
    let refuse = |why: &str| JournalError::NotCompactable {
        path: path.to_path_buf(),
        seq,
        why: why.to_string(),
    };
    let mut run: RunRecord = match runs.get(seq).map_err(store_err)? {
        None => return Err(refuse("there is no such run")),
        Some(v) => {
            tables::decode(|| format!("run {seq}"), v.value()).map_err(|c| c.into_error(path))?
        }
    };
    if run.status != RunStatus::Finished {
        return Err(refuse(&format!("it is {}, not finished", run.status)));
    }
    msgs.retain_in((seq, [0u8; 16])..=(seq, [0xffu8; 16]), |_, _| false)
        .map_err(store_err)?;
    unreadable
        .retain_in((seq, "")..(seq + 1, ""), |_, _| false)
        .map_err(store_err)?;
    run.compacted = Some(Compacted {
        at: Timestamp::now(),
        detail: detail.clone(),
    });
    let v = encode(path, || format!("run {seq}"), &run)?;
    runs.insert(seq, v.as_slice()).map_err(store_err)?;
    Ok(())
}

/// Reads the message's record, applies `op` to it and writes the result.
fn apply_message_op(
    msgs: &mut Messages<'_>,
    path: &Path,
    op: &Op,
    run: u64,
    id: MessageId,
) -> Result<(), JournalError> {
    let store_err = |e: redb::StorageError| JournalError::db(path, e);
    let cur = match msgs.get((run, id.0)).map_err(store_err)? {
        None => None,
        Some(v) => Some(
            tables::decode(|| tables::message_key(run, id), v.value())
                .map_err(|c| c.into_error(path))?,
        ),
    };
    let next = op
        .apply_to(cur)
        .map_err(|refused| JournalError::Transition {
            path: path.to_path_buf(),
            run,
            id,
            refused,
        })?;
    let v = encode(path, || tables::message_key(run, id), &next)?;
    msgs.insert((run, id.0), v.as_slice()).map_err(store_err)?;
    Ok(())
}

fn encode<T: serde::Serialize>(
    path: &Path,
    key: impl FnOnce() -> String,
    value: &T,
) -> Result<Vec<u8>, JournalError> {
    serde_json::to_vec(value).map_err(|e| JournalError::Encode {
        path: path.to_path_buf(),
        key: key(),
        reason: e.to_string(),
    })
}
