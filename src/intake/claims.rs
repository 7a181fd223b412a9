//! Ids being stored right now. Two transfers carrying the same message id (from different
//! senders, or twice in one request, possibly in different queues) must never both be told
//! `stored`: only one file can exist per id, and a sender told `stored` deletes its copy.
//!
//! A transfer claims each id it is about to store, from the moment it checks the spool until
//! the file is durable (then the spool itself answers for the id). A second claim of an id
//! already claimed with another hash is an id conflict; with the same hash, the other
//! transfer is storing that very message, so this one is asked to retry (and will then find
//! it held). Claims are never waited for, so two transfers claiming ids in opposite orders
//! cannot deadlock. Owned by `store::Store`; one [`ClaimSet`] per transfer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::base::{ContentHash, MessageId};

/// Every id claimed by a transfer in progress, with the hash it is storing.
#[derive(Default)]
pub(crate) struct Claims(Mutex<HashMap<MessageId, ContentHash>>);

/// What claiming an id found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Claimed now, for this transfer.
    Granted,
    /// This transfer, or another one, is storing the same message.
    SameInProgress,
    /// A different message with this id is being stored.
    Conflict,
}

/// The ids one transfer claimed; released when it is dropped (after the files are durable,
/// or on failure).
pub(crate) struct ClaimSet {
    claims: Arc<Claims>,
    mine: HashMap<MessageId, ContentHash>,
}

impl ClaimSet {
    pub fn new(claims: Arc<Claims>) -> ClaimSet {
        ClaimSet {
            claims,
            mine: HashMap::new(),
        }
    }

    /// Claims `id` for storing the message hashing to `hash`.
    pub fn claim(&mut self, id: MessageId, hash: ContentHash) -> Claim {
        if let Some(h) = self.mine.get(&id) {
            return if *h == hash {
                Claim::SameInProgress
            } else {
                Claim::Conflict
            };
        }
        let mut all = self.claims.0.lock().unwrap_or_else(|p| p.into_inner());
        match all.get(&id) {
            Some(h) if *h == hash => Claim::SameInProgress,
            Some(_) => Claim::Conflict,
            None => {
                all.insert(id, hash);
                self.mine.insert(id, hash);
                Claim::Granted
            }
        }
    }
}

impl Drop for ClaimSet {
    fn drop(&mut self) {
        let mut all = self.claims.0.lock().unwrap_or_else(|p| p.into_inner());
        for id in self.mine.keys() {
            all.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_claim_per_id_until_released() {
        let claims = Arc::new(Claims::default());
        let (id, h1, h2) = (
            MessageId([1; 16]),
            ContentHash([1; 32]),
            ContentHash([2; 32]),
        );
        let mut a = ClaimSet::new(claims.clone());
        let mut b = ClaimSet::new(claims.clone());
        assert_eq!(a.claim(id, h1), Claim::Granted);
        assert_eq!(a.claim(id, h1), Claim::SameInProgress);
        assert_eq!(a.claim(id, h2), Claim::Conflict);
        assert_eq!(b.claim(id, h2), Claim::Conflict);
        assert_eq!(b.claim(id, h1), Claim::SameInProgress);
        drop(a);
        assert_eq!(b.claim(id, h2), Claim::Granted);
    }
}
