//! The kill harness: SIGKILL the drain, or a receiver, at random moments (seeded, printed), run
//! `drain resume` after each kill until exit 0, then a census: every original message is on
//! exactly one destination, byte-identical (same hash), and the source is empty.
//!
//! A kill point is a kill of the drain after its attempt journaled something (the run, its
//! resumption, progress); kills during start-up are counted apart. After each kill, before the
//! next attempt, `drain inspect --json` tells whether it left messages journaled `sent` (in
//! doubt); the harness asserts that some did, or it would not test settling at all.
//!
//! CI makes `DRAIN_KILL_POINTS` (default 20) kill points with a fresh seed per run. The soak:
//! `DRAIN_KILL_POINTS=500 cargo test --release --test kill_harness -- --nocapture`.
//! Replay a failure with the printed `DRAIN_KILL_SEED=...`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;

/// The journal as far as progress goes: every run (status, resumed, ...) and the last run's
/// counts by state. It differs before and after an attempt iff the attempt journaled something.
fn journal_mark(summary: &serde_json::Value) -> (serde_json::Value, serde_json::Value) {
    (summary["runs"].clone(), summary["run"]["by_state"].clone())
}

/// Kills of the drain, by what they interrupted.
#[derive(Default, Debug)]
struct Kills {
    /// After the run was journaled: the kill points.
    points: usize,
    /// Before the attempt journaled anything (start-up): not kill points.
    startup: usize,
    /// Kill points that left messages journaled `sent` (in doubt) for `drain resume`.
    in_doubt: usize,
    /// Messages in doubt summed over those kills.
    in_doubt_messages: u64,
}

impl Kills {
    /// Counts a kill from the journal before the attempt and after the kill.
    fn count(&mut self, before: &serde_json::Value, after: &serde_json::Value) {
        if journal_mark(before) == journal_mark(after) {
            self.startup += 1;
            return;
        }
        self.points += 1;
        let sent = last_run_count(after, "sent");
        if sent > 0 {
            self.in_doubt += 1;
            self.in_doubt_messages += sent;
        }
    }
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
    let out = tmp.path().join("drain.out");
    let place = DrainPlace {
        src: &src,
        ca: &ca,
        servers: &servers,
        out: &out,
        log: &log,
    };
    let mut expected = BTreeMap::new();
    let (mut kills, mut rounds) = (Kills::default(), 0usize);
    while kills.points < points {
        rounds += 1;
        assert!(rounds <= 10 * points + 10, "too many rounds: {kills:?}");
        expected.extend(fill(&src, 150 + rng.below(150) as usize));
        drain_round_with_kills(&place, &mut rng, &mut kills, points, rounds);
    }
    eprintln!(
        "{} kill points over {rounds} rounds, {} messages; {} kills during start-up (not \
         counted); {} kills left {} messages in doubt (journaled sent)",
        kills.points,
        expected.len(),
        kills.startup,
        kills.in_doubt,
        kills.in_doubt_messages
    );
    assert!(
        kills.in_doubt > 0,
        "no kill left a message in doubt: the harness never killed a drain mid-transfer \
         ({kills:?})"
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

/// Where the killed drain runs and logs, and what it drains to.
struct DrainPlace<'a> {
    src: &'a Path,
    ca: &'a str,
    servers: &'a [Server],
    out: &'a Path,
    log: &'a Path,
}

/// The drain's arguments for one attempt: the destinations the first time; after a kill,
/// continue with `resume` or by naming the destinations again.
fn attempt_args(place: &DrainPlace, attempt: usize, rng: &mut Rng) -> Vec<String> {
    let mut args = vec![
        "--ca-cert".to_string(),
        place.ca.to_string(),
        "--concurrency".into(),
        "12".into(),
        "--batch-size".into(),
        "3".into(),
    ];
    // After a kill, continue with `resume` or by naming the destinations again.
    if attempt == 1 || rng.below(3) == 0 {
        args.extend(place.servers.iter().map(|s| s.dest()));
    } else {
        args.push("resume".into());
    }
    args
}

/// Attempts of one round: each killed at a random moment (while kill points are still
/// wanted), until one runs to exit 0.
fn drain_round_with_kills(
    place: &DrainPlace,
    rng: &mut Rng,
    kills: &mut Kills,
    points: usize,
    rounds: usize,
) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        assert!(attempt < 1000, "the drain never finished");
        let args = attempt_args(place, attempt, rng);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let before = inspect_json(place.src, &[]);
        let mut child = spawn_logged(place.src, &args, place.out, place.log);
        if kills.points < points {
            let delay = Duration::from_millis(rng.below(350));
            if wait_up_to(&mut child, delay).is_none() {
                let _ = child.kill();
                let _ = child.wait();
                // What the kill left, read before `drain resume` settles it.
                let after = try_inspect_json(place.src, &[]).unwrap_or_else(|e| {
                    panic!("the kill after {delay:?} left a journal unreadable: {e}")
                });
                kills.count(&before, &after);
                continue;
            }
        }
        let code = wait_up_to(&mut child, Duration::from_secs(300)).expect("drain hung");
        let out = std::fs::read_to_string(place.log).unwrap_or_default();
        assert_eq!(
            code, 0,
            "attempt {attempt} of round {rounds} ended with {code}:\n{out}"
        );
        break;
    }
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
    let out = tmp.path().join("drain.out");
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
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = spawn_logged(&src, &args, &out, &log);
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
