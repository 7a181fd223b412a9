//! Publishing received copies only once the receiver can answer for them, and settling the
//! staged copies a stopped `drain serve` left (the staged name is the spool's, see
//! `spool::staged`).
//!
//! Order per transfer (`store` does the first two steps):
//! 1. stage each new copy: written under its staged name, fsynced, its directory fsynced;
//! 2. commit the dedupe records (group commit);
//! 3. record one `message.received` event per message, durably;
//! 4. publish: rename each staged copy to `<id>.msg`; then answer.
//!
//! Crash points: before 2 is durable, a staged copy has no record and the sender was not
//! answered, so settling removes it (the sender sends it again). After 2, the record says
//! held, so settling publishes it, recording its event again (events are at least once). A
//! failure (not a crash) after 2 keeps the copies staged and their ids claimed, and they are
//! published at the next request ([`Store::retry_unpublished`]) or start.
//!
//! Called by `store` (transfers, queries), by `Store::open` at start, and by the drain engine
//! at its start ([`settle_data_dir`]) for an instance whose serve stopped mid-transfer.

use std::path::Path;

use redb::{Database, ReadableDatabase};

use super::claims::ClaimSet;
use super::store::{DEDUPE, DedupeEntry, StoreError};
use crate::events::{Event, EventQueue};
use crate::spool::{Spool, SpoolError, Staged};

/// What a transfer staged: published once its dedupe records are durable. Holds the ids'
/// claims until then, so no other transfer stores those ids meanwhile.
pub(super) struct Staging {
    pub entries: Vec<DedupeEntry>,
    pub staged: Vec<Staged>,
    pub _claims: ClaimSet,
}

/// What settling the staged copies found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Answered for (record durable): now messages.
    pub published: usize,
    /// Never answered for: removed, the sender sends them again.
    pub removed: usize,
}

/// One `message.received` event per entry.
pub(super) fn received_events(instance: &str, entries: &[DedupeEntry]) -> Vec<Event> {
    entries
        .iter()
        .map(|e| {
            let mut ev = Event::new("message.received", instance, e.id, e.queue);
            ev.from_instance = Some(e.sender.clone());
            ev.run = Some(e.run.clone());
            ev
        })
        .collect()
}

/// Steps 3 and 4 for copies whose records are durable. A copy already published (a retry)
/// is skipped (see [`Spool::publish`]).
pub(super) fn publish(
    spool: &Spool,
    events: &EventQueue,
    instance: &str,
    entries: &[DedupeEntry],
    staged: &[Staged],
) -> Result<(), StoreError> {
    events.record(&received_events(instance, entries))?;
    for s in staged {
        spool.publish(s)?;
    }
    Ok(())
}

/// Settles the staged copies `staged` (the spool's list of them): publishes those `db` holds a
/// record for (with their events), removes the others. Copies that cannot be read are left,
/// with a warning.
pub(super) fn settle(
    db: &Database,
    spool: &Spool,
    events: &EventQueue,
    instance: &str,
    staged: Vec<Staged>,
) -> Result<Settled, StoreError> {
    if staged.is_empty() {
        return Ok(Settled::default());
    }
    let dberr = |e: &dyn std::fmt::Display| StoreError::Db {
        path: "intake.redb".into(),
        reason: e.to_string(),
    };
    let txn = db.begin_read().map_err(|e| dberr(&e))?;
    let table = txn.open_table(DEDUPE).map_err(|e| dberr(&e))?;
    let (mut held, mut entries, mut orphans) = (Vec::new(), Vec::new(), Vec::new());
    for s in staged {
        let msg = match spool.read_staged(&s) {
            Ok(m) => m,
            // Cut while it was written: it was never fsynced, so never answered for.
            Err(SpoolError::Corrupt { .. } | SpoolError::Misplaced { .. }) => {
                orphans.push(s);
                continue;
            }
            Err(e) => {
                tracing::warn!("cannot settle a staged copy: {e}; left in place");
                continue;
            }
        };
        let key = (s.sender.as_str(), s.run.as_str(), msg.hash.0);
        if table.get(key).map_err(|e| dberr(&e))?.is_some() {
            entries.push(DedupeEntry::new(
                &s.sender, &s.run, msg.hash.0, s.id, s.queue,
            ));
            held.push(s);
        } else {
            orphans.push(s);
        }
    }
    drop(table);
    drop(txn);
    publish(spool, events, instance, &entries, &held)?;
    if !held.is_empty() {
        spool.sync_queue_dirs()?;
    }
    spool.discard(&orphans)?;
    let settled = Settled {
        published: held.len(),
        removed: orphans.len(),
    };
    tracing::info!(
        "settled the copies an interrupted transfer left staged: {} answered for, now in the \
         spool; {} never answered for, removed (their senders send them again)",
        settled.published,
        settled.removed
    );
    Ok(settled)
}

