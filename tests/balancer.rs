//! Exactly-once through a load balancer (issue 11), with real processes: three `drain serve`
//! backends behind a real balancer, round-robin, from the operator configurations in
//! `examples/` (`haproxy-tcp.cfg`: passthrough with `send-proxy-v2`; `haproxy-http.cfg`:
//! TLS-terminating; `nginx.conf`), the single server line filled with the three backends.
//! Behind each: the drain is SIGKILLed at random moments (seeded, printed) and `drain resume`
//! runs until exit 0; and, in another drain, backends are SIGKILLed and restarted. A census of
//! the three backends finds every message exactly once, byte-identical. Also: a backend
//! draining itself is skipped, and an instance gone for good is reassigned per instance.
//!
//! The wire rules that make it work are tested on their own in `instances_wire.rs`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::ask::instance_of;
use common::haproxy::HaProxy;
use common::nginx::Nginx;
use common::*;
use drain::base::QueueKind;
use drain::wire;

/// Kills of the drain per balancer: enough to leave messages in doubt, few enough for a
/// debug build to finish well under a minute.
const KILLS: usize = 4;

/// A balancer a test runs: where senders dial, and its logs.
trait Balancer {
    fn dest(&self) -> String;
    fn log(&self) -> String;
}

impl Balancer for HaProxy {
    fn dest(&self) -> String {
        HaProxy::dest(self)
    }
    fn log(&self) -> String {
        HaProxy::log(self)
    }
}

impl Balancer for Nginx {
    fn dest(&self) -> String {
        Nginx::dest(self)
    }
    fn log(&self) -> String {
        Nginx::log(self)
    }
}

/// Three backends on `ips`, trusting the balancer on `lb_ip` for forwarding; their
/// certificates also name `lb_ip` (passthrough: the senders' TLS ends at the backend).
fn backends(tmp: &TempDir, ips: &[&str; 3], lb_ip: &str) -> Vec<Server> {
    ips.iter()
        .enumerate()
        .map(|(i, ip)| {
            let mut cfg = ServeConfig::on(ip);
            cfg.trusted_proxies = Some(lb_ip);
            Server::start_with_names(tmp, &format!("b{i}"), cfg, &[ip, lb_ip])
        })
        .collect()
}

/// The example's single `server` line, replaced by one line per backend (then the
/// placeholder where the comments name it).
fn server_lines(servers: &[Server]) -> [(&'static str, String); 2] {
    let lines: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| format!("server drain{} {}", i + 1, s.dest()))
        .collect();
    [
        ("server drain1 @BACKEND1@", lines.join("\n    ")),
        ("@BACKEND1@", servers[0].dest()),
    ]
}

/// Drains ~300 messages through `lb` (trusting `ca`), SIGKILLed [`KILLS`] times at random
/// moments, then resumed until exit 0; returns the messages and how many kills left some in
/// doubt (and how many messages).
fn drain_with_kills(
    tmp: &TempDir,
    lb: &dyn Balancer,
    ca: &Path,
    rng: &mut Rng,
) -> (BTreeMap<String, (String, String)>, usize, u64) {
    let src = tmp.sub("src");
    let expected = fill(&src, 280 + rng.below(40) as usize);
    let log = tmp.path().join("drain.log");
    let out = tmp.path().join("drain.out");
    let ca = ca.display().to_string();
    let (mut kills, mut in_doubt, mut in_doubt_msgs) = (0usize, 0usize, 0u64);
    for attempt in 1..100 {
        let mut args = vec!["--ca-cert", &ca, "--concurrency", "12", "--batch-size", "3"];
        let dest = lb.dest();
        if attempt == 1 {
            args.push(&dest);
        } else {
            args.push("resume");
        }
        let mut child = spawn_logged(&src, &args, &out, &log);
        if kills < KILLS {
            let delay = Duration::from_millis(30 + rng.below(400));
            if wait_up_to(&mut child, delay).is_none() {
                let _ = child.kill();
                let _ = child.wait();
                kills += 1;
                let after = try_inspect_json(&src, &[]).expect("journal readable after a kill");
                let sent = last_run_count(&after, "sent");
                if sent > 0 {
                    in_doubt += 1;
                    in_doubt_msgs += sent;
                }
                continue;
            }
        }
        let code = wait_up_to(&mut child, Duration::from_secs(120)).expect("drain hung");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(
            code,
            0,
            "attempt {attempt} ended with {code}:\n{text}\n{}",
            lb.log()
        );
        eprintln!(
            "{kills} kills, {in_doubt} left {in_doubt_msgs} messages in doubt; finished at \
             attempt {attempt}"
        );
        return (expected, in_doubt, in_doubt_msgs);
    }
    panic!("the drain never finished");
}

