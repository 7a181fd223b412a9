//! One message on its way: where it is on disk, its bytes, the hash the journal knows it by, and
//! which destinations rejected it for good.
//!
//! Owns [`Item`]. Invariant: `rejected` only grows within an invocation (a destination that
//! rejected a message permanently is not asked again). Uses no other engine module; built by
//! `scan`, `resume` and `fallback`, carried through `route`, `deliver`, `settle` and `ledger`.

use crate::base::{ContentHash, MessageId};
use crate::spool::{Entry, Message};

/// A message on its way.
pub(crate) struct Item {
    pub entry: Entry,
    pub msg: Message,
    /// The hash to ask a destination about: the content read, or (settling) what was sent.
    pub hash: ContentHash,
    /// Indexes into the run's destinations that rejected it permanently.
    pub rejected: Vec<usize>,
    pub reasons: Vec<String>,
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
        }
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
}
