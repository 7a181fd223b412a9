//! Drain benchmark: throughput and memory of a real `drain` run on loopback, against what an
//! operator could do instead, as ratios. `benches/README.md` says how to run it and what each
//! line means.
//!
//! In one temporary directory it starts two `drain serve` destinations (127.0.0.2 and
//! 127.0.0.3, self-signed certificates). Every case gets a fresh spool of N messages filled by
//! `drain::demo::fill_with`: by default issue 15's workload W1 (log-normal sizes, median
//! 12 KiB, 200 B to 256 KiB, all four queue kinds, fixed seed; `--sizes typical` for the demo's
//! sizes). It measures:
//! - `local move`: the spool's files moved to a local directory with the spool's durability:
//!   read, write a temp file, fsync, rename, fsync the directories once per batch of 64,
//!   delete the originals;
//! - `rsync --fsync`: `rsync -a --fsync --remove-source-files` of the spool to an rsync daemon
//!   on 127.0.0.4 (what an operator would otherwise script); skipped with a note when `rsync`
//!   is missing (`apt-get install -y rsync`);
//! - `drain` as a child process draining to both destinations: wall time, msg/s, MB/s (10^6
//!   bytes) and the child's peak RSS (wait4 `ru_maxrss`);
//! - the same drain of N/10 messages, to show whether memory grows with the spool;
//! - the same drain of N messages through a round-robin load balancer in front of the same two
//!   destinations: Debian's HAProxy from `examples/haproxy-http.cfg` (TLS-terminating, a
//!   backend picked per request, so most transfers reach another instance than the one they
//!   name and are parked and committed there); skipped with a note when `haproxy` is missing
//!   (`apt-get install -y haproxy`).
//!
//! Each case must end with exactly N (N/10) files at the destination and none left in the
//! source. The summary gives drain/rsync and drain/local-move throughput (the same files, so
//! equal in msg/s and MB/s; issue 15's goal: drain at least 20x rsync --fsync), big/small peak
//! RSS (ideal: 1.0) and balancer/direct throughput (issue 11's target: at least 0.7).
//!
//! Run: `cargo bench --bench drain` (N = 20000) or `cargo bench --bench drain -- --messages N`;
//! `DRAIN_BENCH_ARGS="--concurrency 32"` passes extra options to the drain,
//! `DRAIN_BENCH_SERVE_ARGS="--spool-sync file"` to both destinations. `--profile DIR`
//! runs only the drain, under `perf record` and then `strace -c` (see `profile.rs`).

#[path = "drain/baselines.rs"]
mod baselines;
#[path = "drain/profile.rs"]
mod profile;
#[path = "drain/scale.rs"]
mod scale;
#[path = "drain/setup.rs"]
mod setup;

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, ensure};
use drain::demo::Sizes;

use setup::{Servers, TempDir, drain_command, fill, message_files};

/// One measured run.
pub struct Run {
    label: &'static str,
    messages: u64,
    bytes: u64,
    secs: f64,
    rss_kib: Option<u64>,
}

impl Run {
    fn new(label: &'static str, n: usize, bytes: u64, secs: f64, rss_kib: Option<u64>) -> Run {
        Run {
            label,
            messages: n as u64,
            bytes,
            secs,
            rss_kib,
        }
    }

    fn msg_per_s(&self) -> f64 {
        self.messages as f64 / self.secs
    }

    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs
    }

    pub fn print_header() {
        println!(
            "{:<14} {:>9} {:>9} {:>8} {:>8} {:>7} {:>13}",
            "run", "messages", "MB", "secs", "msg/s", "MB/s", "peak RSS MiB"
        );
    }

    pub fn print(&self) {
        let rss = self
            .rss_kib
            .map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        let (label, messages, secs) = (self.label, self.messages, self.secs);
        let (mb, rate, mbs) = (self.bytes as f64 / 1e6, self.msg_per_s(), self.mb_per_s());
        println!(
            "{label:<14} {messages:>9} {mb:>9.1} {secs:>8.2} {rate:>8.0} {mbs:>7.1} {rss:>13}"
        );
    }
}

/// The command line after `cargo bench --bench drain --`.
struct Args {
    messages: usize,
    sizes: Sizes,
    profile: Option<PathBuf>,
    scale: bool,
}

