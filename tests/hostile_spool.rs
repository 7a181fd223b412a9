//! A spool that is not what it should be (issue: "nothing lost, nothing hangs"): a FIFO, a
//! symlink to `/dev/zero`, a directory, sparse files of 400 MiB and 3 GiB, each named like a
//! message. None may hang or exhaust memory: each is reported as unreadable by name (exit 11),
//! left in place, and every regular message is drained exactly once.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// Runs `drain --data-dir DIR ARGS...`, failing the test if it has not ended within `limit`
/// (a hang is exactly what this file tests for).
fn drain_within(dir: &Path, args: &[&str], limit: Duration) -> Ran {
    run_logged(
        dir,
        args,
        &dir.with_extension(args[0].trim_start_matches('-')),
        limit,
    )
}

/// Plants the hostile files in the `queue` directory; returns their paths.
fn plant(src: &Path) -> Vec<PathBuf> {
    let q = src.join("spool/queue");
    let name = |n: u8| q.join(format!("{}.msg", format!("{n:02x}").repeat(16)));
    let fifo = name(0xf1);
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let link = name(0xf2);
    std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
    let dir = name(0xf3);
    std::fs::create_dir(&dir).expect("mkdir");
    let sparse = name(0xf4);
    std::fs::File::create(&sparse)
        .and_then(|f| f.set_len(400 << 20))
        .expect("sparse 400 MiB");
    let huge = name(0xf5);
    std::fs::File::create(&huge)
        .and_then(|f| f.set_len(3 << 30))
        .expect("sparse 3 GiB");
    vec![fifo, link, dir, sparse, huge]
}

#[test]
fn special_files_are_named_unreadable_and_never_hang() {
    let tmp = TempDir::new("hostile");
    let a = Server::start(&tmp, "a", ServeConfig::on("127.0.0.91"));
    let src = tmp.sub("src");
    let expected = fill(&src, 20);
    let bad = plant(&src);

    // `spool ls` lists the 20 messages, names every bad file, and ends (exit 1).
    let o = drain_within(&src, &["spool", "ls", "--json"], Duration::from_secs(60));
    assert_eq!(o.code, 1, "{}", o.stderr);
    let listed = o.stdout.lines().count();
    assert_eq!(listed, 20, "{}", o.stderr);
    let err = &o.stderr;
    for p in &bad {
        assert!(
            err.contains(&*p.to_string_lossy()),
            "{p:?} not named:\n{err}"
        );
    }
    assert!(
        err.contains("a FIFO") && err.contains("a symbolic link"),
        "{err}"
    );

    // The drain: exit 11 (some messages unreadable), every bad file named and left in place,
    // every regular message delivered once with its hash, within a small memory budget.
    let ca = ca_bundle(&tmp, &[&a]);
    let o = drain_within(
        &src,
        &[
            "--ca-cert",
            &ca.to_string_lossy(),
            "--max-in-flight-bytes",
            "8000000",
            &a.dest(),
        ],
        Duration::from_secs(120),
    );
    assert_eq!(o.code, 11, "{}{}", o.stdout, o.stderr);
    let out = format!("{}{}", o.stdout, o.stderr);
    for p in &bad {
        assert!(
            out.contains(&*p.to_string_lossy()),
            "{p:?} not named:\n{out}"
        );
        assert!(std::fs::symlink_metadata(p).is_ok(), "{p:?} was removed");
    }
    let held = census(&[&a]);
    assert_eq!(held.len(), expected.len(), "{held:?}");
    for (id, (q, hash)) in &expected {
        let (_, e) = held.get(id).expect("delivered");
        assert_eq!((&e.queue, &e.hash), (q, hash), "{id}");
    }
}

/// A file named like a received copy a `drain serve` staged, on an instance that never
/// served: nothing can settle it and the scan skips it (it is not a message), but a drain must
/// not call the spool empty: exit 12, the file named and left in place.
#[test]
fn a_file_named_like_a_staged_copy_is_named_not_skipped() {
    let tmp = TempDir::new("hostile-staged");
    let a = Server::start(&tmp, "a", ServeConfig::on("127.0.0.92"));
    let src = tmp.sub("src");
    let expected = fill(&src, 5);
    let staged = src.join(format!(
        "spool/queue/.{}.{}.{}.staged",
        "ab".repeat(16),
        "cd".repeat(16),
        "ef".repeat(16)
    ));
    std::fs::write(&staged, b"not a message").expect("staged");
    let ca = ca_bundle(&tmp, &[&a]);
    let args = ["--ca-cert", &ca.to_string_lossy(), &a.dest()];
    let o = drain_within(&src, &args, Duration::from_secs(60));
    let out = format!("{}{}", o.stdout, o.stderr);
    assert_eq!(o.code, 12, "{out}");
    assert!(
        out.contains(&*staged.to_string_lossy()) && out.contains("left staged"),
        "{out}"
    );
    assert!(staged.exists(), "the staged file was removed");
    assert_eq!(census(&[&a]).len(), expected.len());
}
