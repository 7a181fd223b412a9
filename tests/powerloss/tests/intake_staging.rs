//! A receiver's copy must not be visible to its mail server before the receiver can answer
//! for it. A real mail server takes every message file it finds in its queue; once it has,
//! only the dedupe record tells a sender asking about an in-doubt message that it was taken.
//! So a copy that appears before its dedupe record is durable, in a transfer that then fails,
//! is delivered and then sent again: a duplicate.
//!
//! Built deterministically: the receiver's events directory refuses its fsync, so every
//! transfer fails after its files are written; a mail server takes every `.msg` it sees.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::mail::{MailServers, Mailbox};
use common::{Receiver, Tmp, delivered, fuse_available, run, spawn_drain, spool, volume};
use drain_powerloss::Mount;

/// A sender with 8 messages; a receiver whose events directory refuses its fsync, so every
/// transfer fails after its copies are written; beside it a mail server taking every `.msg`.
struct Scene {
    receiver: Receiver,
    source: Mount,
    expected: std::collections::BTreeMap<String, (String, String)>,
    ca: String,
    mail: MailServers,
    // Last: removed after the mounts are gone.
    tmp: Tmp,
}

impl Scene {
    fn new(tag: &str, ip: &str) -> Scene {
        let tmp = Tmp::new(tag);
        let source = volume(&tmp, "src");
        let receiver = Receiver::start(&tmp, "r0", ip);
        drain::demo::fill(source.mountpoint(), 8).unwrap();
        let expected = spool(source.mountpoint());
        let ca = receiver.cert.display().to_string();
        let mut mail = MailServers::new(vec![Mailbox::new(receiver.data_dir())]);
        mail.start();
        receiver.mount.fail_dir_sync(Path::new("events")).unwrap();
        Scene {
            receiver,
            source,
            expected,
            ca,
            mail,
            tmp,
        }
    }

    fn src(&self) -> &Path {
        self.source.mountpoint()
    }

    /// Stops the mail server; then every message must be on the receiver exactly once,
    /// unchanged (delivered, or still in its spool), and none at the source.
    fn assert_each_once(mut self) {
        self.mail.stop();
        assert_eq!(spool(self.src()), Default::default(), "left at the source");
        let mut copies = delivered(self.receiver.data_dir());
        copies.extend(spool(self.receiver.data_dir()));
        copies.sort();
        let want: Vec<_> = std::mem::take(&mut self.expected).into_iter().collect();
        assert_eq!(copies, want, "each message once, unchanged");
        self.receiver.kill();
    }
}

#[test]
fn a_transfer_that_fails_leaves_no_copy_a_mail_server_can_take() {
    if !fuse_available() {
        return;
    }
    let s = Scene::new("staging", "127.0.0.67");
    let args: Vec<String> = ["--ca-cert", &s.ca, &s.receiver.dest()]
        .iter()
        .map(|a| a.to_string())
        .collect();
    let mut child = spawn_drain(s.src(), &args, &s.tmp.0.join("drain.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !s.receiver.log_text().contains("storing a transfer failed") {
        assert!(
            Instant::now() < deadline,
            "no transfer failed:\n{}",
            s.receiver.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Whatever the failed transfers made visible, the mail server has had time to take.
    let _ = child.kill();
    let _ = child.wait();
    s.receiver.mount.heal().unwrap();

    let o = run(s.src(), &["--ca-cert", &s.ca, "resume"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    s.assert_each_once();
}

/// Copies whose dedupe records are durable but which could not be published (their events
/// failed) are held back, staged; a query answers them held, so the sender removes its own
/// and its run finishes. That finish must not drop their keys: the keys are what publishes
/// them at the next start. Here the receiver is restarted only after the run finished.
#[test]
fn copies_held_back_survive_their_run_s_finish_and_a_restart() {
    if !fuse_available() {
        return;
    }
    let mut s = Scene::new("held-back", "127.0.0.68");
    let o = run(s.src(), &["--ca-cert", &s.ca, &s.receiver.dest()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let log = s.receiver.log_text();
    assert!(log.contains("storing a transfer failed"), "{log}");
    assert!(
        log.contains("not yet published"),
        "the finish was refused: {log}"
    );

    s.receiver.kill();
    s.receiver.mount.heal().unwrap();
    s.receiver.spawn();
    let log = s.receiver.log_text();
    assert!(log.contains("0 never answered for"), "{log}");
    s.assert_each_once();
}
