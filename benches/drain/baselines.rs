//! What an operator could do instead of `drain`: move the spool's files to a local directory
//! with the spool's durability, or push them with `rsync --fsync` to an rsync daemon.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, ensure};

use crate::Run;
use crate::setup::{Servers, command, fill, free_port, message_files, wait_accepting};

/// Files per directory fsync in the local move.
const LOCAL_BATCH: usize = 64;

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    let sync = fs::File::open(dir).and_then(|d| d.sync_all());
    sync.with_context(|| format!("fsync {}", dir.display()))
}

/// Moves a spool's files into a local directory with the spool's durability, timed: read,
/// write a temp file, fsync, rename, fsync the directories once per batch of 64, delete the
/// originals.
pub fn local_move(base: &Path, n: usize, sizes: drain::demo::Sizes) -> anyhow::Result<Run> {
    let src = base.join("local-src");
    let bytes = fill(&src, n, sizes)?;
    let dst = base.join("local-dst");
    let tmp = dst.join("spool/.tmp");
    fs::create_dir_all(&tmp)?;
    let start = Instant::now();
    for batch in message_files(&src)?.chunks(LOCAL_BATCH) {
        let (mut dst_dirs, mut src_dirs) = (BTreeSet::new(), BTreeSet::new());
        for path in batch {
            let (name, queue) = (path.file_name().unwrap(), path.parent().unwrap());
            let t = tmp.join(name);
            let mut f = fs::File::create_new(&t)?;
            f.write_all(&fs::read(path)?)?;
            f.sync_all()?;
            let d = dst.join("spool").join(queue.file_name().unwrap());
            if dst_dirs.insert(d.clone()) {
                fs::create_dir_all(&d)?;
            }
            fs::rename(&t, d.join(name))?;
            src_dirs.insert(queue);
        }
        for d in &dst_dirs {
            sync_dir(d)?;
        }
        for path in batch {
            fs::remove_file(path)?;
        }
        for d in src_dirs {
            sync_dir(d)?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    ensure!(message_files(&dst)?.len() == n, "the local move lost files");
    ensure!(message_files(&src)?.is_empty(), "the local move left files");
    let _ = fs::remove_dir_all(&dst);
    Ok(Run::new("local move", n, bytes, secs, None))
}

/// `rsync -a --fsync --remove-source-files <spool>/ rsync://127.0.0.4:PORT/spool/` to an
/// rsync daemon started here on loopback, timed from the client's start to its exit; None
/// (with a note) when `rsync` is not on PATH.
pub fn rsync(base: &Path, n: usize, sizes: drain::demo::Sizes) -> anyhow::Result<Option<Run>> {
    if !crate::setup::on_path("rsync") {
        println!("rsync not found: the rsync --fsync case is skipped (apt-get install -y rsync)");
        return Ok(None);
    }
    let src = base.join("rsync-src");
    let bytes = fill(&src, n, sizes)?;
    // The module is the destination's `spool/`, so `message_files` counts what arrived.
    let dst = base.join("rsync-dst");
    fs::create_dir_all(dst.join("spool"))?;
    let ip = "127.0.0.4";
    let port = free_port(ip)?;
    let conf = base.join("rsyncd.conf");
    // As root the daemon would switch to `nobody`: keep whoever runs the bench.
    // SAFETY: getuid and getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    fs::write(
        &conf,
        format!(
            "use chroot = false\nuid = {uid}\ngid = {gid}\nlog file = {}\npid file = {}\n\n\
             [spool]\npath = {}\nread only = false\n",
            base.join("rsyncd.log").display(),
            base.join("rsyncd.pid").display(),
            dst.join("spool").display(),
        ),
    )?;
    let mut daemon = Servers(vec![
        command("rsync")
            .arg("--daemon")
            .arg("--no-detach")
            .arg(format!("--config={}", conf.display()))
            .args(["--address", ip, "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the rsync daemon")?,
    ]);
    wait_accepting(
        &format!("{ip}:{port}"),
        &mut daemon.0[0],
        "the rsync daemon",
    )?;

    let start = Instant::now();
    let out = command("rsync")
        .args(["-a", "--fsync", "--remove-source-files"])
        .arg(format!("{}/", src.join("spool").display()))
        .arg(format!("rsync://{ip}:{port}/spool/"))
        .output()
        .context("cannot run rsync")?;
    let secs = start.elapsed().as_secs_f64();
    drop(daemon);
    ensure!(
        out.status.success(),
        "rsync failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (arrived, left) = (message_files(&dst)?.len(), message_files(&src)?.len());
    ensure!(
        (arrived, left) == (n, 0),
        "rsync: expected {n} files on the daemon and 0 left; got {arrived} and {left}"
    );
    let _ = fs::remove_dir_all(&dst);
    Ok(Some(Run::new("rsync --fsync", n, bytes, secs, None)))
}
