//! Transfers in progress, per sender run, and the fence that lets a query of that run answer at
//! once and truthfully even while one of its transfers is still arriving (or stalled).
//!
//! A transfer is first [`Arriving`] (its body is being read: bounded only by the peer) and then,
//! at the fence point, [`Storing`] (its messages are being made durable: bounded by the disk).
//! A query (or `/v1/finish`) of a run *fences* every transfer of that run still arriving: the
//! messages it asks about (all of them, for finish) will be refused, not stored, when that body
//! completes. So "not held" stays true forever for them, and the query never waits for a peer.
//! It waits only for the transfers of its run already storing one of those messages.
//!
//! Invariant (race-freedom): fencing and the Arriving -> Storing step take the same lock, so a
//! transfer either saw the fence before it stored anything, or is storing and is waited for.
//! A transfer that begins after the query is neither fenced nor waited for (the request a
//! sender lost began before it asked).
//!
//! Owned by `store::Store` (one per serve); `handler` takes an [`Arriving`] once the caller is
//! known, turns it into a [`Storing`] once the body is decoded, and the storing task holds that
//! until its messages are durable (or it failed).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// (sender instance id, sender run id): the scope of a fence.
type RunKey = (String, String);

/// Which messages (by content hash) of a run a query or a finish fenced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fence {
    /// None: store everything.
    #[default]
    Nothing,
    /// These hashes (asked about by a query).
    Hashes(HashSet<[u8; 32]>),
    /// Every message (the run finished).
    All,
}

impl Fence {
    /// True when the message hashing to `hash` must not be stored.
    pub fn covers(&self, hash: &[u8; 32]) -> bool {
        match self {
            Fence::Nothing => false,
            Fence::Hashes(h) => h.contains(hash),
            Fence::All => true,
        }
    }

    /// Adds what `other` fences.
    fn extend(&mut self, other: &Fence) {
        match (&mut *self, other) {
            (_, Fence::Nothing) | (Fence::All, _) => {}
            (_, Fence::All) => *self = Fence::All,
            (Fence::Hashes(mine), Fence::Hashes(more)) => mine.extend(more.iter().copied()),
            (Fence::Nothing, Fence::Hashes(more)) => *self = Fence::Hashes(more.clone()),
        }
    }

    fn intersects(&self, storing: &HashSet<[u8; 32]>) -> bool {
        match self {
            Fence::Nothing => false,
            Fence::Hashes(h) => !h.is_disjoint(storing),
            Fence::All => !storing.is_empty(),
        }
    }
}

enum Phase {
    /// The body is still arriving; what queries fenced meanwhile.
    Arriving(Fence),
    /// Storing these hashes (the fenced ones were left out).
    Storing(HashSet<[u8; 32]>),
}

struct Entry {
    run: RunKey,
    phase: Phase,
}

#[derive(Default)]
struct Table {
    next: u64,
    entries: HashMap<u64, Entry>,
}

/// The transfers in progress of one serve.
#[derive(Default)]
pub(crate) struct InFlight {
    table: Mutex<Table>,
    changed: Notify,
}

/// One registered transfer; removed from the table when dropped.
struct Ticket {
    inflight: Arc<InFlight>,
    seq: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.inflight.lock().entries.remove(&self.seq);
        self.inflight.changed.notify_waiters();
    }
}

/// A transfer whose body is still arriving. Dropped (client gone, refused), it leaves no trace.
pub struct Arriving(Ticket);

/// A transfer past the fence point: its messages are being made durable. Held by the storing
/// task until they are (or it failed), even if the client disconnects.
pub struct Storing {
    _ticket: Ticket,
    fence: Fence,
}

impl Storing {
    /// The messages of this transfer that a query or finish fenced: refused, not stored.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }
}

