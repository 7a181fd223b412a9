//! Lost answers: a TLS-terminating proxy (`common::proxy`) in front of destination A forwards
//! every request to A and waits for A's whole answer; for transfer requests a seeded rule picks
//! (one in two) it drops that answer and cuts the connection instead. A stored those messages,
//! the sender never heard so. Round after round (300 messages each, to A through the proxy and
//! to B directly) until at least `DRAIN_FAULT_MIN` (default 20) answers for stored messages were
//! lost. The test asserts that they were (the proxy's record of A's answers), that the sender
//! settled each such message by asking A (its log) and left it there, and the census: every
//! message on exactly one destination, byte-identical, nothing left behind.
//!
//! Replay a failure with `DRAIN_FAULT_SEED=<seed printed on stderr>` (the seed fixes which
//! transfers, in arrival order, lose their answer; which messages a transfer carries still
//! depends on timing).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::proxy::{AnswerDropProxy, CutTransfer, Verdict};
use common::*;

/// Rounds of 300 messages at most, so a proxy that injects too few faults cannot loop forever.
/// About a third of a round's 75 transfers go to A and half of those are cut, so one round
/// normally suffices for 20 faults.
const MAX_ROUNDS: usize = 20;
/// One drain run may not take longer than this (each fault costs the sender about a second).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

fn fault_min() -> usize {
    std::env::var("DRAIN_FAULT_MIN")
        .map(|v| v.trim().parse().expect("DRAIN_FAULT_MIN is a number"))
        .unwrap_or(20)
}

