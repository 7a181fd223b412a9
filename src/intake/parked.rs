//! Parked messages: what a transfer meant for another instance left here, waiting for the
//! sender's commit (`wire`, "Parking").
//!
//! Owns an in-memory table (sender, run, hash) -> frame. Invariants: nothing here is in the
//! spool, the dedupe store or a query's answer; an entry leaves only by [`Parked::take`] (a
//! commit, which then stores it), by an abort (a query or finish of its run asked about it),
//! or by expiry ([`wire::PARK_TTL`]); a restart forgets everything (presumed abort). The total
//! parked is bounded: a transfer that would pass the bound is not parked (the caller answers
//! `421` as without parking). Called by `handler` (transfer, query, finish) and `commit`.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::wire::{self, Frame};

/// Most bytes an instance keeps parked at once (beyond it, misdirected transfers get `421`).
pub(crate) const PARK_LIMIT: usize = 64 << 20;

/// (sender instance id, run id, message hash).
type Key = (String, String, [u8; 32]);

struct Entry {
    frame: Frame,
    at: Instant,
}

#[derive(Default)]
struct Table {
    entries: HashMap<Key, Entry>,
    bytes: usize,
}

impl Table {
    fn remove(&mut self, key: &Key) -> Option<Frame> {
        let e = self.entries.remove(key)?;
        self.bytes -= e.frame.file.len();
        Some(e.frame)
    }

    fn expire(&mut self, now: Instant, ttl: Duration) {
        let old: Vec<Key> = self
            .entries
            .iter()
            .filter(|(_, e)| now.duration_since(e.at) >= ttl)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            self.remove(&k);
        }
    }
}

/// The parked messages of this instance.
pub(crate) struct Parked {
    table: Mutex<Table>,
    /// Most bytes parked at once.
    limit: usize,
    ttl: Duration,
}

fn key(sender: &str, run: &str, hash: [u8; 32]) -> Key {
    (sender.to_string(), run.to_string(), hash)
}

impl Parked {
    pub fn new(limit: usize) -> Parked {
        Parked::with_ttl(limit, wire::PARK_TTL)
    }

    fn with_ttl(limit: usize, ttl: Duration) -> Parked {
        Parked {
            table: Mutex::new(Table::default()),
            limit,
            ttl,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock leaves a consistent table (every step is one
        // insert or remove), so a poisoned lock is used as is.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Parks `frames` for (sender, run); false (nothing parked) when they would pass the limit.
    pub fn park(&self, sender: &str, run: &str, frames: Vec<Frame>) -> bool {
        let now = Instant::now();
        let mut t = self.lock();
        t.expire(now, self.ttl);
        let adding: usize = frames.iter().map(|f| f.file.len()).sum();
        // Parking a message again replaces its entry rather than adding to it.
        let replaced: usize = frames
            .iter()
            .filter_map(|f| t.entries.get(&key(sender, run, f.hash.0)))
            .map(|e| e.frame.file.len())
            .sum();
        if (t.bytes - replaced).saturating_add(adding) > self.limit {
            return false;
        }
        for frame in frames {
            let k = key(sender, run, frame.hash.0);
            t.remove(&k);
            t.bytes += frame.file.len();
            t.entries.insert(k, Entry { frame, at: now });
        }
        true
    }

    /// Takes the parked frames of `hashes` (for a commit): one slot per hash, in order.
    pub fn take(&self, sender: &str, run: &str, hashes: &[[u8; 32]]) -> Vec<Option<Frame>> {
        let mut t = self.lock();
        t.expire(Instant::now(), self.ttl);
        hashes
            .iter()
            .map(|h| t.remove(&key(sender, run, *h)))
            .collect()
    }

    /// Drops the parked frames of `hashes`: a query asked about them, so no later commit may
    /// store them after its answer.
    pub fn abort(&self, sender: &str, run: &str, hashes: impl IntoIterator<Item = [u8; 32]>) {
        let mut t = self.lock();
        for h in hashes {
            t.remove(&key(sender, run, h));
        }
    }

    /// Drops everything parked for (sender, run): the run finished.
    pub fn abort_run(&self, sender: &str, run: &str) {
        let mut t = self.lock();
        let gone: Vec<Key> = t
            .entries
            .keys()
            .filter(|(s, r, _)| s == sender && r == run)
            .cloned()
            .collect();
        for k in gone {
            t.remove(&k);
        }
    }

    /// Bytes parked now.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::ContentHash;
    use bytes::Bytes;

    fn frame(n: u8, len: usize) -> Frame {
        Frame {
            hash: ContentHash([n; 32]),
            file: Bytes::from(vec![n; len]),
        }
    }

    #[test]
    fn a_commit_takes_each_parked_frame_once() {
        let p = Parked::new(1000);
        assert!(p.park("s", "r", vec![frame(1, 10), frame(2, 20)]));
        assert_eq!(p.bytes(), 30);
        let got = p.take("s", "r", &[[2; 32], [3; 32], [1; 32]]);
        let lens: Vec<_> = got
            .iter()
            .map(|f| f.as_ref().map(|f| f.file.len()))
            .collect();
        assert_eq!(lens, [Some(20), None, Some(10)]);
        assert!(p.take("s", "r", &[[1; 32]])[0].is_none(), "taken once");
        assert_eq!(p.bytes(), 0);
    }

    #[test]
    fn scoped_by_sender_and_run() {
        let p = Parked::new(1000);
        assert!(p.park("s", "r", vec![frame(1, 10)]));
        assert!(p.take("s", "other", &[[1; 32]])[0].is_none());
        assert!(p.take("other", "r", &[[1; 32]])[0].is_none());
        assert!(p.take("s", "r", &[[1; 32]])[0].is_some());
    }

    #[test]
    fn a_query_or_finish_aborts_what_it_names() {
        let p = Parked::new(1000);
        assert!(p.park("s", "r", vec![frame(1, 10), frame(2, 10)]));
        assert!(p.park("s", "r2", vec![frame(3, 10)]));
        p.abort("s", "r", [[1; 32]]);
        assert!(p.take("s", "r", &[[1; 32]])[0].is_none());
        p.abort_run("s", "r");
        assert!(p.take("s", "r", &[[2; 32]])[0].is_none());
        assert!(
            p.take("s", "r2", &[[3; 32]])[0].is_some(),
            "another run kept"
        );
        assert_eq!(p.bytes(), 0);
    }

    #[test]
    fn over_the_limit_nothing_is_parked() {
        let p = Parked::new(25);
        assert!(p.park("s", "r", vec![frame(1, 20)]));
        assert!(!p.park("s", "r", vec![frame(2, 3), frame(3, 3)]));
        assert!(p.take("s", "r", &[[2; 32]])[0].is_none(), "all or nothing");
        // Parking the same message again replaces it rather than counting it twice.
        assert!(p.park("s", "r", vec![frame(1, 20)]));
        assert_eq!(p.bytes(), 20);
    }

    #[test]
    fn expired_frames_are_gone() {
        let p = Parked::with_ttl(1000, Duration::ZERO);
        assert!(p.park("s", "r", vec![frame(1, 10)]));
        assert!(p.take("s", "r", &[[1; 32]])[0].is_none());
        assert_eq!(p.bytes(), 0);
    }
}
