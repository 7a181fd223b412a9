//! `--reassign-after`: messages pinned to a destination that stays unreachable after an
//! ambiguous request are released to another destination once the duration has passed, and each
//! one is flagged `possible_duplicate` in the journal. Without the flag they stay pinned (never
//! sent elsewhere) until the drain is stopped.
//!
//! Destination A sits behind a TLS-terminating proxy (`common::proxy`, with A's certificate,
//! valid for the proxy's address too) that forwards each request to A and, for the first
//! transfer request, reads A's whole answer (so A has stored the messages durably) and then,
//! instead of returning it, goes dark: it cuts the connection and refuses every later one. A
//! looks dead, but it holds every message of that request. Terminating TLS (rather than guessing
//! from encrypted byte counts) makes the scenario exact: the proxy knows which request is a
//! transfer and which ids A stored. The journal is read through `drain inspect --json`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use common::proxy::{AnswerDropProxy, CutTransfer, Verdict};
use common::*;

/// One drain run may not take longer than this.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// A (behind the proxy) and B, on loopback addresses `base`, `base+1` (A), `base+2` (B).
struct Setup {
    tmp: TempDir,
    a: Server,
    b: Server,
    proxy: AnswerDropProxy,
    ca: PathBuf,
    src: PathBuf,
    originals: BTreeMap<String, (String, String)>,
}

impl Setup {
    fn new(tag: &str, base: u8, messages: usize) -> Setup {
        let tmp = TempDir::new(tag);
        let proxy_ip = format!("127.0.0.{base}");
        let a_ip = format!("127.0.0.{}", base + 1);
        let b_ip = format!("127.0.0.{}", base + 2);
        let a = Server::start_with_names(&tmp, "a", ServeConfig::on(&a_ip), &[&a_ip, &proxy_ip]);
        let b = Server::start(&tmp, "b", ServeConfig::on(&b_ip));
        let proxy = AnswerDropProxy::start(&proxy_ip, &a, |_| Verdict::CutAndGoDark);
        let ca = ca_bundle(&tmp, &[&a, &b]);
        let src = tmp.sub("src");
        let originals = fill(&src, messages);
        assert_eq!(originals.len(), messages);
        Setup {
            tmp,
            a,
            b,
            proxy,
            ca,
            src,
            originals,
        }
    }

    fn proxy_dest(&self) -> String {
        self.proxy.addr.to_string()
    }

    /// `drain` started in the background, stdout and stderr to files.
    fn spawn_drain(&self, extra: &[&str], name: &str) -> (Child, PathBuf, PathBuf) {
        let out = self.tmp.path().join(format!("{name}.out"));
        let err = self.tmp.path().join(format!("{name}.err"));
        let ca = self.ca.display().to_string();
        let (proxy, b) = (self.proxy_dest(), self.b.dest());
        let mut args = vec!["--ca-cert", &ca, "--concurrency", "2", "--batch-size", "20"];
        args.push("--json");
        args.extend_from_slice(extra);
        // A first: the round robin starts there, so the first request carries the batch.
        args.extend([proxy.as_str(), b.as_str()]);
        let child = spawn_logged(&self.src, &args, &out, &err);
        (child, out, err)
    }

    fn context(&self, stderr: &str) -> String {
        format!(
            "\ndrain stderr:\n{stderr}\nA log:\n{}\nB log:\n{}\n{}",
            self.a.log(),
            self.b.log(),
            self.proxy.describe()
        )
    }
}

/// The journaled messages among the originals, by id (through `drain inspect`), and the
/// summary of the source's last run.
fn journal_of(
    src: &std::path::Path,
    originals: &BTreeMap<String, (String, String)>,
) -> (serde_json::Value, BTreeMap<String, MessageInRun>) {
    let summary = inspect_json(src, &[]);
    let recs = originals
        .keys()
        .filter_map(|id| Some((id.clone(), message_history(src, id)?)))
        .collect();
    (summary, recs)
}

#[test]
fn reassign_after_releases_pinned_messages_flagged_as_possible_duplicates() {
    let started = Instant::now();
    let s = Setup::new("reassign", 60, 20);
    let (stdout, stderr, ctx) = drain_with_reassign_after(&s);
    let cut = check_one_transfer_answer_cut(&s, &stderr, &ctx);
    check_report_everything_on_b(&s, &stdout, &ctx);
    let (a_ids, b_ids) = check_census_every_message_on_b(&s, &cut, &ctx);
    let flagged = check_journal_flags_the_duplicates(&s, &a_ids, &b_ids);
    check_report_lists_the_duplicates(&s, &stdout, &flagged);
    let all = s.originals.len();
    eprintln!(
        "reassign: {} messages, {} stored by A and reassigned to B (flagged), {} straight to B, \
         {:.1?}",
        all,
        flagged.len(),
        all - flagged.len(),
        started.elapsed()
    );
}