/// The census over the three backends (panics on a message held by two), with the count
/// each holds printed; the source is empty.
fn census_of(servers: &[Server], tmp: &TempDir, expected: &BTreeMap<String, (String, String)>) {
    let refs: Vec<&Server> = servers.iter().collect();
    let counts: Vec<usize> = servers.iter().map(|s| s.ls().len()).collect();
    eprintln!(
        "census: {} messages, per backend {counts:?}",
        expected.len()
    );
    assert_census(&refs, &tmp.sub("src"), expected);
    assert!(
        counts.iter().filter(|c| **c > 0).count() >= 2,
        "the balancer spread the messages: {counts:?}"
    );
}

/// The run's finish reached every instance, not just the one the balancer picked. (Not
/// checked where backends were killed: one the balancer has just taken out may miss it, and
/// its keys then expire with `--dedupe-retention`.)
fn finish_reached_all(servers: &[Server]) {
    for s in servers {
        assert!(
            s.log()
                .contains("drain run finished; its dedupe keys are dropped"),
            "{}",
            s.log()
        );
    }
}

/// `inspect` names the instances behind the balancer: per instance, as many delivered as that
/// backend holds, none in doubt; `--message` names the instance that holds a message.
fn inspect_names_the_instances(servers: &[Server], tmp: &TempDir, lb: &dyn Balancer) {
    let src = tmp.sub("src");
    let summary = inspect_json(&src, &[]);
    let instances = &summary["run"]["by_destination"][lb.dest()]["instances"];
    for s in servers {
        let i = &instances[instance_of(s)];
        assert_eq!(
            (i["delivered"].as_u64(), i["in_doubt"].as_u64()),
            (Some(s.ls().len() as u64), Some(0)),
            "{instances}"
        );
    }
    let held = &servers[0].ls()[0].id;
    let o = drain(&src, &["inspect", "--message", held]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("instance {}", instance_of(&servers[0]))),
        "{text}"
    );
}

/// nginx from `examples/nginx.conf` in front of `servers`; returns it and its certificate.
fn nginx_balancer(tmp: &TempDir, servers: &[Server]) -> (Nginx, std::path::PathBuf) {
    let (cert, key) =
        drain::tls::write_self_signed(&["127.0.0.1".to_string()], tmp.path(), "nginx").unwrap();
    let lines: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let sep = if i == 0 { "" } else { "        server " };
            format!("{sep}{} max_fails=2 fail_timeout=5s;", s.dest())
        })
        .collect();
    let lb = Nginx::start(
        tmp,
        "127.0.0.1",
        &[
            ("@CERT@", cert.display().to_string()),
            ("@KEY@", key.display().to_string()),
            ("@BACKEND1@ max_fails=2 fail_timeout=5s;", lines.join("\n")),
        ],
    );
    (lb, cert)
}

/// (a) nginx 1.22 (TLS-terminating, `examples/nginx.conf`), round-robin per request, with
/// keepalive connections to the backends.
#[test]
fn killed_drains_through_nginx_duplicate_nothing() {
    let mut rng = Rng::from_env("DRAIN_BALANCER_SEED");
    let tmp = TempDir::new("lb-nginx");
    let servers = backends(
        &tmp,
        &["127.0.0.57", "127.0.0.58", "127.0.0.59"],
        "127.0.0.1",
    );
    let (lb, cert) = nginx_balancer(&tmp, &servers);
    let (expected, _, _) = drain_with_kills(&tmp, &lb, &cert, &mut rng);
    census_of(&servers, &tmp, &expected);
    finish_reached_all(&servers);
    inspect_names_the_instances(&servers, &tmp, &lb);
}

