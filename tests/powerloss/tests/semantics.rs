//! The file system's own semantics, checked on a real mount: what survives a power cut and what
//! does not. Each test mounts its own instance in a fresh temporary directory. Needs /dev/fuse
//! (and root, or a user allowed to mount FUSE); skips loudly only when /dev/fuse is missing.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use drain_powerloss::{CONTROL_NAME, Mount};

/// A mounted file system over a fresh backing directory; unmounted and removed on drop.
struct Fixture {
    dir: PathBuf,
    mount: Option<Mount>,
}

impl Fixture {
    /// `None` (after a loud message) when this machine has no FUSE device.
    fn new() -> Option<Fixture> {
        Fixture::with_backing(|_| {})
    }

    /// Like [`Fixture::new`], with `fill` run on the backing directory before mounting.
    fn with_backing(fill: impl FnOnce(&Path)) -> Option<Fixture> {
        if !Path::new("/dev/fuse").exists() {
            eprintln!(
                "\n*** SKIPPED: /dev/fuse is missing; power-loss tests cannot run here ***\n"
            );
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("powerloss-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for sub in ["backing", "mnt"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        fill(&dir.join("backing"));
        let mount = Mount::new(&dir.join("backing"), &dir.join("store"), &dir.join("mnt")).unwrap();
        Some(Fixture {
            dir,
            mount: Some(mount),
        })
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join("mnt").join(rel)
    }

    fn cut(&self) {
        self.mount.as_ref().unwrap().cut().unwrap();
    }

    fn sync(&self) {
        self.mount.as_ref().unwrap().sync().unwrap();
    }

    fn fsync_dir(&self, rel: &str) {
        File::open(self.p(rel)).unwrap().sync_all().unwrap();
    }

    /// Creates (or replaces the content of) a file, fsyncing it when `fsync`.
    fn write(&self, rel: &str, data: &[u8], fsync: bool) {
        let mut f = File::create(self.p(rel)).unwrap();
        f.write_all(data).unwrap();
        if fsync {
            f.sync_all().unwrap();
        }
    }

    fn read(&self, rel: &str) -> Option<Vec<u8>> {
        match fs::read(self.p(rel)) {
            Ok(data) => Some(data),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => panic!("reading {rel}: {e}"),
        }
    }

    fn names(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.p(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mount) = self.mount.take() {
            mount.unmount().unwrap();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn unsynced_data_is_lost_and_unsynced_names_vanish() {
    let Some(fx) = Fixture::new() else { return };
    fx.write("named", b"not synced", false);
    fx.fsync_dir("");
    fx.write("nameless", b"not synced either", false);
    assert_eq!(fx.read("named").as_deref(), Some(&b"not synced"[..]));
    fx.cut();
    // The name was made durable, the data never was.
    assert_eq!(fx.read("named").as_deref(), Some(&b""[..]));
    assert_eq!(fx.read("nameless"), None);
    assert_eq!(fx.names(""), ["named"]);
}

#[test]
fn fsynced_data_survives_with_its_name() {
    let Some(fx) = Fixture::new() else { return };
    fx.write("f", b"durable", true);
    fx.fsync_dir("");
    fx.cut();
    assert_eq!(fx.read("f").as_deref(), Some(&b"durable"[..]));
}

#[test]
fn fsynced_file_without_directory_fsync_is_gone() {
    let Some(fx) = Fixture::new() else { return };
    fx.write("f", b"durable data, volatile name", true);
    fx.cut();
    assert_eq!(fx.read("f"), None);
    assert!(fx.names("").is_empty());
}

#[test]
fn writes_after_the_last_fsync_are_lost() {
    let Some(fx) = Fixture::new() else { return };
    fx.write("f", b"0123456789", true);
    fx.fsync_dir("");
    let f = OpenOptions::new().write(true).open(fx.p("f")).unwrap();
    f.write_all_at(b"ab", 2).unwrap();
    f.write_all_at(b"tail", 10).unwrap();
    drop(f);
    assert_eq!(fx.read("f").as_deref(), Some(&b"01ab456789tail"[..]));
    fx.cut();
    assert_eq!(fx.read("f").as_deref(), Some(&b"0123456789"[..]));
}

#[test]
fn writes_through_an_o_dsync_descriptor_are_durable() {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(fx) = Fixture::new() else { return };
    fx.write("f", b"", true);
    fx.fsync_dir("");
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .open(fx.p("f"))
        .unwrap();
    f.write_all(b"synchronous").unwrap();
    drop(f);
    fx.cut();
    assert_eq!(fx.read("f").as_deref(), Some(&b"synchronous"[..]));
}

#[test]
fn only_fsynced_ranges_of_a_large_file_survive() {
    let Some(fx) = Fixture::new() else { return };
    let mut expect: Vec<u8> = (0..3 << 20)
        .map(|i: u32| (i * 7 + i / 4096) as u8)
        .collect();
    fx.write("big", &expect, true);
    fx.fsync_dir("");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.p("big"))
        .unwrap();
    for (off, byte) in [(5usize, 1u8), (1 << 20, 2), ((3 << 20) - 3, 3)] {
        let patch = vec![byte; 4000];
        f.write_all_at(&patch, off as u64).unwrap();
        expect.resize(expect.len().max(off + patch.len()), 0);
        expect[off..off + patch.len()].copy_from_slice(&patch);
    }
    f.sync_data().unwrap();
    f.write_all_at(&[9; 100], 200).unwrap();
    drop(f);
    fx.cut();
    assert!(
        fx.read("big").unwrap() == expect,
        "content differs from the fsynced state"
    );
}

#[test]
fn rename_is_durable_only_after_the_directory_fsync() {
    let Some(fx) = Fixture::new() else { return };
    fx.write("old", b"content", true);
    fx.fsync_dir("");
    fs::rename(fx.p("old"), fx.p("new")).unwrap();
    fx.cut();
    assert_eq!(fx.names(""), ["old"]);
    assert_eq!(fx.read("old").as_deref(), Some(&b"content"[..]));

    fs::rename(fx.p("old"), fx.p("new")).unwrap();
    fx.fsync_dir("");
    fx.cut();
    assert_eq!(fx.names(""), ["new"]);
    assert_eq!(fx.read("new").as_deref(), Some(&b"content"[..]));
}

#[test]
fn rename_over_an_existing_name() {
    let Some(fx) = Fixture::new() else { return };
    fx.write("target", b"old", true);
    fx.fsync_dir("");

    // Not made durable: the old target comes back and the temporary name never existed.
    fx.write("tmp", b"new", true);
    fs::rename(fx.p("tmp"), fx.p("target")).unwrap();
    fx.cut();
    assert_eq!(fx.names(""), ["target"]);
    assert_eq!(fx.read("target").as_deref(), Some(&b"old"[..]));

    // The write-fsync-rename-fsync(dir) sequence: the new content is durable.
    fx.write("tmp", b"new", true);
    fs::rename(fx.p("tmp"), fx.p("target")).unwrap();
    fx.fsync_dir("");
    fx.cut();
    assert_eq!(fx.names(""), ["target"]);
    assert_eq!(fx.read("target").as_deref(), Some(&b"new"[..]));

    // Without the file's fsync the durable name points to a file with no durable data.
    fx.write("tmp", b"newer", false);
    fs::rename(fx.p("tmp"), fx.p("target")).unwrap();
    fx.fsync_dir("");
    fx.cut();
    assert_eq!(fx.read("target").as_deref(), Some(&b""[..]));
}

#[test]
fn unlink_is_durable_only_after_the_directory_fsync() {
    let Some(fx) = Fixture::new() else { return };
    fx.write("f", b"content", true);
    fx.fsync_dir("");
    fs::remove_file(fx.p("f")).unwrap();
    assert_eq!(fx.read("f"), None);
    fx.cut();
    assert_eq!(fx.read("f").as_deref(), Some(&b"content"[..]));

    fs::remove_file(fx.p("f")).unwrap();
    fx.fsync_dir("");
    fx.cut();
    assert_eq!(fx.read("f"), None);
}

#[test]
fn an_unlinked_open_file_can_still_make_its_data_durable() {
    let Some(fx) = Fixture::new() else { return };
    fx.write("f", b"first", true);
    fx.fsync_dir("");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.p("f"))
        .unwrap();
    fs::remove_file(fx.p("f")).unwrap();
    f.write_all_at(b"second", 0).unwrap();
    f.sync_all().unwrap();
    let mut seen = String::new();
    f.read_to_string(&mut seen).unwrap();
    assert_eq!(seen, "second");
    fx.cut();
    // The unlink was never made durable; the data written through the open file was.
    assert_eq!(fx.read("f").as_deref(), Some(&b"second"[..]));
    // The descriptor died with the power.
    assert!(f.write_all_at(b"x", 0).is_err());
}

#[test]
fn truncate_and_extend_follow_fsync() {
    let Some(fx) = Fixture::new() else { return };
    fx.write("f", b"0123456789", true);
    fx.fsync_dir("");
    let f = OpenOptions::new().write(true).open(fx.p("f")).unwrap();
    f.set_len(3).unwrap();
    drop(f);
    fx.cut();
    assert_eq!(fx.read("f").as_deref(), Some(&b"0123456789"[..]));

    let f = OpenOptions::new().write(true).open(fx.p("f")).unwrap();
    f.set_len(3).unwrap();
    f.set_len(6).unwrap();
    f.sync_all().unwrap();
    f.set_len(1).unwrap();
    drop(f);
    fx.cut();
    assert_eq!(fx.read("f").as_deref(), Some(&b"012\0\0\0"[..]));

    // Truncation at open (O_TRUNC) is the same setattr.
    File::create(fx.p("f")).unwrap().sync_all().unwrap();
    fx.cut();
    assert_eq!(fx.read("f").as_deref(), Some(&b""[..]));
}

#[test]
fn nested_directories_need_every_level_fsynced() {
    let Some(fx) = Fixture::new() else { return };
    fs::create_dir_all(fx.p("a/b")).unwrap();
    fx.write("a/b/f", b"deep", true);
    fx.fsync_dir("a/b");
    fx.fsync_dir("a");
    fx.cut();
    // The root never learned about `a`.
    assert!(fx.names("").is_empty());

    fs::create_dir_all(fx.p("a/b")).unwrap();
    fx.write("a/b/f", b"deep", true);
    fx.fsync_dir("");
    fx.cut();
    // `a` is durable, but it was never fsynced: it is empty.
    assert_eq!(fx.names(""), ["a"]);
    assert!(fx.names("a").is_empty());

    fs::create_dir_all(fx.p("a/b")).unwrap();
    fx.write("a/b/f", b"deep", true);
    fx.fsync_dir("a/b");
    fx.fsync_dir("a");
    fx.cut();
    assert_eq!(fx.read("a/b/f").as_deref(), Some(&b"deep"[..]));

    // rmdir, like unlink, waits for the parent's fsync.
    fs::remove_file(fx.p("a/b/f")).unwrap();
    fs::remove_dir(fx.p("a/b")).unwrap();
    fx.cut();
    assert_eq!(fx.read("a/b/f").as_deref(), Some(&b"deep"[..]));
    fs::remove_file(fx.p("a/b/f")).unwrap();
    fs::remove_dir(fx.p("a/b")).unwrap();
    fx.fsync_dir("a");
    fx.cut();
    assert!(fx.names("a").is_empty());
}

#[test]
fn a_file_moved_between_directories_needs_both_fsynced() {
    let Some(fx) = Fixture::new() else { return };
    fs::create_dir(fx.p("from")).unwrap();
    fs::create_dir(fx.p("to")).unwrap();
    fx.write("from/f", b"moving", true);
    fx.fsync_dir("from");
    fx.fsync_dir("");
    fs::rename(fx.p("from/f"), fx.p("to/f")).unwrap();
    fx.fsync_dir("to");
    fx.cut();
    // Only the target was fsynced: the file is in both places (stricter than ext4).
    assert_eq!(fx.read("from/f").as_deref(), Some(&b"moving"[..]));
    assert_eq!(fx.read("to/f").as_deref(), Some(&b"moving"[..]));
    // They are independent files now.
    fx.write("to/f", b"changed", true);
    assert_eq!(fx.read("from/f").as_deref(), Some(&b"moving"[..]));
}

#[test]
fn sync_makes_everything_durable() {
    let Some(fx) = Fixture::new() else { return };
    fs::create_dir(fx.p("d")).unwrap();
    fx.write("d/f", b"synced by sync", false);
    fx.sync();
    fx.write("d/g", b"after the sync", false);
    fx.cut();
    assert_eq!(fx.names("d"), ["f"]);
    assert_eq!(fx.read("d/f").as_deref(), Some(&b"synced by sync"[..]));
}

#[test]
fn mode_and_mtime_are_durable_with_fsync() {
    let Some(fx) = Fixture::new() else { return };
    fx.write("f", b"x", true);
    fx.fsync_dir("");
    let mode = |fx: &Fixture| fs::metadata(fx.p("f")).unwrap().permissions().mode() & 0o777;
    let before = mode(&fx);
    fs::set_permissions(fx.p("f"), fs::Permissions::from_mode(0o600)).unwrap();
    fx.cut();
    assert_eq!(mode(&fx), before);

    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    let f = File::open(fx.p("f")).unwrap();
    fs::set_permissions(fx.p("f"), fs::Permissions::from_mode(0o600)).unwrap();
    f.set_modified(when).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fx.cut();
    assert_eq!(mode(&fx), 0o600);
    assert_eq!(fs::metadata(fx.p("f")).unwrap().modified().unwrap(), when);
}

#[test]
fn the_mount_starts_durable_and_hides_the_control_file() {
    let Some(fx) = Fixture::with_backing(|b| {
        fs::create_dir(b.join("d")).unwrap();
        fs::write(b.join("d/f"), b"preexisting").unwrap();
    }) else {
        return;
    };
    fx.write("d/f", b"overwritten", false);
    assert_eq!(fx.names(""), ["d"]);
    assert!(fx.p(CONTROL_NAME).exists());
    fx.cut();
    assert_eq!(fx.read("d/f").as_deref(), Some(&b"preexisting"[..]));
}

#[test]
fn exclusive_locks_work_on_the_mount() {
    let Some(fx) = Fixture::new() else { return };
    fx.write("lock", b"", true);
    let a = File::open(fx.p("lock")).unwrap();
    let b = File::open(fx.p("lock")).unwrap();
    a.try_lock().unwrap();
    assert!(b.try_lock().is_err());
    drop(a);
    b.try_lock().unwrap();
}

/// A directory read in several requests while other names are created in it returns each name
/// that did not change exactly once (POSIX readdir). The model once listed by position afresh
/// for every request, so names created before the reader's position shifted the rest and one
/// was returned twice: `drain` then saw an event or a spool file twice.
#[test]
fn a_directory_read_while_it_changes_lists_each_old_name_once() {
    let Some(fx) = Fixture::new() else { return };
    fs::create_dir(fx.p("d")).unwrap();
    let old: Vec<String> = (0..3000)
        .map(|i| format!("m{i:06}-{}", "x".repeat(40)))
        .collect();
    for n in &old {
        fx.write(&format!("d/{n}"), b"", false);
    }
    let mut seen: Vec<String> = Vec::new();
    let mut rd = fs::read_dir(fx.p("d")).unwrap();
    seen.push(
        rd.next()
            .unwrap()
            .unwrap()
            .file_name()
            .into_string()
            .unwrap(),
    );
    // Names that sort before every old one, created while the reader is at the start.
    for i in 0..500 {
        fx.write(&format!("d/a{i:06}"), b"", false);
    }
    for e in rd {
        seen.push(e.unwrap().file_name().into_string().unwrap());
    }
    let mut olds: Vec<&String> = seen.iter().filter(|n| n.starts_with('m')).collect();
    let listed = olds.len();
    olds.sort();
    olds.dedup();
    assert_eq!(listed, olds.len(), "an old name was listed twice");
    assert_eq!(olds.len(), old.len(), "an old name was skipped");
}
