//! Exactly-once through a load balancer (issue 11), with real processes: three `drain serve`
//! backends behind a real balancer, round-robin, from the operator configurations in
//! `examples/` (`haproxy-tcp.cfg`: passthrough with `send-proxy-v2`; `haproxy-http.cfg`:
//! TLS-terminating; `nginx.conf`), the single server line filled with the three backends.
//! Behind each, the drain is SIGKILLed at random moments (seeded, printed) and `drain resume`
//! runs until exit 0; a census of the three backends finds every message exactly once,
//! byte-identical. Also: an instance gone for good is reassigned per instance.
//!
//! Backends that misbehave are in `balancer_backends.rs`; the wire rules that make it work
//! are tested on their own in `instances_wire.rs`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::ask::instance_of;
use common::balancers::*;
use common::*;
use drain::wire;

/// Kills of the drain per balancer: enough to leave messages in doubt, few enough for a
/// debug build to finish well under a minute.
const KILLS: usize = 4;

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
            // Short enough that a release build (300 messages in well under a second) is
            // still killed mid-drain.
            let delay = Duration::from_millis(20 + rng.below(250));
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
    let (lb, ca) = tcp_balancer(&tmp, &servers);
    let (expected, _, _) = drain_with_kills(&tmp, &lb, &ca, &mut rng);
    census_of(&servers, &tmp, &expected);
    finish_reached_all(&servers);
    inspect_names_the_instances(&servers, &tmp, &lb);
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
