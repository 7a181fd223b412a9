//! The read-only reader as `drain serve`'s start-up check uses it: `last_run_status` on a
//! missing, healthy, unclean, corrupt and foreign-version journal, never writing a byte.

use super::{Dir, rt};
use crate::base::Timestamp;
use crate::journal::tables::META;
use crate::journal::{
    Journal, JournalError, OpenMode, Reader, RunRecord, RunStatus, file_path, last_run_status,
    open_db,
};

fn run(seq: u64, status: RunStatus) -> RunRecord {
    RunRecord {
        seq,
        id: format!("{seq:032x}"),
        started_at: Timestamp::now(),
        ended_at: None,
        destinations: vec!["10.0.0.2:443".into()],
        options: serde_json::json!({}),
        status,
        exit_code: None,
        summary: None,
        resumed: 0,
        compacted: None,
    }
}

#[test]
fn no_journal_is_no_run_and_nothing_is_created() {
    let dir = Dir::new("reader-none");
    assert_eq!(last_run_status(&dir.0).unwrap(), None);
    std::fs::write(file_path(&dir.0), b"").unwrap();
    assert_eq!(last_run_status(&dir.0).unwrap(), None, "an empty file");
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1);
}

#[test]
fn the_last_run_is_read_beside_a_live_writer_and_from_an_unclean_copy() {
    let dir = Dir::new("reader-live");
    let j = Journal::open(&dir.0).unwrap();
    let rt = rt();
    rt.block_on(j.commit(vec![
        crate::journal::Op::PutRun(run(1, RunStatus::Finished)),
        crate::journal::Op::PutRun(run(2, RunStatus::Running)),
    ]))
    .unwrap();
    let last = last_run_status(&dir.0).unwrap().unwrap();
    assert_eq!((last.seq, last.status), (2, RunStatus::Running));
    // A copy taken while the writer has it open is what a SIGKILL leaves.
    let crashed = Dir::new("reader-unclean");
    std::fs::copy(file_path(&dir.0), file_path(&crashed.0)).unwrap();
    j.close();
    let before = std::fs::read(file_path(&crashed.0)).unwrap();
    assert_eq!(
        Reader::open(&crashed.0).unwrap().mode(),
        OpenMode::Recovered
    );
    let last = last_run_status(&crashed.0).unwrap().unwrap();
    assert_eq!((last.seq, last.status), (2, RunStatus::Running));
    assert_eq!(std::fs::read(file_path(&crashed.0)).unwrap(), before);
}

#[test]
fn a_corrupt_file_is_reported_as_corrupt_naming_it() {
    let dir = Dir::new("reader-corrupt");
    let path = file_path(&dir.0);
    for garbage in [vec![0x5au8; 8192], b"redb".to_vec()] {
        std::fs::write(&path, &garbage).unwrap();
        let err = last_run_status(&dir.0).unwrap_err();
        assert!(
            matches!(&err, JournalError::CorruptFile { path: p, .. } if *p == path),
            "{err:?}"
        );
        assert!(err.to_string().contains(&path.display().to_string()));
        assert_eq!(std::fs::read(&path).unwrap(), garbage, "not a byte changed");
    }
}

#[test]
fn another_format_version_is_refused_by_reader_and_writer() {
    let dir = Dir::new("reader-version");
    let path = file_path(&dir.0);
    {
        let db = open_db(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("format", "2").unwrap();
        txn.commit().unwrap();
    }
    for err in [
        last_run_status(&dir.0).unwrap_err(),
        Journal::open(&dir.0).err().unwrap(),
    ] {
        assert!(
            matches!(&err, JournalError::Version { found, .. } if found == "2"),
            "{err:?}"
        );
    }
}

/// `Compact` drops exactly the finished run's message and unreadable records, keeps its run
/// record with the detail, and is refused (nothing written) for a run that is not finished.
#[test]
fn compact_drops_one_finished_runs_records_only() {
    use crate::journal::Op;
    let dir = Dir::new("compact");
    let j = Journal::open(&dir.0).unwrap();
    let rt = rt();
    let mut ops = vec![
        Op::PutRun(run(1, RunStatus::Finished)),
        Op::PutRun(run(2, RunStatus::Running)),
    ];
    for seq in [1, 2] {
        for n in 0..3 {
            ops.push(super::read_op(seq, n, 7));
        }
        ops.push(Op::Unreadable {
            run: seq,
            path: format!("/spool/bad-{seq}"),
            kind: "corrupt".into(),
            reason: "bad".into(),
        });
    }
    rt.block_on(j.commit(ops)).unwrap();
    let detail = serde_json::json!({"kept": true});
    let refused = rt.block_on(j.commit(vec![Op::Compact {
        seq: 2,
        detail: detail.clone(),
    }]));
    assert!(
        matches!(refused, Err(JournalError::NotCompactable { seq: 2, .. })),
        "{refused:?}"
    );
    rt.block_on(j.commit(vec![Op::Compact {
        seq: 1,
        detail: detail.clone(),
    }]))
    .unwrap();
    let count = |seq| {
        let mut n = 0;
        j.for_each_message(seq, |_, _| {
            n += 1;
            Ok(())
        })
        .unwrap();
        n
    };
    assert_eq!((count(1), count(2)), (0, 3));
    assert!(j.unreadable(1).unwrap().is_empty());
    assert_eq!(j.unreadable(2).unwrap().len(), 1);
    let runs = j.runs().unwrap();
    assert_eq!(runs[0].compacted.as_ref().map(|c| &c.detail), Some(&detail));
    assert!(runs[1].compacted.is_none());
    j.close();
}
