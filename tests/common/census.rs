//! Where every message ended up: each on exactly one destination, byte-identical (same hash)
//! and in its queue, nothing unknown, the source empty.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{LsEntry, Server, spool_ls};

/// Every message of every server, by id; panics on a message held twice.
pub fn census(servers: &[&Server]) -> BTreeMap<String, (usize, LsEntry)> {
    let mut all = BTreeMap::new();
    for (i, s) in servers.iter().enumerate() {
        for e in s.ls() {
            if let Some((j, _)) = all.insert(e.id.clone(), (i, e.clone())) {
                panic!("message {} is on destination {j} and {i}", e.id);
            }
        }
    }
    all
}

/// The census after a drain: every expected message (id -> (queue, hash)) on exactly one of
/// `servers`, with its queue and hash; nothing unknown on them; the source `src` empty.
pub fn assert_census(
    servers: &[&Server],
    src: &Path,
    expected: &BTreeMap<String, (String, String)>,
) {
    let all = census(servers);
    let missing: Vec<&String> = expected
        .keys()
        .filter(|id| !all.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} messages lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let extra: Vec<&String> = all
        .keys()
        .filter(|id| !expected.contains_key(*id))
        .collect();
    assert!(extra.is_empty(), "unexpected messages: {extra:?}");
    for (id, (queue, hash)) in expected {
        let (_, e) = &all[id];
        assert_eq!((&e.queue, &e.hash), (queue, hash), "message {id} changed");
    }
    let left = spool_ls(src);
    assert!(
        left.is_empty(),
        "{} messages left at the source",
        left.len()
    );
}

/// The ids of a listing.
pub fn ids(entries: &[LsEntry]) -> BTreeSet<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

/// Checks each listed message against the original (hash, queue): none listed twice, none
/// unknown.
pub fn check_copies(
    where_: &str,
    entries: &[LsEntry],
    originals: &BTreeMap<String, (String, String)>,
) {
    let mut seen = BTreeSet::new();
    for e in entries {
        assert!(seen.insert(&e.id), "{where_} lists {} twice", e.id);
        let (queue, hash) = originals
            .get(&e.id)
            .unwrap_or_else(|| panic!("{where_} holds an unknown message {}", e.id));
        assert_eq!(&e.hash, hash, "{where_}: hash of {}", e.id);
        assert_eq!(&e.queue, queue, "{where_}: queue of {}", e.id);
    }
}
