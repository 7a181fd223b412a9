//! The "every op in every state" table of `journal-format.md` section 3, read from the
//! document itself and checked cell by cell against `Op::apply_to`: the document and the code
//! cannot drift apart.

use super::{id, read_op};
use crate::journal::{MessageRecord, Op, OpKind, Refused, State};

const DOC: &str = include_str!("../../../journal-format.md");
const D: &str = "10.0.0.2:443";
const OTHER: &str = "10.0.0.3:443";

/// The current states the table's columns name.
const COLUMNS: [&str; 6] = ["none", "read", "sent(d)", "sent(other)", "acked", "deleted"];

/// The table: (op name, [(column, cell)]).
fn table() -> Vec<(String, Vec<(String, String)>)> {
    let mut lines = DOC
        .lines()
        .skip_while(|l| !l.starts_with("| op \\ state |"));
    let header = cells(
        lines
            .next()
            .expect("the state table is in journal-format.md"),
    );
    assert_eq!(&header[1..], COLUMNS, "the table's columns");
    let rows: Vec<_> = lines
        .skip(1) // the separator row
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let c = cells(l);
            let row = header[1..].iter().cloned().zip(c[1..].iter().cloned());
            (c[0].trim_matches('`').to_string(), row.collect())
        })
        .collect();
    rows
}

fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_string())
        .collect()
}

/// The op `kind` for message 1 of run 1, with destination `D`.
fn op(kind: &str) -> Op {
    let (run, id) = (1, id(1));
    let dest = D.to_string();
    match kind {
        "Read" => read_op(1, 1, 7),
        "Sent" => Op::Sent {
            run,
            id,
            dest,
            possible_duplicate: false,
            instance: None,
        },
        "NotDelivered" => Op::NotDelivered {
            run,
            id,
            dest,
            reason: "connection refused".into(),
        },
        "Rejected" => Op::Rejected {
            run,
            id,
            dest,
            reason: "too large".into(),
            permanent: true,
        },
        "Reassigned" => Op::Reassigned {
            run,
            id,
            from: dest,
            reason: "unreachable".into(),
        },
        "Acked" => Op::Acked {
            run,
            id,
            dest,
            note: "stored".into(),
            instance: None,
        },
        "Deleted" => Op::Deleted { run, id },
        "Parked" => Op::Parked {
            run,
            id,
            dest,
            instance: "0123456789abcdef0123456789abcdef".into(),
        },
        "RemoveFailed" => Op::RemoveFailed {
            run,
            id,
            reason: "permission denied".into(),
        },
        other => panic!("the table names an unknown op {other:?}"),
    }
}

fn apply(ops: &[Op]) -> Option<MessageRecord> {
    let mut rec = None;
    for op in ops {
        rec = Some(op.apply_to(rec).expect("setting up the state"));
    }
    rec
}

/// A record in the state a column names (the `sent`/`acked` destination is `D` unless the
/// column says `other`).
fn record_in(column: &str) -> Option<MessageRecord> {
    let sent = |dest: &str| Op::Sent {
        run: 1,
        id: id(1),
        dest: dest.into(),
        possible_duplicate: false,
        instance: None,
    };
    let acked = Op::Acked {
        run: 1,
        id: id(1),
        dest: D.into(),
        note: "stored".into(),
        instance: None,
    };
    let read = read_op(1, 1, 7);
    match column {
        "none" => None,
        "read" => apply(&[read]),
        "sent(d)" => apply(&[read, sent(D)]),
        "sent(other)" => apply(&[read, sent(OTHER)]),
        "acked" => apply(&[read, sent(D), acked]),
        "deleted" => apply(&[read, sent(D), acked, Op::Deleted { run: 1, id: id(1) }]),
        other => panic!("unknown column {other:?}"),
    }
}

fn expected(cell: &str) -> Option<State> {
    match cell {
        "refused" => None,
        "`read`" => Some(State::Read),
        "`sent`" => Some(State::Sent),
        "`acked`" => Some(State::Acked),
        "`deleted`" => Some(State::Deleted),
        other => panic!("unknown cell {other:?}"),
    }
}

