//! One message on its way: where it is on disk, its bytes, the hash the journal knows it by, and
//! which destinations rejected it for good.
//!
//! Owns [`Item`] and the run's [`Claims`]. Invariants: `rejected` only grows within an
//! invocation (a destination that rejected a message permanently is not asked again); at most
//! one file per message id is on its way at a time (its [`Claim`], released when the item is
//! dropped), so two files with one id in two queues can never both travel. Uses no other engine module; built by
//! `scan`, `resume` and `fallback`, carried through `route`, `deliver`, `settle` and `ledger`;
//! [`Acked`] is what is left of an acknowledged item until `retire` removed its local copy.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::base::{ContentHash, MessageId};
use crate::spool::{Entry, Message};

/// The ids on their way in this invocation, and the file each one was read from.
#[derive(Default)]
pub(crate) struct Claims(Mutex<HashMap<MessageId, PathBuf>>);

/// An id held for one file until dropped.
pub(crate) struct Claim {
    claims: Arc<Claims>,
    id: MessageId,
}

impl Claims {
    /// Claims `id` for the file at `path`; `Err(other)` names the file already holding it.
    pub fn claim(
        self: &Arc<Self>,
        id: MessageId,
        path: &std::path::Path,
    ) -> Result<Claim, PathBuf> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(other) = m.get(&id) {
            return Err(other.clone());
        }
        m.insert(id, path.to_path_buf());
        Ok(Claim {
            claims: self.clone(),
            id,
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut m = self.claims.0.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&self.id);
    }
}

/// A message on its way.
pub(crate) struct Item {
    pub entry: Entry,
    pub msg: Message,
    /// The hash to ask a destination about: the content read, or (settling) what was sent.
    pub hash: ContentHash,
    /// Indexes into the run's destinations that rejected it permanently.
    pub rejected: Vec<usize>,
    pub reasons: Vec<String>,
    /// The instance behind its destination it is journaled `sent` to (`Drain-Target-Instance`):
    /// set with the `sent` record, read back from the journal when settling.
    pub instance: Option<String>,
    /// Held while the item lives (items built by `scan`; settling works on journaled ones).
    _claim: Option<Claim>,
}

impl Item {
    pub fn new(entry: Entry, msg: Message, rejected: Vec<usize>) -> Item {
        let hash = msg.hash;
        Item {
            entry,
            msg,
            hash,
            rejected,
            reasons: Vec::new(),
            instance: None,
            _claim: None,
        }
    }

    /// The same, holding `claim` on its id while it lives.
    pub fn claimed(entry: Entry, msg: Message, rejected: Vec<usize>, claim: Claim) -> Item {
        let mut item = Item::new(entry, msg, rejected);
        item._claim = Some(claim);
        item
    }

    pub fn id(&self) -> MessageId {
        self.entry.id
    }

    pub fn size(&self) -> u64 {
        self.msg.bytes.len() as u64
    }

    /// Excludes destination `d` (named `dname`) for this message, saying why.
    pub fn exclude(&mut self, d: usize, dname: &str, reason: &str) {
        self.rejected.push(d);
        self.reasons.push(format!("{dname}: {reason}"));
    }

    /// Goes back to the hash of the content read (after asking about an older one).
    pub fn rehash(&mut self) {
        self.hash = self.msg.hash;
    }

    /// The item acknowledged by a destination (`note`: how; `by`: the instance that answered,
    /// if known): its bytes are let go, its claim is kept until the local copy is removed.
    pub fn into_acked(self, note: String, by: Option<String>) -> Acked {
        Acked {
            size: self.size(),
            entry: self.entry,
            note,
            by,
            _claim: self._claim,
        }
    }
}

/// A message a destination acknowledged, on its way to `acked` and the removal of its local
/// copy (`retire`), without its bytes.
pub(crate) struct Acked {
    pub entry: Entry,
    pub size: u64,
    /// How it was acknowledged (the journal's `acked` note).
    pub note: String,
    /// The instance behind the destination that acknowledged it, if the answer named one.
    pub by: Option<String>,
    _claim: Option<Claim>,
}