/// (a) HAProxy `mode tcp` (passthrough, PROXY v2), round-robin over three backends.
#[test]
fn killed_drains_through_a_tcp_balancer_duplicate_nothing() {
    let mut rng = Rng::from_env("DRAIN_BALANCER_SEED");
    let tmp = TempDir::new("lb-tcp");
    let servers = backends(
        &tmp,
        &["127.0.0.51", "127.0.0.52", "127.0.0.53"],
        "127.0.0.1",
    );
    let lb = HaProxy::start(
        &tmp,
        "haproxy-tcp.cfg",
        "127.0.0.1",
        &server_lines(&servers),
    );
    let refs: Vec<&Server> = servers.iter().collect();
    let ca = ca_bundle(&tmp, &refs);
    let (expected, _, _) = drain_with_kills(&tmp, &lb, &ca, &mut rng);
    census_of(&servers, &tmp, &expected);
    finish_reached_all(&servers);
    inspect_names_the_instances(&servers, &tmp, &lb);
}

/// HAProxy from `examples/haproxy-http.cfg` on 127.0.0.1 in front of `servers`, with a
/// certificate of its own (returned: what senders trust).
fn http_balancer(tmp: &TempDir, servers: &[Server]) -> (HaProxy, std::path::PathBuf) {
    let (cert, key) =
        drain::tls::write_self_signed(&["127.0.0.1".to_string()], tmp.path(), "lb").unwrap();
    let both = tmp.path().join("lb-both.pem");
    let pem = std::fs::read_to_string(&cert).unwrap() + &std::fs::read_to_string(&key).unwrap();
    std::fs::write(&both, pem).unwrap();
    let fill = [
        [("@CERT@", both.display().to_string())].as_slice(),
        &server_lines(servers),
    ]
    .concat();
    (
        HaProxy::start(tmp, "haproxy-http.cfg", "127.0.0.1", &fill),
        cert,
    )
}

/// (a) HAProxy `mode http` (TLS-terminating, `option forwardfor`), round-robin per request.
#[test]
fn killed_drains_through_an_http_balancer_duplicate_nothing() {
    let mut rng = Rng::from_env("DRAIN_BALANCER_SEED");
    let tmp = TempDir::new("lb-http");
    let servers = backends(
        &tmp,
        &["127.0.0.54", "127.0.0.55", "127.0.0.56"],
        "127.0.0.1",
    );
    let (lb, cert) = http_balancer(&tmp, &servers);
    let (expected, _, _) = drain_with_kills(&tmp, &lb, &cert, &mut rng);
    let log = lb.log();
    let count = |status: &str, path: &str| {
        log.lines()
            .filter(|l| l.contains(status) && l.contains(path))
            .count()
    };
    eprintln!(
        "through the http balancer: transfers {} answered 200, {} answered 421; commits {} \
         answered 200, {} answered 421",
        count(" 200 ", wire::TRANSFER_PATH),
        count(" 421 ", wire::TRANSFER_PATH),
        count(" 200 ", wire::COMMIT_PATH),
        count(" 421 ", wire::COMMIT_PATH),
    );
    census_of(&servers, &tmp, &expected);
    finish_reached_all(&servers);
    inspect_names_the_instances(&servers, &tmp, &lb);
}

/// A backend SIGKILLed and restarted (same address, same data) at random moments of a drain
/// through `lb`: what it took stays pinned to it until it answers again (what it had parked is
/// gone with the restart, so its commit is answered `not_parked` and sent anew), so nothing is
/// lost or duplicated.
fn backends_killed(
    tmp: &TempDir,
    servers: &mut [Server],
    lb: &dyn Balancer,
    ca: &Path,
    seed: &str,
) {
    let mut rng = Rng::from_env(seed);
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
    let lb = HaProxy::start(
        &tmp,
        "haproxy-tcp.cfg",
        "127.0.0.1",
        &server_lines(&servers),
    );
    let refs: Vec<&Server> = servers.iter().collect();
    let ca = ca_bundle(&tmp, &refs);
    backends_killed(&tmp, &mut servers, &lb, &ca, "DRAIN_BALANCER_SEED");
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
    backends_killed(&tmp, &mut servers, &lb, &cert, "DRAIN_BALANCER_SEED");
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
    backends_killed(&tmp, &mut servers, &lb, &cert, "DRAIN_BALANCER_SEED");
}