/// For a drain starting on this instance: settles what its stopped `drain serve` left staged,
/// so that every copy it answered for is in the spool the drain scans. Opens the intake
/// database only if there is one (an instance that never received has nothing staged).
/// The caller holds the instance lock.
pub fn settle_data_dir(data_dir: &Path, instance: &str) -> Result<Settled, StoreError> {
    let path = data_dir.join("intake.redb");
    if !path.exists() {
        return Ok(Settled::default());
    }
    let spool = Spool::open(data_dir)?;
    let staged = spool.staged()?;
    if staged.is_empty() {
        return Ok(Settled::default());
    }
    let db = crate::groupcommit::create_or_open(&path, &redb::Builder::new()).map_err(|e| {
        StoreError::Db {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    })?;
    let events = EventQueue::open(data_dir)?;
    settle(&db, &spool, &events, instance, staged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::{MessageId, QueueKind};
    use crate::spool::test_message;

    /// What a serve killed mid-transfer leaves: one copy whose record is durable, one whose
    /// record is not, one cut while it was written. The next start settles each.
    #[test]
    fn a_start_publishes_what_was_answered_for_and_removes_the_rest() {
        let data =
            std::env::temp_dir().join(format!("drain-settle-{}", MessageId::random().unwrap()));
        let events = EventQueue::open(&data).unwrap();
        let spool = Spool::open(&data).unwrap();
        let (sender, run) = ("a".repeat(32), "b".repeat(32));
        let (held, orphan, torn) = (
            test_message(QueueKind::Queue, b"held"),
            test_message(QueueKind::BounceFull, b"orphan"),
            test_message(QueueKind::Queue, b"torn"),
        );
        let msgs = [held.clone(), orphan.clone(), torn.clone()];
        let staged: Vec<Staged> = spool
            .stage_each(&msgs, &sender, &run)
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        std::fs::write(&staged[2].path, &torn.bytes[..torn.bytes.len() - 1]).unwrap();
        // The held copy's record, committed as the intake-writer would.
        let path = data.join("intake.redb");
        let db = crate::groupcommit::create_or_open(&path, &redb::Builder::new()).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(DEDUPE)
            .unwrap()
            .insert(
                (sender.as_str(), run.as_str(), held.hash.0),
                b"{}".as_slice(),
            )
            .unwrap();
        txn.commit().unwrap();

        let settled = settle(&db, &spool, &events, "c", spool.staged().unwrap()).unwrap();
        assert_eq!(
            settled,
            Settled {
                published: 1,
                removed: 2
            }
        );
        assert!(spool.staged().unwrap().is_empty());
        let ids: Vec<MessageId> = spool.scan().map(|e| e.unwrap().id).collect();
        assert_eq!(ids, vec![held.header.id]);
        assert_eq!(spool.get(held.header.id).unwrap().hash, held.hash);
        assert_eq!(events.count().unwrap(), 1, "the published copy's event");
        drop(db);
        std::fs::remove_dir_all(&data).unwrap();
    }
}
