//! A lost journal after an interruption (issue 9, point 10). The journal is what knows which
//! messages may already be on a destination; without it a new drain would send them again,
//! maybe elsewhere. The run's marker survives the loss: drains and serves refuse until
//! `drain recover` has asked the run's destinations about every message still in the spool.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Polls `f` until it is true (at most five minutes: a loaded CI machine is slow).
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_lost_journal_is_recovered_by_asking_the_destinations_before_anything_is_sent_again() {
    let tmp = TempDir::new("recover");
    let mut a = Server::start(&tmp, "a", ServeConfig::on("127.0.0.72"));
    let b = Server::start(&tmp, "b", ServeConfig::on("127.0.0.73"));
    let ca = ca_bundle(&tmp, &[&a, &b]);
    let ca = ca.to_str().unwrap();
    let src = tmp.sub("src");
    let originals = fill(&src, 300);

    // A hangs (SIGSTOP): requests to it stay open, in doubt; B takes the rest.
    signal(&a.child, libc::SIGSTOP);
    let (da, db) = (a.dest(), b.dest());
    let (mut child, _lines) =
        spawn_watched(&src, &["--ca-cert", ca, "--concurrency", "8", &da, &db]);
    wait_until("B to take 40 messages", || b.ls().len() >= 40);
    child.kill().unwrap();
    child.wait().unwrap();
    signal(&a.child, libc::SIGCONT);

    // Five messages B holds are back in the spool: delivered, but the local copy not yet
    // removed when the drain died (the window recovery exists for), made certain here.
    let (bs, ss) = (
        drain::spool::Spool::open(&b.data_dir).unwrap(),
        drain::spool::Spool::open(&src).unwrap(),
    );
    for e in b.ls().iter().take(5) {
        let id: drain::base::MessageId = e.id.parse().unwrap();
        let q: drain::base::QueueKind = e.queue.parse().unwrap();
        std::fs::copy(bs.path_of(q, id), ss.path_of(q, id)).unwrap();
    }

    // The journal is lost (removed by an operator after a crash, or a replaced disk).
    std::fs::remove_file(src.join("journal.redb")).unwrap();
    let o = drain(&src, &["--ca-cert", ca, &da, &db]);
    assert_eq!(
        code(&o),
        1,
        "a drain without the journal must refuse: {}",
        show(&o)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("recover") && err.contains("twice"), "{err}");
    let o = try_serve(&tmp, &src, "127.0.0.74");
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("recover"),
        "{}",
        show(&o)
    );

    let o = drain(&src, &["--ca-cert", ca, "--json", "recover"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (asked, removed, remaining) = (
        r["asked"].as_u64().unwrap(),
        r["removed"].as_u64().unwrap(),
        r["remaining"].as_u64().unwrap(),
    );
    assert_eq!(asked, removed + remaining, "{r}");
    assert_eq!(remaining as usize, spool_ls(&src).len(), "{r}");
    let held: u64 = r["held"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(held, removed, "{r}");
    assert!(
        r["held"][&db].as_u64().unwrap() >= 5,
        "B holds the five copies put back: {r}"
    );

    // Nothing left to recover; the rest drains normally, and every message is on exactly one
    // destination, unchanged.
    let o = drain(&src, &["recover"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("nothing to recover"),
        "{}",
        show(&o)
    );
    let o = drain(&src, &["--ca-cert", ca, &da, &db]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(spool_ls(&src).is_empty());
    let all = census(&[&a, &b]);
    assert_eq!(all.len(), originals.len());
    for (id, (_, hash)) in &originals {
        assert_eq!(&all[id].1.hash, hash, "{id}");
    }
    a.kill();
}
