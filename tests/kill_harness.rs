//! The kill harness: SIGKILL the drain, or a receiver, at random moments (seeded, printed), run
//! `drain resume` after each kill until exit 0, then a census: every original message is on
//! exactly one destination, byte-identical (same hash), and the source is empty.
//!
//! CI makes `DRAIN_KILL_POINTS` (default 20) kill points with a fresh seed per run. The soak:
//! `DRAIN_KILL_POINTS=500 cargo test --release --test kill_harness -- --nocapture`.
//! Replay a failure with the printed `DRAIN_KILL_SEED=...`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn spawn_drain(src: &Path, args: &[String], log: &Path) -> Child {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(src)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("spawn drain")
}

/// Waits up to `d` for the child; true if it exited.
fn wait_up_to(child: &mut Child, d: Duration) -> Option<i32> {
    let deadline = Instant::now() + d;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return Some(st.code().unwrap_or(-1));
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Every expected message on exactly one destination with its hash; the source empty.
fn assert_census(servers: &[&Server], src: &Path, expected: &BTreeMap<String, (String, String)>) {
    let all = census(servers);
    let missing: Vec<&String> = expected
        .keys()
        .filter(|id| !all.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} messages lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let extra: Vec<&String> = all
        .keys()
        .filter(|id| !expected.contains_key(*id))
        .collect();
    assert!(extra.is_empty(), "unexpected messages: {extra:?}");
    for (id, (queue, hash)) in expected {
        let (_, e) = &all[id];
        assert_eq!((&e.queue, &e.hash), (queue, hash), "message {id} changed");
    }
    let left = spool_ls(src);
    assert!(
        left.is_empty(),
        "{} messages left at the source",
        left.len()
    );
}

#[test]
fn drain_killed_at_random_moments_then_resumed_loses_and_duplicates_nothing() {
    let mut rng = Rng::from_env("DRAIN_KILL_SEED");
    let points = kill_points();
    let tmp = TempDir::new("killdrain");
    let servers: Vec<Server> = ["127.0.0.31", "127.0.0.32", "127.0.0.33"]
        .iter()
        .enumerate()
        .map(|(i, ip)| Server::start(&tmp, &format!("d{i}"), ServeConfig::on(ip)))
        .collect();
    let refs: Vec<&Server> = servers.iter().collect();
    let ca = ca_bundle(&tmp, &refs).display().to_string();
    let src = tmp.sub("src");
    let log = tmp.path().join("drain.log");
    let mut expected = BTreeMap::new();
    let (mut kills, mut rounds) = (0usize, 0usize);
    while kills < points {
        rounds += 1;
        assert!(rounds <= 10 * points + 10, "too many rounds");
        expected.extend(fill(&src, 150 + rng.below(150) as usize));
        let mut attempt = 0;
        loop {
            attempt += 1;
            assert!(attempt < 1000, "the drain never finished");
            let mut args = vec![
                "--ca-cert".to_string(),
                ca.clone(),
                "--concurrency".into(),
                "12".into(),
                "--batch-size".into(),
                "3".into(),
            ];
            // After a kill, continue with `resume` or by naming the destinations again.
            if attempt == 1 || rng.below(3) == 0 {
                args.extend(servers.iter().map(|s| s.dest()));
            } else {
                args.push("resume".into());
            }
            let mut child = spawn_drain(&src, &args, &log);
            if kills < points {
                let delay = Duration::from_millis(rng.below(350));
                if wait_up_to(&mut child, delay).is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                    kills += 1;
                    continue;
                }
            }
            let code = wait_up_to(&mut child, Duration::from_secs(300)).expect("drain hung");
            let out = std::fs::read_to_string(&log).unwrap_or_default();
            assert_eq!(
                code, 0,
                "attempt {attempt} of round {rounds} ended with {code}:\n{out}"
            );
            break;
        }
    }
    eprintln!(
        "{kills} kills over {rounds} rounds, {} messages",
        expected.len()
    );
    assert_census(&refs, &src, &expected);
    // Every run is settled: the instance may serve again.
    let o = drain(&src, &["resume"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("nothing to resume"),
        "{}",
        show(&o)
    );
}

#[test]
fn receivers_killed_at_random_moments_lose_nothing_they_acknowledged() {
    let mut rng = Rng::from_env("DRAIN_KILL_SEED");
    let points = kill_points();
    let tmp = TempDir::new("killrecv");
    let mut servers: Vec<Server> = ["127.0.0.41", "127.0.0.42"]
        .iter()
        .enumerate()
        .map(|(i, ip)| Server::start(&tmp, &format!("r{i}"), ServeConfig::on(ip)))
        .collect();
    let ca = {
        let refs: Vec<&Server> = servers.iter().collect();
        ca_bundle(&tmp, &refs).display().to_string()
    };
    let dests: Vec<String> = servers.iter().map(|s| s.dest()).collect();
    let src = tmp.sub("src");
    let log = tmp.path().join("drain.log");
    let mut expected = BTreeMap::new();
    let (mut kills, mut rounds) = (0usize, 0usize);
    while kills < points {
        rounds += 1;
        assert!(rounds <= 10 * points + 10, "too many rounds");
        expected.extend(fill(&src, 400));
        let mut args = vec![
            "--ca-cert".to_string(),
            ca.clone(),
            "--concurrency".into(),
            "12".into(),
            "--batch-size".into(),
            "3".into(),
        ];
        args.extend(dests.iter().cloned());
        let mut child = spawn_drain(&src, &args, &log);
        let code = loop {
            if let Some(code) = wait_up_to(&mut child, Duration::from_millis(10 + rng.below(150))) {
                break code;
            }
            if kills < points {
                let victim = rng.below(2) as usize;
                servers[victim].kill();
                kills += 1;
                std::thread::sleep(Duration::from_millis(rng.below(100)));
                servers[victim].restart();
            }
        };
        let out = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(code, 0, "round {rounds} ended with {code}:\n{out}");
    }
    eprintln!(
        "{kills} receiver kills over {rounds} rounds, {} messages",
        expected.len()
    );
    let refs: Vec<&Server> = servers.iter().collect();
    assert_census(&refs, &src, &expected);
}