/// Sum of N over the sender's "confirms it holds N of the in-doubt messages" lines: messages a
/// lost answer had in fact stored, as the sender learned by asking.
fn confirmed_held(stderr: &str) -> usize {
    stderr
        .lines()
        .filter_map(|l| l.split("confirms it holds ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<usize>().ok())
        .sum()
}

/// Transfers whose answer was lost although A stored messages of them.
fn stored_but_lost(proxy: &AnswerDropProxy) -> usize {
    proxy.cut().iter().filter(|c| !c.stored.is_empty()).count()
}

/// One drain of `src` to the proxy (A) and B; checks its own report: all `n` acknowledged
/// and removed, nothing in doubt. Returns the sender's standard error.
fn drain_round(src: &std::path::Path, args: &[&str], logs: &std::path::Path, n: u64) -> String {
    let ran = run_logged(src, args, logs, RUN_TIMEOUT);
    let (stdout, stderr) = (&ran.stdout, &ran.stderr);
    assert_eq!(ran.code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("report is not JSON ({e}):\n{stdout}"));
    let delivered: u64 = report["delivered"]
        .as_object()
        .expect("report.delivered")
        .values()
        .map(|c| c["messages"].as_u64().expect("delivered count"))
        .sum();
    assert_eq!(delivered, n, "{report}");
    assert_eq!(report["removed"], n, "{report}");
    assert_eq!(report["in_doubt"], 0, "{report}");
    let left = spool_ls(src);
    assert!(left.is_empty(), "exited 0 but left {} messages", left.len());
    ran.stderr
}

#[test]
fn lost_answers_lose_and_duplicate_nothing() {
    let rng = Rng::from_env("DRAIN_FAULT_SEED");
    let seed = rng.0;
    let min_faults = fault_min();
    let started = Instant::now();

    let tmp = TempDir::new("fault");
    let (a, b, proxy) = start_destinations(&tmp, rng);
    let src = tmp.sub("src");
    let args = drain_args(&tmp, &a, &b, &proxy);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let done = drain_until_enough_faults(&tmp, &src, &args, &proxy, seed, min_faults);
    let (rounds, originals) = (done.rounds, &done.originals);

    // Some answers were really lost after A stored their messages: the scenario happened.
    let cut = proxy.cut();
    let faults = stored_but_lost(&proxy);
    let ctx = format!("(seed {seed})\n{}", proxy.describe());
    assert!(
        faults >= min_faults,
        "only {faults} answers for stored messages lost in {rounds} rounds, {min_faults} \
         wanted {ctx}"
    );
    let (lost, on_a) = check_lost_answers_settled_by_asking(&proxy, &a, &cut, done.confirmed, &ctx);

    // Census: each original on exactly one destination, with its hash and queue.
    assert_census(&[&a, &b], &src, originals);
    assert!(on_a.len() < originals.len(), "B received nothing {ctx}");
    eprintln!(
        "fault proxy: seed {seed}: {rounds} rounds, {} messages ({} on A, {} on B), {} \
         connections, {} transfers to A, {} answers cut ({faults} for stored messages), {} \
         messages stored by A under a lost answer, {:.1?}",
        originals.len(),
        on_a.len(),
        originals.len() - on_a.len(),
        proxy.connections(),
        proxy.transfers(),
        cut.len(),
        lost.len(),
        started.elapsed()
    );
}

/// A (also reachable as 127.0.0.8, behind the proxy), B, and the proxy that cuts one transfer
/// answer in two, as `rng` decides.
fn start_destinations(tmp: &TempDir, mut rng: Rng) -> (Server, Server, AnswerDropProxy) {
    let a = Server::start_with_names(
        tmp,
        "a",
        ServeConfig::on("127.0.0.2"),
        &["127.0.0.2", "127.0.0.8"],
    );
    let b = Server::start(tmp, "b", ServeConfig::on("127.0.0.3"));
    let proxy = AnswerDropProxy::start("127.0.0.8", &a, move |_| {
        if rng.below(2) == 0 {
            Verdict::Cut
        } else {
            Verdict::Forward
        }
    });
    (a, b, proxy)
}

/// The drain's arguments: many small transfers to the proxy (A) and B.
fn drain_args(tmp: &TempDir, a: &Server, b: &Server, proxy: &AnswerDropProxy) -> Vec<String> {
    let ca = ca_bundle(tmp, &[a, b]).display().to_string();
    let (proxy_dest, b_dest) = (proxy.dest(), b.dest());
    [
        "--ca-cert",
        &ca,
        "--concurrency",
        "16",
        "--batch-size",
        "4",
        "--json",
        &proxy_dest,
        &b_dest,
    ]
    .map(String::from)
    .to_vec()
}

/// What the rounds did: every message filled, how many rounds, and how many messages the
/// sender confirmed held by A after a lost answer.
struct Rounds {
    originals: BTreeMap<String, (String, String)>,
    rounds: usize,
    confirmed: usize,
}

/// Fills and drains rounds of 300 messages until enough answers for stored messages were
/// lost (or `MAX_ROUNDS`).
fn drain_until_enough_faults(
    tmp: &TempDir,
    src: &std::path::Path,
    args: &[&str],
    proxy: &AnswerDropProxy,
    seed: u64,
    min_faults: usize,
) -> Rounds {
    let mut originals: BTreeMap<String, (String, String)> = BTreeMap::new();
    let (mut rounds, mut confirmed) = (0, 0);
    while stored_but_lost(proxy) < min_faults && rounds < MAX_ROUNDS {
        rounds += 1;
        let batch = fill(src, 300);
        assert_eq!(batch.len(), 300);
        for (id, v) in batch {
            assert!(originals.insert(id, v).is_none(), "fill repeated an id");
        }
        let (cut_before, t) = (proxy.cut().len(), Instant::now());
        let logs = tmp.path().join(format!("round{rounds}"));
        let stderr = drain_round(src, args, &logs, 300);
        let held = confirmed_held(&stderr);
        confirmed += held;
        eprintln!(
            "round {rounds} (seed {seed}): {} answers cut, {held} messages confirmed held by A \
             after a lost answer, {:.1?}",
            proxy.cut().len() - cut_before,
            t.elapsed()
        );
    }
    Rounds {
        originals,
        rounds,
        confirmed,
    }
}

/// A answered every cut transfer, having stored all of it; the sender learned by asking A
/// what those transfers stored, and left it there. Returns the messages stored under a lost
/// answer and the ids on A.
fn check_lost_answers_settled_by_asking(
    proxy: &AnswerDropProxy,
    a: &Server,
    cut: &[CutTransfer],
    confirmed: usize,
    ctx: &str,
) -> (BTreeSet<String>, BTreeSet<String>) {
    for c in cut {
        assert_eq!(c.status, 200, "A's answer to a cut transfer {ctx}");
        assert_eq!(c.stored.len(), c.results, "A stored all it got {ctx}");
    }
    // The sender learned by asking A what those transfers stored, and left it there.
    let lost: BTreeSet<String> = proxy.stored_but_unanswered();
    assert_eq!(
        confirmed,
        lost.len(),
        "messages the sender confirmed held by A vs stored under a lost answer {ctx}"
    );
    let on_a = ids(&a.ls());
    let not_on_a: Vec<_> = lost.difference(&on_a).collect();
    assert!(
        not_on_a.is_empty(),
        "stored by A, then moved: {not_on_a:?} {ctx}"
    );
    (lost, on_a)
}