/// `--messages N`, `--sizes w1|typical|small`, `--profile DIR` (also as `--opt=value`),
/// `--scale`; anything else (cargo passes `--bench`) is ignored.
fn parse_args() -> anyhow::Result<Args> {
    let mut out = Args {
        messages: 20_000,
        sizes: Sizes::W1,
        profile: None,
        scale: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--scale" {
            out.scale = true;
            continue;
        }
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (a, None),
        };
        if !["--messages", "--sizes", "--profile"].contains(&name.as_str()) {
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .with_context(|| format!("{name} needs a value"))?,
        };
        match name.as_str() {
            "--messages" => {
                out.messages = value
                    .parse()
                    .with_context(|| format!("--messages {value}"))?
            }
            "--sizes" => {
                out.sizes = match value.as_str() {
                    "w1" => Sizes::W1,
                    "typical" => Sizes::Typical,
                    "small" => Sizes::Small,
                    _ => anyhow::bail!("--sizes {value}: w1, typical or small"),
                }
            }
            _ => out.profile = Some(value.into()),
        }
    }
    ensure!(out.messages >= 10, "--messages must be at least 10");
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let (n, sizes) = (args.messages, args.sizes);
    let tmp = TempDir(std::env::temp_dir().join(format!("drain-bench-{}", std::process::id())));
    let base = tmp.0.clone();
    std::fs::create_dir_all(&base)?;
    if let Some(out) = &args.profile {
        return profile::run(&base, out, n, sizes);
    }
    if args.scale {
        return scale::run(&base, n, sizes);
    }
    // Declared after `tmp`, so dropped first: the servers stop before their files go.
    let mut servers = Servers(Vec::new());
    let d = setup::start_destinations(&base, &mut servers, &[])?;
    let (dests, ca) = (d.addrs, d.ca);
    let workload = match sizes {
        Sizes::W1 => "W1 sizes (log-normal, median 12 KiB, 200 B..256 KiB)",
        Sizes::Typical => "typical sizes (2..50 KiB, 0.5% up to 1 MiB)",
        Sizes::Small => "1 KiB bodies",
    };
    println!(
        "drain bench: {n} messages, {workload}, destinations {}",
        dests.join(" and ")
    );

    let local = baselines::local_move(&base, n, sizes)?;
    let rsync = baselines::rsync(&base, n, sizes)?;
    let pids: Vec<u32> = servers.0.iter().map(|c| c.id()).collect();
    let to = (dests.as_slice(), ca.as_path());
    let big = drain_run(&base, "drain", n, sizes, to, &pids, &[])?;
    let small = drain_run(
        &base,
        "drain (N/10)",
        (n / 10).max(1),
        sizes,
        to,
        &pids,
        &[],
    )?;
    let balanced = match setup::start_balancer(&base, &dests, &mut servers)? {
        Some((lb, lb_ca)) => {
            let to = (std::slice::from_ref(&lb), lb_ca.as_path());
            Some(drain_run(&base, "via HAProxy", n, sizes, to, &pids, &[])?)
        }
        None => {
            println!(
                "haproxy not found: the balancer case is skipped (apt-get install -y haproxy)"
            );
            None
        }
    };

    println!();
    Run::print_header();
    for r in [
        Some(&big),
        rsync.as_ref(),
        Some(&local),
        Some(&small),
        balanced.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        r.print();
    }
    println!();
    if let Some(r) = &rsync {
        let ratio = big.msg_per_s() / r.msg_per_s();
        println!("throughput, drain / rsync --fsync: {ratio:.2}x (issue 15's goal: at least 20x)");
    }
    let ratio = big.msg_per_s() / local.msg_per_s();
    println!("throughput, drain / local durable move: {ratio:.2}x");
    if let (Some(b), Some(s)) = (big.rss_kib, small.rss_kib) {
        let (bn, sn, ratio) = (big.messages, small.messages, b as f64 / s as f64);
        println!("peak RSS, drain of {bn} / of {sn}: {ratio:.2}x (1.0: independent of spool size)");
    }
    if let Some(b) = &balanced {
        let ratio = b.msg_per_s() / big.msg_per_s();
        println!(
            "throughput, through a round-robin balancer / direct: {ratio:.2}x (target: at least 0.70)"
        );
    }
    Ok(())
}

/// Drains a fresh spool of `n` messages to the destinations as a child process (its command
/// prefixed with `wrap`, for the profile), timed; the destinations' data directories are
/// `base/d1` and `base/d2`, their processes `serve_pids` (for their CPU time).
pub fn drain_run(
    base: &Path,
    label: &'static str,
    n: usize,
    sizes: Sizes,
    (dests, ca): (&[String], &Path),
    serve_pids: &[u32],
    wrap: &[OsString],
) -> anyhow::Result<Run> {
    let src = base.join(format!("src-{n}"));
    let bytes = fill(&src, n, sizes)?;
    let count = || -> anyhow::Result<usize> {
        let dirs = [base.join("d1"), base.join("d2")];
        dirs.iter().map(|d| Ok(message_files(d)?.len())).sum()
    };
    let before = count()?;
    let serve_cpu = |pid: &u32| setup::cpu_secs(*pid).unwrap_or(f64::NAN);
    let serves_before: Vec<f64> = serve_pids.iter().map(serve_cpu).collect();

    let start = Instant::now();
    // DRAIN_BENCH_ARGS: extra drain options to compare settings ("--concurrency 32").
    let extra = std::env::var("DRAIN_BENCH_ARGS").unwrap_or_default();
    let mut child = drain_command(&src, wrap)
        .arg("--ca-cert")
        .arg(ca)
        .arg("--json")
        .args(extra.split_whitespace())
        .args(dests)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start `drain`")?;
    let mut out = String::new();
    let read = child.stdout.take().unwrap().read_to_string(&mut out);
    if read.is_err() {
        let _ = child.kill();
    }
    let (code, usage) = setup::wait4(child.id() as libc::pid_t)?;
    let secs = start.elapsed().as_secs_f64();
    read.context("reading drain's report")?;

    ensure!(code == Some(0), "drain exited with {code:?}; report: {out}");
    let report: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("drain's --json output: {out:?}"))?;
    let delivered: u64 = report["delivered"].as_object().map_or(0, |d| {
        d.values().filter_map(|c| c["messages"].as_u64()).sum()
    });
    let (gained, left) = (count()? - before, message_files(&src)?.len());
    ensure!(
        report["exit_code"] == 0 && (delivered, gained, left) == (n as u64, n, 0),
        "expected {n} delivered, {n} more files on the destinations, 0 left; got \
         {delivered}, {gained}, {left}; report: {out}"
    );
    let own = &report["elapsed_secs"];
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    let serves: Vec<String> = serve_pids
        .iter()
        .zip(serves_before)
        .map(|(pid, b)| format!("{:.1}", serve_cpu(pid) - b))
        .collect();
    println!(
        "{label}: {n} messages in {secs:.2}s wall ({own}s by drain's report); CPU seconds \
         (user+sys): drain {cpu:.1}, each drain serve {}",
        serves.join(" and ")
    );
    Ok(Run::new(
        label,
        n,
        bytes,
        secs,
        Some(usage.ru_maxrss as u64),
    )) // KiB on Linux
}
