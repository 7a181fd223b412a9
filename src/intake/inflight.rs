//! Transfers being processed, so that a query waits for those that started before it: a
//! sender whose connection dropped asks "do you hold these?" only once the request it lost has
//! either stored its messages or stopped, never in between.
//!
//! Owned by `store::Store` (one per serve); a [`TransferGuard`] is taken by `handler` when a
//! transfer is accepted and held by the storing task until its messages are durable.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// The sequence numbers of the transfers in progress, and the last one handed out.
#[derive(Default)]
pub(crate) struct InFlight {
    state: Mutex<(u64, BTreeSet<u64>)>,
    changed: Notify,
}

/// Held from the moment a transfer request is accepted until its messages are durable (or it
/// failed); kept alive by the storing task even if the client disconnects.
pub struct TransferGuard {
    inflight: Arc<InFlight>,
    seq: u64,
}

impl Drop for TransferGuard {
    fn drop(&mut self) {
        let mut st = self.inflight.lock();
        st.1.remove(&self.seq);
        drop(st);
        self.inflight.changed.notify_waiters();
    }
}

impl InFlight {
    /// A poisoned lock still holds consistent numbers: every update is a single step.
    fn lock(&self) -> MutexGuard<'_, (u64, BTreeSet<u64>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a transfer request as in progress.
    pub fn begin(self: &Arc<Self>) -> TransferGuard {
        let mut st = self.lock();
        st.0 += 1;
        let seq = st.0;
        st.1.insert(seq);
        TransferGuard {
            inflight: self.clone(),
            seq,
        }
    }

    /// Waits until every transfer that began before this call has finished.
    pub async fn wait_for_earlier(&self) {
        let snapshot = self.lock().0;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let oldest = self.lock().1.first().copied();
            match oldest {
                Some(seq) if seq <= snapshot => changed.await,
                _ => return,
            }
        }
    }
}
