//! Power-loss windows the random harness (`harness.rs`) cannot reach, each built
//! deterministically on power-loss mounts (issue 14, deliverable 3): every test here fails if
//! one particular durability step is removed (the mutation check in the README names them).
//!
//! - Copies a SIGKILLed `drain serve` left behind. `Spool::store_many` renames each fsynced
//!   file into its queue directory and then fsyncs the directory. A SIGKILL between the two
//!   leaves copies every process sees (the page cache survives) but whose names are not
//!   durable. When a sender later asks about such a copy, the receiver answers "held" from its
//!   spool and the sender removes its own copy; so the receiver must make the names durable
//!   before it answers (`Store::held_blocking` for a query, `Store::make_durable` for a
//!   transfer that finds the copy), or a power cut loses the message on both sides.
//! - The run marker (`drain-run.json`): written durably before a run sends anything, so that a
//!   run whose journal is later lost is still known; the harness never loses a durable
//!   journal, so it cannot see a marker that was not durable.
//! - Directories drain creates (a fresh data directory, a fresh `--fallback-path`): what is
//!   stored in them must survive a power cut right after the command that stored it.
//! - A drain whose closing fsync of the queue directories fails: its removals are not durable,
//!   so it must not call its run finished; after a power cut `drain resume` settles it.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Receiver, Tmp, fuse_available, run, spawn_drain, spool, volume, wait_up_to};

/// A sender with `n` messages and a receiver holding copies of them exactly as a SIGKILL
/// between `store_many`'s renames and its directory fsync leaves them; `drain serve` runs on
/// the receiver again.
struct Window {
    receiver: Receiver,
    source: drain_powerloss::Mount,
    expected: std::collections::BTreeMap<String, (String, String)>,
    // Last: removed after the mounts are gone.
    _tmp: Tmp,
}

impl Window {
    fn new(tag: &str, ip: &str) -> Window {
        let tmp = Tmp::new(tag);
        let source = volume(&tmp, "src");
        let mut receiver = Receiver::start(&tmp, "r0", ip);
        receiver.kill();
        drain::demo::fill(source.mountpoint(), 8).unwrap();
        let expected = spool(source.mountpoint());
        for (id, (queue, _)) in &expected {
            let name = format!("{id}.msg");
            let bytes =
                fs::read(source.mountpoint().join("spool").join(queue).join(&name)).unwrap();
            let spool = receiver.data_dir().join("spool");
            let tmp_file = spool.join(".tmp").join(format!("{id}.killed.tmp"));
            let mut f = fs::File::create(&tmp_file).unwrap();
            f.write_all(&bytes).unwrap();
            f.sync_all().unwrap();
            fs::rename(&tmp_file, spool.join(queue).join(&name)).unwrap();
            // Killed here: no fsync of the queue directory (nor of `.tmp`).
        }
        receiver.spawn();
        Window {
            receiver,
            source,
            expected,
            _tmp: tmp,
        }
    }

    fn src(&self) -> &Path {
        self.source.mountpoint()
    }

    fn ca(&self) -> String {
        self.receiver.cert.display().to_string()
    }

    /// Kills serve, cuts the power on both mounts; then every message must be exactly once,
    /// unchanged: here, all on the receiver.
    fn cut_and_count(mut self) {
        self.receiver.kill();
        self.source.cut().unwrap();
        self.receiver.mount.cut().unwrap();
        assert_eq!(spool(self.src()), Default::default(), "left at the source");
        assert_eq!(
            spool(self.receiver.data_dir()),
            self.expected,
            "the receiver lost copies it had answered for"
        );
    }
}

/// `drain recover` asks the receiver about every message (a query): the copies are answered
/// held, so the source removes its own; they must survive the power cut.
#[test]
fn copies_a_query_finds_held_survive_a_power_cut() {
    if !fuse_available() {
        return;
    }
    let w = Window::new("held-query", "127.0.0.64");
    let inst = drain::instance::Instance::open(w.src()).unwrap();
    let run_id = drain::base::MessageId::random().unwrap().to_string();
    let marker = drain::journal::RunMarker::new(&inst.id, &run_id, 1, vec![w.receiver.dest()]);
    drain::journal::write_marker(w.src(), &marker).unwrap();
    let o = run(w.src(), &["--ca-cert", &w.ca(), "recover", "--json"]);
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "drain recover ({e}): {}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    assert!(o.status.success(), "drain recover: {out}");
    assert_eq!(out["held"][w.receiver.dest()], 8, "{out}");
    assert_eq!(out["removed"], 8, "{out}");
    w.cut_and_count();
}

/// A drain sends the messages: the receiver finds each already in its spool (`already_held`),
/// so the source removes its own; they must survive the power cut.
#[test]
fn copies_a_transfer_finds_held_survive_a_power_cut() {
    if !fuse_available() {
        return;
    }
    let w = Window::new("held-transfer", "127.0.0.65");
    let o = run(
        w.src(),
        &["--ca-cert", &w.ca(), "--json", &w.receiver.dest()],
    );
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "drain: {report}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    w.cut_and_count();
}

