//! A property test of the journal state machine: random sequences of ops on a few messages and
//! destinations, applied both to a small model of the allowed transitions (written from
//! `journal-format.md` section 3, not from the code) and to `Op::apply_to`, and for fewer
//! cases to a real journal in a temporary directory. States, destinations, rejection sets and
//! flags must agree after every op; an op refused by one is refused by the other.

use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;

use super::{Dir, id, read_op, rt};
use crate::journal::{Journal, MessageRecord, Op, State};

const DESTS: [&str; 3] = ["10.0.0.2:443", "10.0.0.3:443", "[2001:db8::2]:443"];
const MESSAGES: u64 = 3;

/// A generated op: which kind (0..9, in the order of the document's table), on which message,
/// to which destination, with which file hash, and a flag (`permanent` / `possible_duplicate`).
#[derive(Clone, Debug)]
struct Gen {
    kind: u8,
    msg: u64,
    dest: usize,
    hash: u8,
    flag: bool,
}

fn gen_op() -> impl Strategy<Value = Gen> {
    (0u8..9, 0..MESSAGES, 0..DESTS.len(), 0u8..2, any::<bool>()).prop_map(
        |(kind, msg, dest, hash, flag)| Gen {
            kind,
            msg,
            dest,
            hash,
            flag,
        },
    )
}

impl Gen {
    fn op(&self) -> Op {
        let (run, id) = (1, id(self.msg));
        let dest = DESTS[self.dest].to_string();
        let reason = "why".to_string();
        match self.kind {
            0 => read_op(1, self.msg, self.hash),
            1 => Op::Sent {
                run,
                id,
                dest,
                possible_duplicate: self.flag,
                instance: None,
            },
            2 => Op::NotDelivered {
                run,
                id,
                dest,
                reason,
            },
            3 => Op::Rejected {
                run,
                id,
                dest,
                reason,
                permanent: self.flag,
            },
            4 => Op::Reassigned {
                run,
                id,
                from: dest,
                reason,
            },
            5 => Op::Acked {
                run,
                id,
                dest,
                note: "stored".into(),
                instance: None,
            },
            6 => Op::Deleted { run, id },
            7 => Op::RemoveFailed { run, id, reason },
            _ => Op::Parked {
                run,
                id,
                dest,
                instance: "0123456789abcdef0123456789abcdef".into(),
            },
        }
    }
}

/// The model of one message's record.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Model {
    state: State,
    dest: Option<String>,
    rejected: BTreeSet<String>,
    possible_duplicate: bool,
    remove_failed: bool,
    hash: u8,
    steps: usize,
}

/// The document's transitions: the next model, or `None` when the op is refused.
fn step(cur: Option<&Model>, g: &Gen) -> Option<Model> {
    let d = DESTS[g.dest].to_string();
    let sent_to_d = |m: &Model| m.state == State::Sent && m.dest.as_deref() == Some(d.as_str());
    let mut m = match (g.kind, cur) {
        (0, None) => Model {
            state: State::Read,
            dest: None,
            rejected: BTreeSet::new(),
            possible_duplicate: false,
            remove_failed: false,
            hash: g.hash,
            steps: 0,
        },
        (_, None) => return None,
        (_, Some(m)) => m.clone(),
    };
    match g.kind {
        0 if m.state == State::Read => {
            if m.hash != g.hash {
                m.rejected.clear();
            }
            m.hash = g.hash;
        }
        1 if m.state == State::Read => {
            m.state = State::Sent;
            m.dest = Some(d.clone());
            m.possible_duplicate |= g.flag;
        }
        2 if sent_to_d(&m) => m.state = State::Read,
        3 if sent_to_d(&m) => {
            m.state = State::Read;
            if g.flag {
                m.rejected.insert(d);
            }
        }
        4 if sent_to_d(&m) => {
            m.state = State::Read;
            m.possible_duplicate = true;
        }
        5 if sent_to_d(&m) => m.state = State::Acked,
        6 if m.state == State::Acked => {
            m.state = State::Deleted;
            m.remove_failed = false;
        }
        7 if m.state == State::Acked => m.remove_failed = true,
        // Parked: still sent to the same destination, pinned to another instance.
        8 if sent_to_d(&m) => {}
        _ => return None,
    }
    m.steps += 1;
    Some(m)
}

/// The record, as the model sees it.
fn observe(r: &MessageRecord) -> Model {
    let rejected: BTreeSet<String> = r.rejected_by.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(rejected.len(), r.rejected_by.len(), "no destination twice");
    Model {
        state: r.state,
        dest: r.dest.clone(),
        rejected,
        possible_duplicate: r.possible_duplicate,
        remove_failed: r.remove_failed.is_some(),
        hash: r.hash.0[0],
        steps: r.history.len(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn apply_to_follows_the_documented_model(ops in prop::collection::vec(gen_op(), 0..80)) {
        let mut model: HashMap<u64, Model> = HashMap::new();
        let mut real: HashMap<u64, MessageRecord> = HashMap::new();
        for g in &ops {
            let want = step(model.get(&g.msg), g);
            let got = g.op().apply_to(real.get(&g.msg).cloned());
            match (want, got) {
                (Some(m), Ok(r)) => {
                    prop_assert_eq!(&observe(&r), &m, "after {:?}", g);
                    model.insert(g.msg, m);
                    real.insert(g.msg, r);
                }
                (None, Err(_)) => {}
                (want, got) => prop_assert!(false, "{:?}: model {:?}, code {:?}", g, want, got),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// The same against a real journal: each op is its own commit; a refused one changes
    /// nothing, and the stored records match the model at the end.
    #[test]
    fn a_real_journal_follows_the_documented_model(ops in prop::collection::vec(gen_op(), 0..40)) {
        let dir = Dir::new("model");
        let j = Journal::open(&dir.0).unwrap();
        let rt = rt();
        let mut model: HashMap<u64, Model> = HashMap::new();
        for g in &ops {
            let want = step(model.get(&g.msg), g);
            let got = rt.block_on(j.commit(vec![g.op()]));
            prop_assert_eq!(want.is_some(), got.is_ok(), "{:?}: {:?}", g, got);
            if let Some(m) = want {
                model.insert(g.msg, m);
            }
        }
        for n in 0..MESSAGES {
            let stored = j.message(1, id(n)).unwrap();
            prop_assert_eq!(stored.as_ref().map(observe), model.get(&n).cloned());
        }
        j.close();
    }
}
