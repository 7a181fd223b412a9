//! Unit tests of `drain inspect` on journals built through the journal's own API: a large
//! one (streamed, not loaded), a corrupt record, and a journal left unclean (read through the
//! in-memory overlay without changing a byte of the file).

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::*;
use crate::base::{MessageId, QueueKind, Timestamp};
use crate::journal::{Journal, Op, RunRecord, RunStatus};

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let id = MessageId::random().expect("random");
        let p = std::env::temp_dir().join(format!("drain-inspect-{tag}-{id}"));
        std::fs::create_dir_all(&p).expect("temp dir");
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const A: &str = "10.0.0.2:443";
const B: &str = "10.0.0.3:443";

fn run_record(seq: u64, status: RunStatus) -> RunRecord {
    RunRecord {
        seq,
        id: format!("{seq:032x}"),
        started_at: Timestamp::now(),
        ended_at: (status != RunStatus::Running).then(Timestamp::now),
        destinations: vec![A.into(), B.into()],
        options: serde_json::json!({}),
        status,
        exit_code: (status != RunStatus::Running).then_some(0),
        summary: None,
        resumed: 0,
        compacted: None,
    }
}

fn id(n: u64) -> MessageId {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    MessageId(b)
}

fn read(run: u64, n: u64) -> Op {
    Op::Read {
        run,
        id: id(n),
        queue: QueueKind::ALL[(n % 4) as usize],
        hash: format!("{n:064x}").parse().unwrap(),
        size: 1000 + n % 7,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

fn opts(dir: &Path, json: bool) -> InspectOptions {
    InspectOptions {
        data_dir: dir.to_path_buf(),
        json,
        run: None,
        message: None,
        limit: 20,
    }
}

fn json(dir: &Path, o: InspectOptions) -> serde_json::Value {
    let out = inspect(&InspectOptions {
        data_dir: dir.to_path_buf(),
        json: true,
        ..o
    })
    .expect("inspect");
    serde_json::from_str(&out).expect("one JSON document")
}

#[test]
fn a_large_journal_is_streamed_and_every_anomaly_counted() {
    const N: u64 = 200_000;
    let dir = Dir::new("large");
    let rt = rt();
    let j = Journal::open(&dir.0).expect("journal");
    rt.block_on(async {
        j.commit(vec![Op::PutRun(run_record(1, RunStatus::Running))])
            .await
            .unwrap();
        for chunk in (0..N).collect::<Vec<_>>().chunks(50_000) {
            j.commit(chunk.iter().map(|n| read(1, *n)).collect())
                .await
                .unwrap();
        }
        j.commit(anomaly_ops()).await.unwrap();
    });
    drop(j);

    let started = Instant::now();
    let v = json(&dir.0, opts(&dir.0, true));
    eprintln!("summarised {N} messages in {:?}", started.elapsed());
    assert_running_summary(&v, N);
    assert_finished_and_history(&dir.0, &rt, N);
}

fn assert_running_summary(v: &serde_json::Value, n: u64) {
    assert_eq!(v["schema"], 1);
    assert_eq!(v["exists"], true);
    assert_eq!(v["runs"].as_array().unwrap().len(), 1);
    let r = &v["run"];
    assert_eq!(r["status"], "running");
    assert_eq!(r["by_state"]["total"]["messages"], n);
    assert_eq!(r["by_state"]["deleted"]["messages"], 1000);
    assert_eq!(r["by_state"]["sent"]["messages"], 100);
    assert_eq!(r["by_state"]["acked"]["messages"], 10);
    assert_eq!(r["by_state"]["delivered"]["messages"], 1010);
    assert_eq!(r["by_destination"][A]["delivered"]["messages"], 500);
    assert_eq!(r["by_destination"][A]["sent"]["messages"], 100);
    assert_eq!(r["by_destination"][B]["delivered"]["messages"], 510);
    assert_eq!(r["by_queue"]["queue"]["total"]["messages"], n / 4);
    let a = &r["anomalies"];
    assert_eq!(a["in_doubt"]["count"], 100);
    assert_eq!(a["in_doubt"]["items"][0]["dest"], A);
    assert_eq!(a["acked_not_removed"]["count"], 10);
    assert_eq!(a["unreadable"]["items"][0]["path"], "/spool/queue/x");
    assert_eq!(
        a["not_delivered"]["count"], 0,
        "a running run has nothing undelivered yet"
    );
    let rej = a["rejections"].as_array().unwrap();
    assert_eq!(rej.len(), 2, "{rej:?}");
    assert!(
        rej.iter()
            .all(|g| g["messages"] == 20 && g["kind"] == "permanent")
    );
    assert_eq!(a["failovers"][0]["messages"], 30);
    assert_eq!(a["failovers"][0]["reason"], "connection refused");
}

fn assert_finished_and_history(dir: &Path, rt: &tokio::runtime::Runtime, n: u64) {
    // Finished: the messages still `read` are listed as not delivered, capped in text.
    rt.block_on(async {
        let j = Journal::open(dir).expect("journal");
        j.commit(vec![Op::PutRun(run_record(1, RunStatus::Finished))])
            .await
            .unwrap();
    });
    let v = json(dir, opts(dir, true));
    let nd = &v["run"]["anomalies"]["not_delivered"];
    let expected = n - 1000 - 100 - 10;
    assert_eq!(nd["count"], expected);
    assert_eq!(nd["items"].as_array().unwrap().len(), JSON_LIST_CAP);
    assert_eq!(nd["truncated"], expected - JSON_LIST_CAP as u64);
    let rejected = nd["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id(1140).to_string())
        .expect("a rejected message is listed");
    assert_eq!(rejected["rejected_by"].as_array().unwrap().len(), 2);
    let text = inspect(&opts(dir, false)).expect("text");
    assert!(
        text.contains(&format!("... and {} more", expected - 20)),
        "{text}"
    );
    assert!(text.contains("100 in doubt"), "{text}");

    // One message's history.
    let h = json(
        dir,
        InspectOptions {
            message: Some(id(1110)),
            ..opts(dir, true)
        },
    );
    let events: Vec<&str> = h["runs"][0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["read", "sent", "not_delivered"]);
    assert_eq!(h["runs"][0]["history"][2]["dest"], A);
}

/// The first 1,000 go through the whole machine to A or B; 100 more stay in doubt with A;
/// 10 are acked by B and fail removal; 30 fail over from A (not delivered), 20 are rejected
/// permanently by both.
fn sent(n: u64, dest: &str) -> Op {
    Op::Sent {
        run: 1,
        id: id(n),
        dest: dest.into(),
        possible_duplicate: false,
        instance: None,
    }
}

fn anomaly_ops() -> Vec<Op> {
    let mut ops = Vec::new();
    for n in 0..1000u64 {
        let dest = if n % 2 == 0 { A } else { B };
        ops.push(sent(n, dest));
        ops.push(Op::Acked {
            run: 1,
            id: id(n),
            dest: dest.into(),
            note: "stored".into(),
            instance: None,
        });
        ops.push(Op::Deleted { run: 1, id: id(n) });
    }
    for n in 1000..1100u64 {
        ops.push(sent(n, A));
    }
    for n in 1100..1110u64 {
        ops.push(sent(n, B));
        ops.push(Op::Acked {
            run: 1,
            id: id(n),
            dest: B.into(),
            note: "stored".into(),
            instance: None,
        });
        ops.push(Op::RemoveFailed {
            run: 1,
            id: id(n),
            reason: "read-only file system".into(),
        });
    }
    for n in 1110..1140u64 {
        ops.push(sent(n, A));
        ops.push(Op::NotDelivered {
            run: 1,
            id: id(n),
            dest: A.into(),
            reason: "connection refused".into(),
        });
    }
    for n in 1140..1160u64 {
        for dest in [A, B] {
            ops.push(sent(n, dest));
            ops.push(Op::Rejected {
                run: 1,
                id: id(n),
                dest: dest.into(),
                reason: "HTTP 403".into(),
                permanent: true,
            });
        }
    }
    ops.push(Op::Unreadable {
        run: 1,
        path: "/spool/queue/x".into(),
        kind: "corrupt".into(),
        reason: "bad magic".into(),
    });
    ops
}

#[test]
fn a_corrupt_record_is_listed_by_key_and_the_rest_still_counted() {
    let dir = Dir::new("corrupt");
    let rt = rt();
    let j = Journal::open(&dir.0).expect("journal");
    rt.block_on(async {
        j.commit(vec![
            Op::PutRun(run_record(1, RunStatus::Finished)),
            read(1, 1),
            read(1, 2),
        ])
        .await
        .unwrap();
    });
    j.put_raw_message(1, id(3), b"{not json");
    j.close();
    let v = json(&dir.0, opts(&dir.0, true));
    let a = &v["run"]["anomalies"];
    assert_eq!(v["run"]["by_state"]["total"]["messages"], 2);
    assert_eq!(a["corrupt_records"]["count"], 1);
    assert_eq!(
        a["corrupt_records"]["items"][0]["key"],
        format!("message {} of run 1", id(3))
    );
    let h = json(
        &dir.0,
        InspectOptions {
            message: Some(id(3)),
            ..opts(&dir.0, true)
        },
    );
    assert_eq!(h["corrupt_records"].as_array().unwrap().len(), 1);
}

#[test]
fn an_unclean_journal_is_read_in_memory_and_left_byte_identical() {
    let dir = Dir::new("unclean");
    let rt = rt();
    let j = Journal::open(&dir.0).expect("journal");
    rt.block_on(async {
        j.commit(vec![
            Op::PutRun(run_record(1, RunStatus::Running)),
            read(1, 1),
            Op::Sent {
                run: 1,
                id: id(1),
                dest: A.into(),
                possible_duplicate: false,
                instance: None,
            },
        ])
        .await
        .unwrap();
    });
    // A copy taken while the writer has it open is what a SIGKILL leaves: committed, unclean.
    let crashed = Dir::new("unclean-copy");
    let file = crashed.0.join("journal.redb");
    std::fs::copy(dir.0.join("journal.redb"), &file).unwrap();
    drop(j);
    let before = std::fs::read(&file).unwrap();
    let v = json(&crashed.0, opts(&crashed.0, true));
    assert_eq!(v["unclean"], true);
    assert_eq!(v["run"]["anomalies"]["in_doubt"]["items"][0]["dest"], A);
    assert_eq!(std::fs::read(&file).unwrap(), before, "not a byte changed");
    let names: Vec<_> = std::fs::read_dir(&crashed.0).unwrap().collect();
    assert_eq!(names.len(), 1, "nothing created next to it");
}

#[test]
fn no_journal_says_so_and_creates_nothing() {
    let dir = Dir::new("none");
    let text = inspect(&opts(&dir.0, false)).unwrap();
    assert!(
        text.contains("no drain has run on this data directory"),
        "{text}"
    );
    let v = json(&dir.0, opts(&dir.0, true));
    assert_eq!(v["exists"], false);
    assert!(v["run"].is_null());
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);
}

/// Not run by default: `DRAIN_INSPECT_BENCH_N=1000000 cargo test --release --lib
/// inspect::tests::bench -- --ignored --nocapture` builds a journal of N delivered messages and
/// times the summary, shared with a live writer and through the in-memory recovery.
/// `DRAIN_INSPECT_BENCH_KEEP=1` keeps it (to time the binary on it).
#[test]
#[ignore]
fn bench_summary_of_a_large_journal() {
    let n: u64 = std::env::var("DRAIN_INSPECT_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = Dir::new("bench");
    let rt = rt();
    let j = Journal::open(&dir.0).expect("journal");
    let started = Instant::now();
    rt.block_on(async {
        j.commit(vec![Op::PutRun(run_record(1, RunStatus::Running))])
            .await
            .unwrap();
        let all: Vec<u64> = (0..n).collect();
        for chunk in all.chunks(25_000) {
            let mut ops = Vec::with_capacity(chunk.len() * 4);
            for &k in chunk {
                let dest = if k % 2 == 0 { A } else { B };
                ops.push(read(1, k));
                ops.push(Op::Sent {
                    run: 1,
                    id: id(k),
                    dest: dest.into(),
                    possible_duplicate: false,
                    instance: None,
                });
                ops.push(Op::Acked {
                    run: 1,
                    id: id(k),
                    dest: dest.into(),
                    note: "stored".into(),
                    instance: None,
                });
                ops.push(Op::Deleted { run: 1, id: id(k) });
            }
            j.commit(ops).await.unwrap();
        }
    });
    let file = dir.0.join("journal.redb");
    let size = std::fs::metadata(&file).unwrap().len();
    eprintln!(
        "built {n} messages in {:?}, {} MiB",
        started.elapsed(),
        size >> 20
    );
    let t = Instant::now();
    let v = json(&dir.0, opts(&dir.0, true));
    eprintln!("summary beside a live writer: {:?}", t.elapsed());
    assert_eq!(v["run"]["by_state"]["deleted"]["messages"], n);
    let crashed = Dir::new("bench-copy");
    std::fs::copy(&file, crashed.0.join("journal.redb")).unwrap();
    drop(j);
    let t = Instant::now();
    let v = json(&crashed.0, opts(&crashed.0, true));
    eprintln!("summary through the in-memory recovery: {:?}", t.elapsed());
    assert_eq!(v["unclean"], true);
    assert_eq!(v["run"]["by_state"]["deleted"]["messages"], n);
    if std::env::var_os("DRAIN_INSPECT_BENCH_KEEP").is_some() {
        eprintln!("kept {}", crashed.0.display());
        std::mem::forget(crashed);
    }
}
