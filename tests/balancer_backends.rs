//! Exactly-once through a load balancer while the backends misbehave (issue 11): backends
//! SIGKILLed and restarted mid-drain behind each of HAProxy `mode tcp`, HAProxy `mode http` and
//! nginx; a backend draining itself (503, taken out by the health check); and `drain recover`
//! after a lost journal, which must hear every instance behind the address. Each ends with a
//! census of every backend: every message exactly once, byte-identical.

mod common;

use std::path::Path;
use std::time::Duration;

use common::balancers::*;
use common::*;
use drain::base::QueueKind;

/// A backend SIGKILLed and restarted (same address, same data) at random moments of a drain
/// through `lb`: what it took stays pinned to it until it answers again (what it had parked is
/// gone with the restart, so its commit is answered `not_parked` and sent anew), so nothing is
/// lost or duplicated.
fn backends_killed(tmp: &TempDir, servers: &mut [Server], lb: &dyn Balancer, ca: &Path) {
    let mut rng = Rng::from_env("DRAIN_BALANCER_SEED");
    let ca = ca.display().to_string();
    let src = tmp.sub("src");
    let expected = fill(&src, 300);
    let log = tmp.path().join("drain.log");
    let out = tmp.path().join("drain.out");
    let dest = lb.dest();
    let args = [
        "--ca-cert",
        &ca,
        "--concurrency",
        "12",
        "--batch-size",
        "3",
        &dest,
    ];
    let mut child = spawn_logged(&src, &args, &out, &log);
    let mut kills = 0;
    let code = loop {
        if let Some(code) = wait_up_to(&mut child, Duration::from_millis(20 + rng.below(150))) {
            break code;
        }
        if kills < 3 {
            let victim = rng.below(3) as usize;
            servers[victim].kill();
            kills += 1;
            std::thread::sleep(Duration::from_millis(rng.below(100)));
            servers[victim].restart();
        }
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, 0, "{text}\n{}", lb.log());
    eprintln!(
        "{kills} backend kills; {} requests ended in doubt, {} confirmations by the instance",
        text.matches("ended ambiguously").count(),
        text.matches("confirms it holds").count()
    );
    census_of(servers, tmp, &expected);
}

#[test]
fn backends_killed_behind_a_tcp_balancer_duplicate_nothing() {
    let tmp = TempDir::new("lb-backend-kill");
    let mut servers = backends(
        &tmp,
        &["127.0.0.70", "127.0.0.71", "127.0.0.72"],
        "127.0.0.1",
    );
    let (lb, ca) = tcp_balancer(&tmp, &servers);
    backends_killed(&tmp, &mut servers, &lb, &ca);
}

#[test]
fn backends_killed_behind_an_http_balancer_duplicate_nothing() {
    let tmp = TempDir::new("lb-http-backend-kill");
    let mut servers = backends(
        &tmp,
        &["127.0.0.64", "127.0.0.65", "127.0.0.66"],
        "127.0.0.1",
    );
    let (lb, cert) = http_balancer(&tmp, &servers);
    backends_killed(&tmp, &mut servers, &lb, &cert);
}

#[test]
fn backends_killed_behind_nginx_duplicate_nothing() {
    let tmp = TempDir::new("lb-nginx-backend-kill");
    let mut servers = backends(
        &tmp,
        &["127.0.0.67", "127.0.0.68", "127.0.0.69"],
        "127.0.0.1",
    );
    let (lb, cert) = nginx_balancer(&tmp, &servers);
    backends_killed(&tmp, &mut servers, &lb, &cert);
}

