//! `drain serve --spool-sync filesystem` under power loss, on a real ext4: the receiver writes
//! a transfer's copies without an fsync each and makes them durable with one `syncfs(2)`
//! before it answers. FUSE does not pass a `syncfs` on, so the receiver's data directory is
//! ext4 on a loop device over an image on a power-loss mount (`Ext4Disk`): ext4 turns the
//! `syncfs` into a flush the power-loss file system sees, and a cut loses every write since.
//!
//! The sender's data directory is on the real disk (never cut), so an acknowledged copy the
//! receiver loses is a message lost, and one it delivers twice is a duplicate: beside the
//! receiver runs a mail server taking every `<id>.msg` it sees.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::mail::{MailServers, Mailbox};
use common::{
    Receiver, Rng, Tmp, delivered, fuse_available, spawn_drain, spool, until_success, wait_up_to,
};
use drain_powerloss::Ext4Disk;

type Census = BTreeMap<String, (String, String)>;

/// What a scene is made of.
struct Setup {
    /// The receiver's `--spool-sync`.
    sync: &'static str,
    /// A mail server beside the receiver, taking every `<id>.msg`.
    mail: bool,
    /// The sender's data directory on ext4 over a power-loss mount too (cut with the
    /// receiver's), instead of the real disk.
    source_on_ext4: bool,
}

/// A sender (on the real disk, or on ext4 over a power-loss mount) and a receiver on ext4 over
/// a power-loss mount.
struct Scene {
    /// Dropped first: it uses the receiver's disk.
    mail: Option<MailServers>,
    receiver: Receiver<Ext4Disk>,
    source_disk: Option<Ext4Disk>,
    source: PathBuf,
    ca: String,
    tmp: Tmp,
}

impl Scene {
    fn new(tag: &str, ip: &str, setup: Setup) -> Option<Scene> {
        if !fuse_available() {
            return None;
        }
        if let Err(why) = Ext4Disk::available() {
            eprintln!("\n*** SKIPPED: {why}; ext4 on a power-loss mount cannot be built ***\n");
            return None;
        }
        let tmp = Tmp::new(tag);
        // Room for every round's messages (they stay on the receiver) and the journal.
        let size_mib = 64 + 4 * rounds() as u64;
        let disk = Ext4Disk::new(&tmp.0, size_mib).unwrap();
        let extra = ["--spool-sync".to_string(), setup.sync.to_string()];
        let receiver = Receiver::start_on(disk, &tmp, "r0", ip, &extra);
        let log = receiver.log_text();
        let sync = setup.sync;
        assert!(log.contains(&format!("(--spool-sync {sync};")), "{log}");
        let mail = setup.mail.then(|| mail_server(receiver.data_dir()));
        let source_disk = setup
            .source_on_ext4
            .then(|| Ext4Disk::new(&tmp.0.join("src-disk"), size_mib).unwrap());
        let source = match &source_disk {
            Some(d) => d.mountpoint().join("src"),
            None => tmp.0.join("src"),
        };
        Some(Scene {
            ca: receiver.cert.display().to_string(),
            receiver,
            source_disk,
            mail,
            source,
            tmp,
        })
    }

    fn drain_args(&self, resume: bool) -> Vec<String> {
        let mut a = vec!["--ca-cert".to_string(), self.ca.clone()];
        a.push(if resume {
            "resume".to_string()
        } else {
            self.receiver.dest()
        });
        a
    }

    /// Adds `n` messages to the source; returns what it holds now.
    fn fill(&self, n: usize) -> Census {
        drain::demo::fill(&self.source, n).unwrap();
        spool(&self.source)
    }

    /// Kills the receiver and its mail server, cuts the power of the receiver (and of the
    /// source, if on ext4: every process using it must be gone), starts both again.
    fn cut(&mut self) {
        let with_mail = self.mail.take().map(|mut m| m.stop()).is_some();
        self.receiver.kill();
        self.receiver.mount.cut().unwrap();
        if let Some(d) = &mut self.source_disk {
            d.cut().unwrap();
        }
        self.receiver.spawn();
        self.mail = with_mail.then(|| mail_server(self.receiver.data_dir()));
    }

    /// Every message of `want` exactly once on the source, in the receiver's spool or
    /// delivered by its mail server, unchanged.
    fn assert_each_once(&mut self, want: &Census, context: &str) {
        if let Some(m) = &mut self.mail {
            m.stop();
        }
        let mut copies: Vec<_> = spool(&self.source).into_iter().collect();
        copies.extend(spool(self.receiver.data_dir()));
        copies.extend(delivered(self.receiver.data_dir()));
        copies.sort();
        let want: Vec<_> = want.clone().into_iter().collect();
        if copies != want {
            let seen: Vec<&str> = copies.iter().map(|(id, _)| id.as_str()).collect();
            let lost = want
                .iter()
                .filter(|(id, _)| !seen.contains(&id.as_str()))
                .count();
            panic!(
                "{context}: {} copies of {} messages ({lost} lost); receiver log:\n{}",
                copies.len(),
                want.len(),
                tail(&self.receiver.log_text())
            );
        }
        if let Some(m) = &mut self.mail {
            m.start();
        }
    }
}