/// Runs the drain with `--reassign-after 2s` to its end; returns its stdout, its stderr and
/// the context for failure messages.
fn drain_with_reassign_after(s: &Setup) -> (String, String, String) {
    let (mut child, out, err) = s.spawn_drain(&["--reassign-after", "2s"], "drain");
    let code = wait_exit(&mut child, RUN_TIMEOUT, &err);
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let ctx = s.context(&stderr);
    assert_eq!(code, 0, "drain exit\nstdout:\n{stdout}{ctx}");
    (stdout, stderr, ctx)
}

/// The proxy swallowed exactly one transfer answer, after A stored all of it.
fn check_one_transfer_answer_cut(s: &Setup, stderr: &str, ctx: &str) -> CutTransfer {
    let mut cut = s.proxy.cut();
    assert_eq!(cut.len(), 1, "transfers cut{ctx}");
    let cut = cut.remove(0);
    assert_eq!(cut.status, 200, "A's answer to the cut transfer{ctx}");
    assert!(cut.results > 0, "A's answer lists no message{ctx}");
    assert_eq!(
        cut.stored.len(),
        cut.results,
        "A stored every message it got{ctx}"
    );
    assert!(
        stderr.contains("ended ambiguously"),
        "the cut was not seen as ambiguous{ctx}"
    );
    assert!(
        stderr.contains("stayed unreachable past --reassign-after"),
        "no reassignment logged{ctx}"
    );
    cut
}

/// The report: everything delivered to B, nothing in doubt.
fn check_report_everything_on_b(s: &Setup, stdout: &str, ctx: &str) {
    let (proxy_dest, b_dest) = (s.proxy_dest(), s.b.dest());
    let report: serde_json::Value = serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("report is not JSON ({e}):\n{stdout}{ctx}"));
    assert_eq!(report["in_doubt"], 0, "{report}");
    assert_eq!(report["removed"], 20, "{report}");
    assert_eq!(
        report["delivered"][&b_dest]["messages"], 20,
        "every message acknowledged by B: {report}"
    );
    assert!(
        report["delivered"].get(&proxy_dest).is_none(),
        "nothing can be acknowledged by the proxy: {report}"
    );
}

