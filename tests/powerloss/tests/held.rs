//! Copies a SIGKILLed `drain serve` left behind, then a power cut (issue 14, deliverable 3).
//!
//! `Spool::store_many` renames each fsynced file into its queue directory and then fsyncs the
//! directory. A SIGKILL between the two leaves copies that every process sees (the page cache
//! survives) but whose names are not durable. When a sender later asks about such a copy, the
//! receiver answers "held" from its spool and the sender removes its own copy; so the receiver
//! must make the names durable before it answers (`Store::held_blocking` for a query,
//! `Store::make_durable` for a transfer that finds the copy), or a power cut loses the message
//! on both sides. The random harness almost never stops a receiver in that window; these tests
//! build the window deterministically on a power-loss mount.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;

use common::{Receiver, Tmp, fuse_available, run, spool, volume};

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
            let bytes = fs::read(source.mountpoint().join("spool").join(queue).join(&name)).unwrap();
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
    let o = run(w.src(), &["--ca-cert", &w.ca(), "--json", &w.receiver.dest()]);
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "drain: {report}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    w.cut_and_count();
}