#[test]
fn every_cell_of_the_documented_state_table_holds() {
    let table = table();
    let names: Vec<&str> = table.iter().map(|(op, _)| op.as_str()).collect();
    let all: Vec<&str> = OpKind::MESSAGE_OPS.iter().map(|k| k.as_str()).collect();
    assert_eq!(names, all, "one row per message op, in this order");
    let mut checked = 0;
    for (name, row) in &table {
        assert_eq!(row.len(), COLUMNS.len(), "row {name} has a cell per state");
        for (column, cell) in row {
            let before = record_in(column);
            let had = before.as_ref().map(|r| r.history.len()).unwrap_or(0);
            let got = op(name).apply_to(before.clone());
            match (expected(cell), got) {
                (Some(state), Ok(rec)) => {
                    assert_eq!(rec.state, state, "{name} in {column}");
                    assert_eq!(rec.history.len(), had + 1, "{name} in {column}: one step");
                    assert_eq!(rec.history.last().map(|t| t.state), Some(state));
                }
                (None, Err(refused)) => check_refusal(name, column, &refused),
                (want, got) => panic!("{name} in {column}: table says {want:?}, code {got:?}"),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, OpKind::MESSAGE_OPS.len() * COLUMNS.len());
}

/// A refusal names the op, and the cause the state implies.
fn check_refusal(name: &str, column: &str, refused: &Refused) {
    let kind = op(name).kind();
    match refused {
        Refused::NoRecord { op } => assert_eq!((*op, column), (kind, "none")),
        Refused::State { op, state } => {
            assert_eq!(*op, kind);
            assert!(column.starts_with(state.as_str()), "{name} in {column}");
        }
        Refused::Destination { op, dest, .. } => assert_eq!((*op, dest.as_str()), (kind, D)),
        Refused::NotAMessageOp { .. } => panic!("{name} is a message op"),
    }
}

#[test]
fn side_effects_of_the_transitions() {
    let sent = apply(&[
        read_op(1, 1, 7),
        Op::Sent {
            run: 1,
            id: id(1),
            dest: D.into(),
            possible_duplicate: false,
            instance: None,
        },
    ]);
    let rejected = Op::Rejected {
        run: 1,
        id: id(1),
        dest: D.into(),
        reason: "too large".into(),
        permanent: true,
    }
    .apply_to(sent.clone())
    .unwrap();
    assert_eq!(
        rejected.rejected_by,
        vec![(D.to_string(), "too large".into())]
    );
    assert_eq!(
        rejected.dest.as_deref(),
        Some(D),
        "the recorded dest is kept"
    );
    let same_hash = read_op(1, 1, 7).apply_to(Some(rejected.clone())).unwrap();
    assert_eq!(same_hash.rejected_by.len(), 1, "same hash: still excluded");
    let new_hash = read_op(1, 1, 8).apply_to(Some(rejected)).unwrap();
    assert!(
        new_hash.rejected_by.is_empty(),
        "a new hash forgets rejections"
    );
    let reassigned = Op::Reassigned {
        run: 1,
        id: id(1),
        from: D.into(),
        reason: "unreachable".into(),
    }
    .apply_to(sent)
    .unwrap();
    assert!(reassigned.possible_duplicate);
    assert_eq!(
        reassigned.history.last().unwrap().note.as_deref(),
        Some("reassigned, possible duplicate: unreachable")
    );
    let failed = Op::RemoveFailed {
        run: 1,
        id: id(1),
        reason: "EACCES".into(),
    }
    .apply_to(record_in("acked"))
    .unwrap();
    assert_eq!(failed.remove_failed.as_deref(), Some("EACCES"));
    let deleted = Op::Deleted { run: 1, id: id(1) }
        .apply_to(Some(failed))
        .unwrap();
    assert_eq!(deleted.remove_failed, None, "Deleted clears remove_failed");
}

/// `Sent` records the instance it is addressed to (in the record and its history); a return to
/// `read` keeps it (stale, like `dest`); a later `Sent` without one clears it; a record written
/// before the field existed reads as "no instance".
#[test]
fn sent_records_its_target_instance() {
    let inst = "0123456789abcdef0123456789abcdef";
    let sent = |instance: Option<&str>| Op::Sent {
        run: 1,
        id: id(1),
        dest: D.into(),
        possible_duplicate: false,
        instance: instance.map(String::from),
    };
    let r = apply(&[read_op(1, 1, 7), sent(Some(inst))]);
    assert_eq!(r.as_ref().unwrap().instance.as_deref(), Some(inst));
    let last = r.as_ref().unwrap().history.last().unwrap().clone();
    assert_eq!(last.instance.as_deref(), Some(inst));
    let back = Op::NotDelivered {
        run: 1,
        id: id(1),
        dest: D.into(),
        reason: "421 misdirected".into(),
    }
    .apply_to(r)
    .unwrap();
    assert_eq!(
        (back.state, back.instance.as_deref()),
        (State::Read, Some(inst))
    );
    let again = sent(None).apply_to(Some(back)).unwrap();
    assert_eq!(again.instance, None);
    let mut json = serde_json::to_value(&again).unwrap();
    assert!(json.get("instance").is_none(), "omitted when none");
    json.as_object_mut().unwrap().remove("instance");
    let old: MessageRecord = serde_json::from_value(json).unwrap();
    assert_eq!(old.instance, None);
}

/// The instance that answered an `acked` is kept on the record (and its step), so that a
/// resumed run knows every instance behind a destination that holds messages of it; an
/// `acked` that names none leaves the instance the message was addressed to.
#[test]
fn acked_keeps_the_instance_that_answered() {
    let sent = Op::Sent {
        run: 1,
        id: id(1),
        dest: D.into(),
        possible_duplicate: false,
        instance: None,
    };
    let acked = |instance: Option<&str>| Op::Acked {
        run: 1,
        id: id(1),
        dest: D.into(),
        note: "stored".into(),
        instance: instance.map(String::from),
    };
    let by = apply(&[read_op(1, 1, 7), sent.clone(), acked(Some("b7"))]).unwrap();
    assert_eq!(by.instance.as_deref(), Some("b7"));
    assert_eq!(by.history.last().unwrap().instance.as_deref(), Some("b7"));
    let unnamed = apply(&[read_op(1, 1, 7), sent, acked(None)]).unwrap();
    assert_eq!(unnamed.instance, None);
}