/// A backend draining itself behind the balancer answers 503 (its intake is stopped while its
/// own drain waits for events): the others take everything, nothing waits on it, and it gets
/// none of the messages.
#[test]
fn a_backend_draining_itself_is_skipped_and_the_others_take_everything() {
    use std::sync::atomic::Ordering;
    let tmp = TempDir::new("lb-draining");
    let ips = ["127.0.0.60", "127.0.0.61", "127.0.0.62"];
    // Backend 0: one message of its own, its event pending at an endpoint that answers 500.
    let sink = EventSink::start("127.0.0.63");
    sink.status.store(500, Ordering::SeqCst);
    let own = tmp.sub("b0");
    let own_id = spool_add(&own, "queue", 0, None, b"its own\r\n");
    let servers: Vec<Server> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let mut cfg = ServeConfig::on(ip);
            cfg.trusted_proxies = Some("127.0.0.1");
            if i == 0 {
                cfg.extra = vec!["--event-endpoint".into(), sink.url.clone()];
            }
            Server::start_with_names(&tmp, &format!("b{i}"), cfg, &[ip, "127.0.0.1"])
        })
        .collect();
    assert_eq!(servers[0].data_dir, own);
    // Its own drain waits for those events: meanwhile its intake answers 503.
    let away = format!("127.0.0.60:{}", closed_port("127.0.0.60"));
    let (waiting, lines) = spawn_watched(&own, &["--max-event-wait", "300s", &away]);
    wait_line(&lines, "waiting for the event processor");

    let (lb, ca) = tcp_balancer(&tmp, &servers);
    let refs: Vec<&Server> = servers.iter().collect();
    let src = tmp.sub("src");
    let expected = fill(&src, 120);
    let o = drain(&src, &["--ca-cert", ca.to_str().unwrap(), &lb.dest()]);
    assert_eq!(code(&o), 0, "{}\n{}", show(&o), lb.log());
    assert!(spool_ls(&src).is_empty());
    let ids: Vec<String> = servers[0].ls().into_iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![own_id], "the draining backend took nothing new");
    let all = census(&refs[1..]);
    assert_eq!(all.len(), expected.len());
    for (id, (_, hash)) in &expected {
        assert_eq!(&all[id].1.hash, hash, "{id}");
    }
    signal(&waiting, libc::SIGTERM);
    let mut waiting = waiting;
    assert_eq!(wait_up_to(&mut waiting, Duration::from_secs(60)), Some(42));
}

/// A lost journal behind a balancer: `drain recover` asks until every instance behind the
/// address has answered (here a TCP balancer, whose kept-alive connection would otherwise
/// always reach the same backend), so copies held by any backend are removed from the spool
/// and nothing would be sent twice.
#[test]
fn recover_asks_every_instance_behind_a_balancer() {
    let tmp = TempDir::new("lb-recover");
    let servers = backends(
        &tmp,
        &["127.0.0.73", "127.0.0.74", "127.0.0.75"],
        "127.0.0.1",
    );
    let (lb, ca) = tcp_balancer(&tmp, &servers);
    let ca = ca.display().to_string();
    let refs: Vec<&Server> = servers.iter().collect();
    let src = tmp.sub("src");
    // Many small requests on many connections: every backend takes some long before the end.
    let expected = fill(&src, 3000);
    let dest = lb.dest();
    let args = [
        "--ca-cert",
        &ca,
        "--batch-size",
        "3",
        "--concurrency",
        "12",
        &dest,
    ];
    let (out, log) = (tmp.path().join("drain.out"), tmp.path().join("drain.log"));
    let mut child = spawn_logged(&src, &args, &out, &log);
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while servers.iter().filter(|s| s.ls().len() >= 3).count() < 3 {
        let counts: Vec<usize> = servers.iter().map(|s| s.ls().len()).collect();
        assert!(
            std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "every backend takes some: {counts:?}\n{}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            lb.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Three messages each backend holds are back in the spool (delivered, the local copy not
    // yet removed when the drain died), and the journal is lost.
    let ss = drain::spool::Spool::open(&src).unwrap();
    for s in &servers {
        let bs = drain::spool::Spool::open(&s.data_dir).unwrap();
        for e in s.ls().iter().take(3) {
            let id: drain::base::MessageId = e.id.parse().unwrap();
            let q: QueueKind = e.queue.parse().unwrap();
            std::fs::copy(bs.path_of(q, id), ss.path_of(q, id)).unwrap();
        }
    }
    std::fs::remove_file(src.join("journal.redb")).unwrap();
    let o = drain(&src, &["--ca-cert", &ca, "--json", "recover"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let left: std::collections::BTreeSet<String> =
        spool_ls(&src).into_iter().map(|e| e.id).collect();
    let held = census(&refs);
    let twice: Vec<&String> = held.keys().filter(|id| left.contains(*id)).collect();
    assert!(twice.is_empty(), "in the spool and on a backend: {twice:?}");
    assert_eq!(left.len() + held.len(), expected.len());
    eprintln!(
        "recover: {} on the backends, {} left in the spool",
        held.len(),
        left.len()
    );
}