/// The final report lists every flagged message (not only the log), naming where from.
fn check_report_lists_the_duplicates(s: &Setup, stdout: &str, flagged: &BTreeSet<String>) {
    let report: serde_json::Value = serde_json::from_str(stdout).unwrap();
    let listed = report["possible_duplicates"].as_array().unwrap();
    let ids: BTreeSet<String> = listed
        .iter()
        .map(|p| p["what"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(&ids, flagged, "{report}");
    assert_eq!(listed.len(), flagged.len(), "each listed once: {report}");
    let from = format!(
        "reassigned away from {}, unreachable past --reassign-after (",
        s.proxy_dest()
    );
    for p in listed {
        let reason = p["reason"].as_str().unwrap();
        assert!(
            reason.starts_with(&from) && reason.ends_with("); it may hold it too"),
            "{reason}"
        );
    }
}

/// Census: every message on B; the ones A stored are on A too; the source is empty. Returns
/// the ids on A and on B.
fn check_census_every_message_on_b(
    s: &Setup,
    cut: &CutTransfer,
    ctx: &str,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let on_a = s.a.ls();
    let on_b = s.b.ls();
    let left = spool_ls(&s.src);
    check_copies("A", &on_a, &s.originals);
    check_copies("B", &on_b, &s.originals);
    let (a_ids, b_ids) = (ids(&on_a), ids(&on_b));
    let all: BTreeSet<String> = s.originals.keys().cloned().collect();
    assert!(
        left.is_empty(),
        "the source spool still holds {left:?}{ctx}"
    );
    assert_eq!(b_ids, all, "B must hold every message{ctx}");
    assert_eq!(
        a_ids, cut.stored,
        "A holds exactly what it answered stored{ctx}"
    );
    assert!(
        !a_ids.is_empty(),
        "A stored nothing: no duplicate was provoked{ctx}"
    );
    let missing: Vec<_> = all
        .iter()
        .filter(|id| !a_ids.contains(*id) && !b_ids.contains(*id) && !ids(&left).contains(*id))
        .collect();
    assert!(missing.is_empty(), "lost messages: {missing:?}");
    (a_ids, b_ids)
}

/// The journal: finished, every message deleted after B's ack; the duplicates are flagged.
/// Returns the flagged ids.
fn check_journal_flags_the_duplicates(
    s: &Setup,
    a_ids: &BTreeSet<String>,
    b_ids: &BTreeSet<String>,
) -> BTreeSet<String> {
    let (proxy_dest, b_dest) = (s.proxy_dest(), s.b.dest());
    let all: BTreeSet<String> = s.originals.keys().cloned().collect();
    let (summary, recs) = journal_of(&s.src, &s.originals);
    let run = &summary["run"];
    assert_eq!(run["status"], "finished", "{run}");
    assert_eq!(run["exit_code"], 0, "{run}");
    assert_eq!(
        recs.keys().cloned().collect::<BTreeSet<_>>(),
        all,
        "journaled messages"
    );
    assert_eq!(last_run_count(&summary, "total"), all.len() as u64, "{run}");
    let flagged: BTreeSet<String> = recs
        .iter()
        .filter(|(_, r)| r.possible_duplicate)
        .map(|(id, _)| id.clone())
        .collect();
    let on_both: BTreeSet<String> = a_ids.intersection(b_ids).cloned().collect();
    let unflagged_dups: Vec<_> = on_both.difference(&flagged).collect();
    assert!(
        unflagged_dups.is_empty(),
        "on A and B but not flagged possible_duplicate: {unflagged_dups:?}"
    );
    assert_eq!(
        flagged, on_both,
        "flagged messages are exactly the ones the cut request carried (all stored by A)"
    );
    for (id, r) in &recs {
        assert_eq!(r.state, "deleted", "{id}: {r:?}");
        assert_eq!(r.dest.as_deref(), Some(b_dest.as_str()), "{id}: {r:?}");
        check_reassignment_history(id, r, &proxy_dest, &b_dest);
    }
    flagged
}

/// A flagged message was reassigned once, from the proxy, no sooner than 2 s after it was sent
/// there, then sent to B and acknowledged; an unflagged one was never reassigned.
fn check_reassignment_history(id: &str, r: &MessageInRun, proxy_dest: &str, b_dest: &str) {
    let reassigned: Vec<_> = r
        .history
        .iter()
        .enumerate()
        .filter(|(_, t)| t.event == "reassigned")
        .collect();
    if !r.possible_duplicate {
        assert!(
            reassigned.is_empty(),
            "{id}: reassigned but not flagged: {r:?}"
        );
        return;
    }
    assert_eq!(
        reassigned.len(),
        1,
        "{id}: one reassignment expected: {r:?}"
    );
    let (i, t) = reassigned[0];
    assert_eq!(t.dest.as_deref(), Some(proxy_dest), "{id}: {r:?}");
    // Before it: sent to the proxy (in doubt); it was released no sooner than 2 s later.
    let sent = r.history[..i]
        .iter()
        .rev()
        .find(|t| t.event == "sent")
        .unwrap_or_else(|| panic!("{id}: reassigned without a prior send: {r:?}"));
    assert_eq!(sent.dest.as_deref(), Some(proxy_dest), "{id}: {r:?}");
    assert!(
        t.time() - sent.time() >= time::Duration::seconds(2),
        "{id}: released {} after it was sent, before --reassign-after 2s: {r:?}",
        t.time() - sent.time()
    );
    // After it: sent to B and acknowledged there.
    let after: Vec<_> = r.history[i + 1..]
        .iter()
        .map(|t| (t.event.as_str(), t.dest.clone()))
        .collect();
    assert!(
        after.contains(&("sent", Some(b_dest.to_string())))
            && after.contains(&("acked", Some(b_dest.to_string()))),
        "{id}: not re-sent to B after the reassignment: {r:?}"
    );
}

#[test]
fn without_reassign_after_pinned_messages_wait_for_their_destination() {
    let started = Instant::now();
    let s = Setup::new("pinned", 63, 20);
    let (stderr, ctx) = drain_stopped_after_two_queries(&s);
    assert!(
        !stderr.contains("stayed unreachable past --reassign-after"),
        "reassigned without --reassign-after{ctx}"
    );
    let census = census_after_the_cut(&s, &ctx);
    let pinned = check_journal_keeps_them_pinned(&s, &census, &ctx);
    check_nothing_lost_nothing_on_two(&s, &census, &ctx);
    eprintln!(
        "pinned: {} messages in doubt with the dead proxy stayed in the source, B got {}, {:.1?}",
        pinned.len(),
        census.b_ids.len(),
        started.elapsed()
    );
}

/// Runs the drain without `--reassign-after` until it has asked A (through the dead proxy) at
/// least twice, then stops it with SIGTERM; returns its stderr and the context for failure
/// messages.
fn drain_stopped_after_two_queries(s: &Setup) -> (String, String) {
    let (mut child, out, err) = s.spawn_drain(&[], "drain");
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        if stderr.matches("cannot confirm").count() >= 2 {
            break;
        }
        if let Some(status) = child.try_wait().expect("wait drain") {
            panic!("drain exited early ({status}){}", s.context(&stderr));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("drain never retried the query{}", s.context(&stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&child, libc::SIGTERM);
    let code = wait_exit(&mut child, Duration::from_secs(60), &err);
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let ctx = s.context(&stderr);
    assert_eq!(code, 42, "exit after SIGTERM\nstdout:\n{stdout}{ctx}");
    (stderr, ctx)
}

/// The ids on A, on B and left in the source after the pinned run.
struct Census {
    a_ids: BTreeSet<String>,
    b_ids: BTreeSet<String>,
    src_ids: BTreeSet<String>,
}

/// One transfer was cut and A holds exactly what it stored; every copy is intact.
fn census_after_the_cut(s: &Setup, ctx: &str) -> Census {
    let cut = s.proxy.cut();
    assert_eq!(cut.len(), 1, "transfers cut{ctx}");
    assert!(!cut[0].stored.is_empty(), "A stored nothing{ctx}");

    let on_a = s.a.ls();
    let on_b = s.b.ls();
    let left = spool_ls(&s.src);
    check_copies("A", &on_a, &s.originals);
    check_copies("B", &on_b, &s.originals);
    check_copies("source", &left, &s.originals);
    let (a_ids, b_ids, src_ids) = (ids(&on_a), ids(&on_b), ids(&left));
    assert_eq!(
        a_ids, cut[0].stored,
        "A holds exactly what it answered stored{ctx}"
    );
    Census {
        a_ids,
        b_ids,
        src_ids,
    }
}

/// The journal: interrupted; in doubt exactly what the cut request carried, each still pinned
/// to the proxy, unflagged, never offered to B and still in the source. Returns the pinned ids.
fn check_journal_keeps_them_pinned(s: &Setup, c: &Census, ctx: &str) -> BTreeSet<String> {
    let proxy_dest = s.proxy_dest();
    let (summary, recs) = journal_of(&s.src, &s.originals);
    let run = &summary["run"];
    assert_eq!(run["status"], "interrupted", "{run}");
    assert_eq!(run["exit_code"], 42, "{run}");
    let pinned: BTreeSet<String> = recs
        .iter()
        .filter(|(_, r)| r.state == "sent")
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(
        pinned, c.a_ids,
        "in doubt: exactly what the cut request carried{ctx}"
    );
    for id in &pinned {
        let r = &recs[id];
        assert_eq!(r.dest.as_deref(), Some(proxy_dest.as_str()), "{id}: {r:?}");
        assert!(
            !r.possible_duplicate,
            "{id} flagged without --reassign-after: {r:?}"
        );
        assert!(
            r.history
                .iter()
                .all(|t| t.dest.as_deref() != Some(s.b.dest().as_str())),
            "{id}: offered to B while pinned to A: {r:?}"
        );
        assert!(
            !c.b_ids.contains(id),
            "{id} is pinned to A but B holds it{ctx}"
        );
        assert!(
            c.src_ids.contains(id),
            "{id} is in doubt but gone from the source{ctx}"
        );
    }
    pinned
}

/// Nothing lost, nothing on two destinations.
fn check_nothing_lost_nothing_on_two(s: &Setup, c: &Census, ctx: &str) {
    for id in s.originals.keys() {
        assert!(
            c.src_ids.contains(id) || c.b_ids.contains(id),
            "{id} is neither in the source nor on B{ctx}"
        );
        assert!(
            !(c.a_ids.contains(id) && c.b_ids.contains(id)),
            "{id} on A and B{ctx}"
        );
    }
}
