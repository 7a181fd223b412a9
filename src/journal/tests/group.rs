//! The journal's group commit: several requests in one group, one of them refused. Every
//! request of the group gets the same typed error naming the file, and nothing of the group is
//! committed. A gate request holds the writer thread inside the previous group while the
//! requests queue up, so they are sure to share one group.

use std::sync::Arc;
use std::sync::mpsc;

use redb::ReadableDatabase as _;

use super::{Dir, id, read_op, rt};
use crate::groupcommit::{CommitError, Committer};
use crate::journal::tables::Snapshot;
use crate::journal::{JournalError, Op, OpKind, Refused, State, file_path, open_db, writer};

enum Req {
    Gate(mpsc::Sender<()>, mpsc::Receiver<()>),
    Ops(Vec<Op>),
}

#[test]
fn a_refused_op_fails_every_request_of_its_group_and_commits_none() {
    let dir = Dir::new("group");
    let path = file_path(&dir.0);
    let db = Arc::new(open_db(&path).unwrap());
    let wpath = path.clone();
    let c: Committer<Req, JournalError> = Committer::spawn(
        "test-journal-writer",
        db.clone(),
        move |txn, reqs: &[Req]| {
            for r in reqs {
                match r {
                    Req::Gate(applying, go) => {
                        let _ = applying.send(());
                        let _ = go.recv();
                    }
                    Req::Ops(ops) => writer::apply_group(txn, &wpath, std::slice::from_ref(ops))?,
                }
            }
            Ok(())
        },
    )
    .unwrap();
    let (applying_tx, applying) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let gate = c.submit(Req::Gate(applying_tx, go_rx));
    applying.recv().unwrap();
    let group = [
        c.submit(Req::Ops(vec![read_op(1, 1, 1)])),
        c.submit(Req::Ops(vec![read_op(1, 2, 1)])),
        // Never read: refused.
        c.submit(Req::Ops(vec![Op::Deleted { run: 1, id: id(3) }])),
        c.submit(Req::Ops(vec![read_op(1, 4, 1)])),
    ];
    go.send(()).unwrap();
    rt().block_on(async {
        assert!(gate.await.is_ok());
        for r in group {
            match r.await {
                Err(CommitError::Apply(JournalError::Transition {
                    path: p,
                    run: 1,
                    id: i,
                    refused:
                        Refused::NoRecord {
                            op: OpKind::Deleted,
                        },
                })) => assert_eq!((p, i), (path.clone(), id(3))),
                other => panic!("expected the group's typed error, got {other:?}"),
            }
        }
    });
    c.close();
    let txn = db.begin_read().unwrap();
    let snap = Snapshot {
        txn: &txn,
        path: &path,
    };
    let ids = [id(1), id(2), id(3), id(4)];
    let recs = snap.messages(1, &ids).unwrap();
    assert!(
        recs.iter().all(Option::is_none),
        "none of the group is committed"
    );
}

#[test]
fn a_refused_commit_names_the_file_and_the_cause() {
    let dir = Dir::new("typed");
    let j = crate::journal::Journal::open(&dir.0).unwrap();
    let rt = rt();
    rt.block_on(j.commit(vec![read_op(1, 1, 1)])).unwrap();
    let err = rt
        .block_on(j.commit(vec![Op::Acked {
            run: 1,
            id: id(1),
            dest: "10.0.0.2:443".into(),
            note: "stored".into(),
            instance: None,
        }]))
        .unwrap_err();
    assert!(
        matches!(
            &err,
            JournalError::Transition {
                refused: Refused::Destination {
                    op: OpKind::Acked,
                    state: State::Read,
                    recorded: None,
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.path(), file_path(&dir.0));
    assert_eq!(
        err.to_string(),
        format!(
            "journal {}: invalid transition for message {} in run 1: Acked for 10.0.0.2:443 \
             while read (recorded destination: none)",
            file_path(&dir.0).display(),
            id(1)
        )
    );
    j.clone().close();
    let err = rt.block_on(j.commit(vec![read_op(1, 2, 1)])).unwrap_err();
    assert!(matches!(err, JournalError::Stopped { .. }), "{err:?}");
}