impl Arriving {
    /// The fence point: from here on the transfer stores every message of `hashes` that was
    /// not fenced while it arrived, and queries of its run asking about one of those wait.
    pub fn into_storing(self, hashes: impl IntoIterator<Item = [u8; 32]>) -> Storing {
        let ticket = self.0;
        let mut table = ticket.inflight.lock();
        let fence = match table.entries.get_mut(&ticket.seq) {
            Some(entry) => {
                let fence = match &mut entry.phase {
                    Phase::Arriving(f) => std::mem::take(f),
                    Phase::Storing(_) => Fence::Nothing,
                };
                let storing = hashes.into_iter().filter(|h| !fence.covers(h)).collect();
                entry.phase = Phase::Storing(storing);
                fence
            }
            // Unreachable (only the ticket's drop removes it); storing nothing is the safe side.
            None => Fence::All,
        };
        drop(table);
        Storing {
            _ticket: ticket,
            fence,
        }
    }
}

impl InFlight {
    /// A poisoned lock still holds a consistent table: every update is a single step.
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a transfer of (sender, run) whose body is about to be read.
    pub fn arriving(self: &Arc<Self>, sender: &str, run: &str) -> Arriving {
        let mut table = self.lock();
        table.next += 1;
        let seq = table.next;
        table.entries.insert(
            seq,
            Entry {
                run: (sender.to_string(), run.to_string()),
                phase: Phase::Arriving(Fence::Nothing),
            },
        );
        Arriving(Ticket {
            inflight: self.clone(),
            seq,
        })
    }

    /// Fences `fence` in every transfer of (sender, run) still arriving, then waits for those
    /// of the run already storing a fenced message (bounded by the disk, not by any peer).
    pub async fn fence(&self, sender: &str, run: &str, fence: &Fence) {
        let waiting: Vec<u64> = {
            let mut table = self.lock();
            let mut waiting = Vec::new();
            for (seq, e) in table.entries.iter_mut() {
                if e.run.0 != sender || e.run.1 != run {
                    continue;
                }
                match &mut e.phase {
                    Phase::Arriving(f) => f.extend(fence),
                    Phase::Storing(hashes) if fence.intersects(hashes) => waiting.push(*seq),
                    Phase::Storing(_) => {}
                }
            }
            waiting
        };
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let done = {
                let table = self.lock();
                !waiting.iter().any(|s| table.entries.contains_key(s))
            };
            if done {
                return;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(h: &[u8]) -> Fence {
        Fence::Hashes(h.iter().map(|b| [*b; 32]).collect())
    }

    #[tokio::test]
    async fn a_query_fences_what_is_arriving_and_waits_only_for_what_is_storing() {
        let inflight = Arc::new(InFlight::default());
        let slow = inflight.arriving("s", "r");
        let other_run = inflight.arriving("s", "r2");
        let storing = inflight.arriving("s", "r").into_storing([[2; 32]]);
        // Nothing of the asked run is storing hash 1: the query returns at once.
        inflight.fence("s", "r", &hashes(&[1])).await;
        let slow = slow.into_storing([[1; 32], [3; 32]]);
        assert_eq!(slow.fence(), &hashes(&[1]));
        assert_eq!(other_run.into_storing([[1; 32]]).fence(), &Fence::Nothing);
        // Hash 2 is being stored: the query waits until that transfer is done.
        let waiter = {
            let inflight = inflight.clone();
            tokio::spawn(async move { inflight.fence("s", "r", &hashes(&[2])).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(storing);
        waiter.await.unwrap();
        drop(slow);
        // Finish fences everything still arriving; a later transfer is not fenced.
        let late = inflight.arriving("s", "r");
        inflight.fence("s", "r", &Fence::All).await;
        assert_eq!(late.into_storing([[9; 32]]).fence(), &Fence::All);
        assert_eq!(
            inflight.arriving("s", "r").into_storing([]).fence(),
            &Fence::Nothing
        );
    }

    #[test]
    fn fences_combine() {
        let mut f = Fence::Nothing;
        f.extend(&hashes(&[1]));
        f.extend(&hashes(&[2]));
        assert!(f.covers(&[1; 32]) && f.covers(&[2; 32]) && !f.covers(&[3; 32]));
        f.extend(&Fence::All);
        assert!(f.covers(&[3; 32]));
        f.extend(&hashes(&[4]));
        assert_eq!(f, Fence::All);
    }
}
