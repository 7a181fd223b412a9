//! `--scale`: what a large spool costs (issue 15, deliverable 5), at N messages against N/10:
//! 1. peak RSS of the drain (wait4 `ru_maxrss`) and of each `drain serve` (`VmHWM` after each
//!    drain) for a drain of N/10, then of N messages;
//! 2. a drain of a fresh spool of N, SIGKILLed once the destinations have stored N/10 of it;
//!    then `drain resume`, timed until a destination stores a message again (its metrics
//!    counter; the killed run's last requests are let settle first), then stopped with SIGTERM
//!    and timed to its exit;
//! 3. `drain inspect` of that interrupted run, and of the finished N run, timed.
//!
//! Targets: RSS ratio at most 1.2, drain at most 64 MiB, each serve at most 128 MiB, resume
//! and inspect within 5 s. Use `--sizes small` (1 KiB bodies) for a million messages: about
//! 4 GiB of files per million on ext4, three spools of them over the run.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use drain::demo::Sizes;

use crate::setup::{
    Destinations, Servers, drain_command, fill, peak_rss_kib, start_destinations, stored_total,
};
use crate::{Run, drain_run};

/// Resume and inspect must take at most this long (issue 15).
const WITHIN: f64 = 5.0;

pub fn run(base: &Path, n: usize, sizes: Sizes) -> anyhow::Result<()> {
    let mut servers = Servers(Vec::new());
    let d = start_destinations(base, &mut servers, &[])?;
    let pids: Vec<u32> = servers.0.iter().map(|c| c.id()).collect();
    let to = (d.addrs.as_slice(), d.ca.as_path());
    println!("drain bench --scale: {n} messages against {}", n / 10);

    let small = drain_run(base, "drain (N/10)", n / 10, sizes, to, &pids, &[])?;
    let serve_small = serve_peaks(&pids)?;
    let big = drain_run(base, "drain", n, sizes, to, &pids, &[])?;
    let serve_big = serve_peaks(&pids)?;

    let (resume_secs, stop_secs) = interrupted(base, n, sizes, &d)?;
    let inspect_cut = inspect(&base.join("src-resume"))?;
    let inspect_done = inspect(&base.join(format!("src-{n}")))?;

    println!();
    Run::print_header();
    small.print();
    big.print();
    println!();
    let mib = |k: u64| k as f64 / 1024.0;
    if let (Some(b), Some(s)) = (big.rss_kib, small.rss_kib) {
        let ratio = b as f64 / s as f64;
        println!(
            "peak RSS, drain: {:.1} MiB at {n}, {:.1} MiB at {}: {ratio:.2}x (target: at most \
             1.2x and 64 MiB)",
            mib(b),
            mib(s),
            n / 10
        );
    }
    for (i, (b, s)) in serve_big.iter().zip(&serve_small).enumerate() {
        println!(
            "peak RSS, drain serve d{}: {:.1} MiB after {n}, {:.1} MiB after {}: {:.2}x \
             (target: at most 1.2x and 128 MiB)",
            i + 1,
            mib(*b),
            mib(*s),
            n / 10,
            *b as f64 / *s as f64
        );
    }
    println!(
        "drain resume of a run cut after {} of {n}: first message stored again after \
         {resume_secs:.2}s (target: within {WITHIN}s); stopped by SIGTERM in {stop_secs:.2}s",
        n / 10
    );
    println!(
        "drain inspect: {inspect_cut:.2}s for the interrupted run, {inspect_done:.2}s for the \
         finished run of {n} (target: within {WITHIN}s)"
    );
    Ok(())
}

/// Peak RSS so far of each serve, in KiB.
fn serve_peaks(pids: &[u32]) -> anyhow::Result<Vec<u64>> {
    pids.iter().map(|p| peak_rss_kib(*p)).collect()
}

/// Messages stored by both destinations so far.
fn stored(d: &Destinations) -> anyhow::Result<u64> {
    d.metrics.iter().map(|m| stored_total(m)).sum()
}

/// Waits until `cond` holds, polling every 20 ms; fails if `child` exits first.
fn wait_until(
    child: &mut Child,
    what: &str,
    mut cond: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    while !cond()? {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("{what} exited ({status}) before it was measured");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Cuts a drain of N after N/10, resumes it; returns the seconds until the resume stored a
/// message and the seconds its SIGTERM took.
fn interrupted(
    base: &Path,
    n: usize,
    sizes: Sizes,
    d: &Destinations,
) -> anyhow::Result<(f64, f64)> {
    let src = base.join("src-resume");
    fill(&src, n, sizes)?;
    let start = stored(d)?;
    let drain = |resume: bool| {
        let mut c = drain_command(&src, &[]);
        c.arg("--ca-cert").arg(&d.ca);
        // The resume goes to the run's own destinations.
        if resume {
            c.arg("resume");
        } else {
            c.args(&d.addrs);
        }
        c.stdout(Stdio::null())
            .spawn()
            .context("cannot start `drain`")
    };
    let mut first = drain(false)?;
    let cut = (n / 10) as u64;
    wait_until(&mut first, "the first drain", || {
        Ok(stored(d)? - start >= cut)
    })?;
    first.kill()?;
    first.wait()?;
    // The serves finish requests whose client went away: let those land first.
    let mut settled = stored(d)?;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = stored(d)?;
        if now == settled {
            break;
        }
        settled = now;
    }
    let began = Instant::now();
    let mut resumed = drain(true)?;
    wait_until(&mut resumed, "drain resume", || Ok(stored(d)? > settled))?;
    let resume_secs = began.elapsed().as_secs_f64();
    // SAFETY: kill has no memory preconditions; the child is ours and not yet reaped.
    unsafe { libc::kill(resumed.id() as libc::pid_t, libc::SIGTERM) };
    let stopping = Instant::now();
    let status = resumed.wait()?;
    let stop_secs = stopping.elapsed().as_secs_f64();
    // product.md: 42 is "stopped by SIGTERM or SIGINT after a clean shutdown".
    ensure!(
        status.code() == Some(42),
        "drain resume should exit 42 after SIGTERM: {status}"
    );
    Ok((resume_secs, stop_secs))
}

/// Seconds `drain inspect` of `data_dir`'s latest run takes; it must exit 0.
fn inspect(data_dir: &Path) -> anyhow::Result<f64> {
    let began = Instant::now();
    let out = drain_command(data_dir, &[])
        .arg("inspect")
        .stdout(Stdio::piped())
        .output()
        .context("cannot run `drain inspect`")?;
    let secs = began.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "drain inspect of {} failed ({}): {}",
        data_dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(secs)
}