fn mail_server(data_dir: &std::path::Path) -> MailServers {
    let mut m = MailServers::new(vec![Mailbox::new(data_dir)]);
    m.start();
    m
}

/// `DRAIN_SYNCFS_ROUNDS`, default 6.
fn rounds() -> usize {
    std::env::var("DRAIN_SYNCFS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

fn tail(s: &str) -> &str {
    let cut = s.len().saturating_sub(6000);
    let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    &s[cut..]
}

fn drain_log(tmp: &Tmp) -> PathBuf {
    tmp.0.join("drain.log")
}

/// A drain that finished: every message acknowledged and removed at the source. A power cut
/// right after must lose none of them: the one `syncfs` per transfer made each durable. No
/// mail server here: its own fsyncs would make the copies it takes durable.
#[test]
fn acknowledged_copies_survive_a_cut_after_one_syncfs_per_transfer() {
    finished_drain_then_cut("syncfs-acked", "127.0.0.71", "filesystem");
}

/// The same with an fsync per copy (`--spool-sync file`) on the same ext4.
#[test]
fn acknowledged_copies_survive_a_cut_with_an_fsync_per_copy() {
    finished_drain_then_cut("fsync-acked", "127.0.0.73", "file");
}

/// 60 messages drained to a receiver in `sync` mode (no mail server), the run finished, the
/// receiver's power cut: all 60 must be in its spool, unchanged.
fn finished_drain_then_cut(tag: &str, ip: &str, sync: &'static str) {
    let setup = Setup {
        sync,
        mail: false,
        source_on_ext4: false,
    };
    let Some(mut s) = Scene::new(tag, ip, setup) else {
        return;
    };
    let want = s.fill(60);
    until_success(&s.source, &s.drain_args(false), &drain_log(&s.tmp));
    assert_eq!(spool(&s.source), Census::new(), "the source is drained");
    s.cut();
    s.assert_each_once(&want, "after a finished drain and a cut");
}

/// At seeded random moments the drain and the receiver are killed and the receiver's power
/// is cut; the receiver starts again and `drain resume` finishes the run. After each round
/// every message is in one place exactly once.
#[test]
fn kills_and_cuts_at_random_moments_lose_and_duplicate_nothing() {
    let setup = Setup {
        sync: "filesystem",
        mail: true,
        source_on_ext4: false,
    };
    if let Some(s) = Scene::new("syncfs-random", "127.0.0.72", setup) {
        random_rounds(s);
    }
}

/// The same with the sender on ext4 over a power-loss mount too, both cut at once: the
/// drain's journal and its removals against ext4's own crash behaviour.
#[test]
fn both_sides_cut_at_random_moments_lose_and_duplicate_nothing() {
    let setup = Setup {
        sync: "filesystem",
        mail: true,
        source_on_ext4: true,
    };
    if let Some(s) = Scene::new("syncfs-both", "127.0.0.74", setup) {
        random_rounds(s);
    }
}

/// `DRAIN_SYNCFS_ROUNDS` (default 6) rounds, seeded by `DRAIN_SYNCFS_SEED`: 80 more messages,
/// a drain killed at a random moment with the power cut, `drain resume` to exit 0, a census.
fn random_rounds(mut s: Scene) {
    let mut rng = Rng::from_env("DRAIN_SYNCFS_SEED");
    let mut want = Census::new();
    for round in 1..=rounds() {
        want.extend(s.fill(80));
        let delay = Duration::from_millis(rng.below(250));
        let mut drain = spawn_drain(&s.source, &s.drain_args(false), &drain_log(&s.tmp));
        let code = wait_up_to(&mut drain, delay);
        let _ = drain.kill();
        let _ = drain.wait();
        s.cut();
        eprintln!("round {round}: cut after {delay:?} (drain exit {code:?})");
        until_success(&s.source, &s.drain_args(true), &drain_log(&s.tmp));
        s.assert_each_once(&want, &format!("round {round}, cut after {delay:?}"));
    }
    // A drain killed before its run began leaves nothing to resume: a last drain takes what
    // is left.
    until_success(&s.source, &s.drain_args(false), &drain_log(&s.tmp));
    s.assert_each_once(&want, "after the last drain");
    assert_eq!(spool(&s.source), Census::new(), "the source is drained");
}