/// A drain's run marker survives a power cut: when the journal is then lost too, the next
/// drain refuses (and asks for `drain recover`) instead of sending again what the lost run may
/// have delivered.
#[test]
fn a_run_marker_survives_a_power_cut_and_a_lost_journal_stops_the_next_drain() {
    if !fuse_available() {
        return;
    }
    let tmp = Tmp::new("marker");
    let source = volume(&tmp, "src");
    let src = source.mountpoint();
    // Down while the run starts: the run keeps retrying it, so it sends nothing.
    let mut receiver = Receiver::start(&tmp, "r0", "127.0.0.66");
    receiver.kill();
    drain::demo::fill(src, 3).unwrap();
    let ca = receiver.cert.display().to_string();
    let args: Vec<String> = ["--ca-cert", &ca, &receiver.dest()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let log = tmp.0.join("drain.log");
    let mut child = spawn_drain(src, &args, &log);
    let marker = src.join(drain::journal::MARKER_FILE);
    let deadline = Instant::now() + Duration::from_secs(60);
    // Logged once `begin` returned, i.e. after the marker's directory fsync: the marker's name
    // appearing is not enough (a kill between its rename and that fsync loses it, rightly).
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("drain run #1 started")
    {
        assert!(
            wait_up_to(&mut child, Duration::from_millis(5)).is_none(),
            "the drain ended: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "no run marker");
    }
    assert!(marker.exists(), "no run marker once the run started");
    let _ = child.kill();
    let _ = child.wait();
    source.cut().unwrap();
    // Lost: restored from an old backup, removed by hand.
    let _ = fs::remove_file(src.join("journal.redb"));
    receiver.spawn();
    let o = run(src, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "the drain went ahead: {stderr}");
    assert!(stderr.contains("recover` first"), "{stderr}");
}

/// `drain spool add` on a data directory that does not exist yet: once it printed the id, the
/// message and its `message.spooled` event survive a power cut (every directory it created is
/// durable).
#[test]
fn spool_add_into_a_fresh_data_dir_survives_a_power_cut() {
    if !fuse_available() {
        return;
    }
    let tmp = Tmp::new("fresh");
    let mount = volume(&tmp, "m");
    let data = mount.mountpoint().join("var").join("mail");
    let body = tmp.0.join("body.eml");
    fs::write(&body, b"Subject: hi\r\n\r\nhello\r\n").unwrap();
    let o = run(
        &data,
        &[
            "spool",
            "add",
            "--queue",
            "queue",
            "--from",
            "a@example.com",
            "--to",
            "b@example.net",
            body.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    mount.cut().unwrap();
    let held = spool(&data);
    assert_eq!(
        held.keys().collect::<Vec<_>>(),
        [&id],
        "the message is lost"
    );
    let events: Vec<String> = fs::read_dir(data.join("events"))
        .unwrap()
        .map(|de| de.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .collect();
    assert_eq!(events.len(), 1, "its event is lost: {events:?}");
}

/// A drain whose destinations never answer moves everything to a `--fallback-path` that does
/// not exist yet (exit 13) and removes its own copies: after a power cut the copies are in the
/// fallback directory, none lost.
#[test]
fn a_fresh_fallback_path_survives_a_power_cut() {
    if !fuse_available() {
        return;
    }
    let tmp = Tmp::new("fallback");
    let source = volume(&tmp, "src");
    let fb = volume(&tmp, "fb");
    let fallback = fb.mountpoint().join("new").join("fallback");
    drain::demo::fill(source.mountpoint(), 6).unwrap();
    let expected = spool(source.mountpoint());
    let o = run(
        source.mountpoint(),
        &[
            "--fallback-path",
            fallback.to_str().unwrap(),
            "--automatic-fallback-after",
            "1s",
            // Nothing listens there: refused, retried until the fallback is due.
            "127.0.0.67:9",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(13),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    source.cut().unwrap();
    fb.cut().unwrap();
    assert_eq!(spool(source.mountpoint()), Default::default());
    assert!(fallback.is_dir(), "the fallback directory is gone");
    assert_eq!(spool(&fallback), expected, "copies lost");
}

/// A drain's removals are made durable by one fsync of each queue directory as it ends
/// (`retire::close`). When the disk refuses that fsync, the drain must say so (exit 40:
/// delivered, removing local copies failed) and leave its run unfinished: a power cut then
/// brings the removed files back, and `drain resume` removes them again (same content as
/// journaled), sends nothing, and finishes the run.
#[test]
fn a_refused_closing_fsync_leaves_the_run_for_resume_after_a_power_cut() {
    if !fuse_available() {
        return;
    }
    let tmp = Tmp::new("closing-fsync");
    let source = volume(&tmp, "src");
    let mut receiver = Receiver::start(&tmp, "r0", "127.0.0.68");
    drain::demo::fill(source.mountpoint(), 8).unwrap();
    let expected = spool(source.mountpoint());
    let src = source.mountpoint();
    let ca = receiver.cert.display().to_string();
    source.fail_dir_sync(Path::new("spool/queue")).unwrap();
    let o = run(src, &["--ca-cert", &ca, "--json", &receiver.dest()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(40), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let reason = report["removals_not_durable"][0]["reason"].as_str();
    assert!(
        reason.is_some_and(|r| r.contains("spool/queue")),
        "the report names the directory: {report}"
    );
    assert_eq!(report["removed"], 8, "{report}");
    let runs = common::inspect(src);
    assert_eq!(runs["runs"][0]["status"], "interrupted", "{runs}");
    source.heal().unwrap();

    receiver.kill();
    source.cut().unwrap();
    receiver.mount.cut().unwrap();
    assert_eq!(
        spool(src),
        expected,
        "the unlinks were never durable: all back"
    );
    receiver.spawn();
    let o = run(src, &["--ca-cert", &ca, "resume"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(err.matches("removed again, not sent").count(), 8, "{err}");
    assert_eq!(spool(src), Default::default(), "left at the source");
    assert_eq!(
        spool(receiver.data_dir()),
        expected,
        "each once on the receiver"
    );
    let runs = common::inspect(src);
    assert_eq!(runs["runs"][0]["status"], "finished", "{runs}");
}
