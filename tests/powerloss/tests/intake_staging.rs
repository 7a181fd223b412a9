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

#[test]
fn a_transfer_that_fails_leaves_no_copy_a_mail_server_can_take() {
    if !fuse_available() {
        return;
    }
    let tmp = Tmp::new("staging");
    let source = volume(&tmp, "src");
    let src = source.mountpoint();
    let mut receiver = Receiver::start(&tmp, "r0", "127.0.0.67");
    drain::demo::fill(src, 8).unwrap();
    let expected = spool(src);
    let ca = receiver.cert.display().to_string();
    let mut mail = MailServers::new(vec![Mailbox::new(receiver.data_dir())]);
    mail.start();

    receiver.mount.fail_dir_sync(Path::new("events")).unwrap();
    let args: Vec<String> = ["--ca-cert", &ca, &receiver.dest()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let log = tmp.0.join("drain.log");
    let mut child = spawn_drain(src, &args, &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !receiver.log_text().contains("storing a transfer failed") {
        assert!(
            Instant::now() < deadline,
            "no transfer failed:\n{}",
            receiver.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Whatever the failed transfers made visible, the mail server has had time to take.
    let _ = child.kill();
    let _ = child.wait();
    receiver.mount.heal().unwrap();

    let o = run(src, &["--ca-cert", &ca, "resume"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    mail.stop();
    assert_eq!(spool(src), Default::default(), "left at the source");
    // Every message exactly once on the receiver: delivered, or still in its spool.
    let mut copies = delivered(receiver.data_dir());
    copies.extend(spool(receiver.data_dir()));
    copies.sort();
    let want: Vec<_> = expected.into_iter().collect();
    assert_eq!(copies, want, "each message once, unchanged");
    receiver.kill();
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
    let tmp = Tmp::new("held-back");
    let source = volume(&tmp, "src");
    let src = source.mountpoint();
    let mut receiver = Receiver::start(&tmp, "r0", "127.0.0.68");
    drain::demo::fill(src, 8).unwrap();
    let expected = spool(src);
    let ca = receiver.cert.display().to_string();
    let mut mail = MailServers::new(vec![Mailbox::new(receiver.data_dir())]);
    mail.start();

    receiver.mount.fail_dir_sync(Path::new("events")).unwrap();
    let o = run(src, &["--ca-cert", &ca, &receiver.dest()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(
        spool(src),
        Default::default(),
        "the sender removed its copies"
    );
    let log = receiver.log_text();
    assert!(log.contains("storing a transfer failed"), "{log}");
    assert!(
        log.contains("not yet published"),
        "the finish was refused: {log}"
    );

    receiver.kill();
    receiver.mount.heal().unwrap();
    receiver.spawn();
    let log = receiver.log_text();
    assert!(log.contains("0 never answered for"), "{log}");
    mail.stop();
    let mut copies = delivered(receiver.data_dir());
    copies.extend(spool(receiver.data_dir()));
    copies.sort();
    let want: Vec<_> = expected.into_iter().collect();
    assert_eq!(copies, want, "each message once, unchanged");
    receiver.kill();
}
