//! `--profile DIR`: where a drain's time goes, on both sides. Two passes, each with fresh
//! destinations and a fresh spool of N messages:
//! 1. `perf record -e cpu-clock -g` of the drain (`DIR/drain.perf.data`) and of the first
//!    `drain serve` (`DIR/serve.perf.data`), each wrapping its process from start to exit;
//! 2. `strace -c -w -f` of the same two (`DIR/drain.strace`, `DIR/serve.strace`: calls and
//!    wall time per system call), from which it prints syncs per message on each side.
//!
//! The serve is stopped with SIGTERM after the drain so that its tool writes its output.
//! `benches/profile.sh` runs this and prints the top of both perf reports.

use std::ffi::OsString;
use std::fs;
use std::path::Path;

use anyhow::{Context, ensure};
use drain::demo::Sizes;

use crate::setup::{Servers, cpu_secs, message_files, on_path, start_destinations};

pub fn run(base: &Path, out: &Path, n: usize, sizes: Sizes) -> anyhow::Result<()> {
    for tool in ["perf", "strace"] {
        ensure!(
            on_path(tool),
            "{tool} not found (apt-get install -y {})",
            if tool == "perf" {
                "linux-perf"
            } else {
                "strace"
            }
        );
    }
    fs::create_dir_all(out)?;
    let out = fs::canonicalize(out)?;
    let file = |name: &str| out.join(name).into_os_string();
    let perf = |name: &str| -> Vec<OsString> {
        let mut w: Vec<OsString> = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "1000"]
            .map(OsString::from)
            .into();
        w.extend(["-g".into(), "-o".into(), file(name), "--".into()]);
        w
    };
    let strace = |name: &str| -> Vec<OsString> {
        let mut w: Vec<OsString> = ["strace", "-c", "-w", "-f"].map(OsString::from).into();
        w.extend(["-o".into(), file(name), "--".into()]);
        w
    };
    println!(
        "drain profile: {n} messages, {sizes:?} sizes, output in {}",
        out.display()
    );
    let passes = [
        ("perf", perf("drain.perf.data"), perf("serve.perf.data")),
        ("strace", strace("drain.strace"), strace("serve.strace")),
    ];
    let mut received = 0;
    for (name, wrap_drain, wrap_serve) in passes {
        let dir = base.join(name);
        fs::create_dir_all(&dir)?;
        let mut servers = Servers(Vec::new());
        let d = start_destinations(&dir, &mut servers, &wrap_serve)?;
        let (dests, ca) = (d.addrs, d.ca);
        let label = if name == "perf" {
            "under perf"
        } else {
            "under strace"
        };
        let pids = [serve_pid(servers.0[0].id())?];
        let to = (dests.as_slice(), ca.as_path());
        crate::drain_run(&dir, label, n, sizes, to, &pids, &wrap_drain)?;
        received = message_files(&dir.join("d1"))?.len();
        let cpu = cpu_secs(pids[0]).unwrap_or(f64::NAN);
        // SAFETY: kill has no memory effects; the serve is the tool's child, alive until reaped.
        unsafe { libc::kill(pids[0] as libc::pid_t, libc::SIGTERM) };
        let status = servers.0[0].wait()?;
        println!(
            "  serve 1: {received} messages received, {cpu:.1} CPU seconds in all; {name} exited {status}"
        );
    }
    println!();
    println!("syncs per message (strace pass; the serve's count includes its start and stop):");
    for (side, messages) in [("drain", n), ("serve", received)] {
        let text = fs::read_to_string(out.join(format!("{side}.strace")))?;
        let calls = |syscall: &str| syscall_calls(&text, syscall);
        let (fsync, fdatasync, syncfs) = (calls("fsync"), calls("fdatasync"), calls("syncfs"));
        let per = (fsync + fdatasync + syncfs) as f64 / messages as f64;
        println!(
            "  {side:<5}: {fsync} fsync + {fdatasync} fdatasync + {syncfs} syncfs for {messages} \
             messages = {per:.2} per message"
        );
    }
    Ok(())
}

/// The pid of the one child of `pid` (the serve its profiler started).
fn serve_pid(pid: u32) -> anyhow::Result<u32> {
    let children = format!("/proc/{pid}/task/{pid}/children");
    let text = fs::read_to_string(&children).context(children)?;
    let mut ids = text.split_whitespace();
    let (Some(id), None) = (ids.next(), ids.next()) else {
        anyhow::bail!("expected one child of {pid}, found {text:?}");
    };
    Ok(id.parse()?)
}

/// Calls of `syscall` in `strace -c` output (`% time seconds usecs/call calls [errors] name`).
fn syscall_calls(summary: &str, syscall: &str) -> u64 {
    summary
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5 && f.last() == Some(&syscall)).then(|| f[3].parse::<u64>().ok())?
        })
        .sum()
}