/// The ids of the messages in doubt with each instance behind `dest`, as `inspect` counts them.
fn in_doubt_by_instance(src: &Path, dest: &str) -> BTreeMap<String, u64> {
    let summary = inspect_json(src, &[]);
    let mut out = BTreeMap::new();
    if let Some(m) = summary["run"]["by_destination"][dest]["instances"].as_object() {
        for (i, c) in m {
            let n = c["in_doubt"].as_u64().unwrap_or(0);
            if n > 0 {
                out.insert(i.clone(), n);
            }
        }
    }
    out
}

/// An instance that disappears for good behind the balancer: its in-doubt messages stay pinned
/// to it, the other instance keeps answering (`421` for them, never "not held"), and with
/// `--reassign-after` they go to the other instance behind the same address, flagged as
/// possible duplicates; nothing is lost and nothing else is duplicated.
#[test]
fn an_instance_gone_for_good_is_reassigned_per_instance() {
    let mut rng = Rng::from_env("DRAIN_BALANCER_SEED");
    let tmp = TempDir::new("lb-gone");
    let mut servers = backends(
        &tmp,
        &["127.0.0.61", "127.0.0.62", "127.0.0.63"],
        "127.0.0.1",
    );
    let (lb, cert) = http_balancer(&tmp, &servers);
    let src = tmp.sub("src");
    let log = tmp.path().join("drain.log");
    let out = tmp.path().join("drain.out");
    let ca = cert.display().to_string();
    let dest = lb.dest();
    let mut expected = BTreeMap::new();
    // Kill the drain until some messages are in doubt with one instance.
    let mut pinned = BTreeMap::new();
    for _ in 1..40 {
        if spool_ls(&src).len() < 50 {
            expected.extend(fill(&src, 150));
        }
        // Naming the destination continues the unfinished run, or starts one.
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
        if wait_up_to(&mut child, Duration::from_millis(100 + rng.below(400))).is_none() {
            let _ = child.kill();
            let _ = child.wait();
            pinned = in_doubt_by_instance(&src, &dest);
            if !pinned.is_empty() {
                break;
            }
        }
    }
    let (gone_id, n) = pinned.iter().next().expect("a kill left messages in doubt");
    eprintln!("{n} messages in doubt with instance {gone_id}: it goes away for good");
    let gone = servers
        .iter()
        .position(|s| instance_of(s) == *gone_id)
        .unwrap();
    servers[gone].kill();
    let args = [
        "--ca-cert",
        &ca,
        "--reassign-after",
        "2s",
        "--concurrency",
        "12",
        "--batch-size",
        "3",
        "resume",
    ];
    let mut child = spawn_logged(&src, &args, &out, &log);
    let code = wait_up_to(&mut child, Duration::from_secs(120)).expect("resume hung");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!(
            "(instance {gone_id}) stayed unreachable past --reassign-after"
        )),
        "{text}"
    );
    // Every message is on a backend; only the reassigned ones may be on two.
    let mut on: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (k, s) in servers.iter().enumerate() {
        for e in s.ls() {
            on.entry(e.id).or_default().push(k);
        }
    }
    let missing = expected.keys().filter(|id| !on.contains_key(*id)).count();
    assert_eq!(missing, 0, "lost messages");
    let twice: Vec<&String> = on
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(twice.len() as u64 <= *n, "{twice:?}");
    assert!(spool_ls(&src).is_empty());
    let summary = inspect_json(&src, &[]);
    let instances = &summary["run"]["by_destination"][dest.as_str()]["instances"];
    assert_eq!(
        instances[gone_id]["in_doubt"].as_u64().unwrap_or(0),
        0,
        "{instances}"
    );
    let flagged: Vec<String> = summary["run"]["anomalies"]["possible_duplicates"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(flagged.len() as u64, *n, "{flagged:?}");
    for id in &twice {
        assert!(flagged.contains(id), "{id} on two backends, not flagged");
    }
    eprintln!(
        "{} of the {n} reassigned messages are on two backends",
        twice.len()
    );
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

    let lb = HaProxy::start(
        &tmp,
        "haproxy-tcp.cfg",
        "127.0.0.1",
        &server_lines(&servers),
    );
    let refs: Vec<&Server> = servers.iter().collect();
    let ca = ca_bundle(&tmp, &refs);
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
    let lb = HaProxy::start(
        &tmp,
        "haproxy-tcp.cfg",
        "127.0.0.1",
        &server_lines(&servers),
    );
    let refs: Vec<&Server> = servers.iter().collect();
    let ca = ca_bundle(&tmp, &refs).display().to_string();
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
