//! Drain benchmark: throughput and memory of a real `drain` run on loopback, as ratios.
//!
//! In one temporary directory it starts two `drain serve` destinations (127.0.0.2 and
//! 127.0.0.3, self-signed certificates), then measures:
//! - a baseline: a spool of N messages (typical email sizes, all four queue kinds, filled by
//!   `drain::demo::fill`) moved to a local directory with the spool's durability: read, write a
//!   temp file, fsync, rename, fsync the directories once per batch of 64, delete the originals;
//! - `drain` as a child process draining a fresh spool of N messages to both destinations:
//!   wall time, msg/s, MB/s (10^6 bytes) and the child's peak RSS (wait4 `ru_maxrss`);
//! - the same drain of N/10 messages, to show whether memory grows with the spool;
//! - the same drain of N messages through a round-robin load balancer in front of the same two
//!   destinations: Debian's HAProxy from `examples/haproxy-http.cfg` (TLS-terminating, a
//!   backend picked per request, so most transfers reach another instance than the one they
//!   name and are parked and committed there); skipped with a note when `haproxy` is missing
//!   (`apt-get install -y haproxy`).
//!
//! Each drain must exit 0 and the destinations must gain exactly N (N/10) message files.
//! The summary gives drain/baseline throughput, big/small peak RSS (ideal: 1.0) and
//! balancer/direct throughput (issue 11's target: at least 0.7).
//!
//! Run: `cargo bench --bench drain` (N = 20000) or `cargo bench --bench drain -- --messages N`;
//! `DRAIN_BENCH_ARGS="--concurrency 32"` passes extra options to the drain.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

const DRAIN: &str = env!("CARGO_BIN_EXE_drain");
/// Files per directory fsync in the baseline.
const BASELINE_BATCH: usize = 64;

/// Removes the benchmark's directory however the run ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Kills the `drain serve` processes however the run ends.
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One measured run.
struct Run {
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

    fn print(&self) {
        let rss = self
            .rss_kib
            .map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        let (label, messages, secs) = (self.label, self.messages, self.secs);
        let (mb, rate) = (self.bytes as f64 / 1e6, self.msg_per_s());
        let mbs = mb / secs;
        println!(
            "{label:<14} {messages:>9} {mb:>9.1} {secs:>8.2} {rate:>8.0} {mbs:>7.1} {rss:>13}"
        );
    }
}

fn main() -> anyhow::Result<()> {
    let n = parse_messages()?;
    let tmp = TempDir(std::env::temp_dir().join(format!("drain-bench-{}", std::process::id())));
    let base = tmp.0.clone();
    fs::create_dir_all(&base)?;
    // Declared after `tmp`, so dropped first: the servers stop before their files go.
    let mut servers = Servers(Vec::new());
    let (dests, ca) = start_destinations(&base, &mut servers)?;
    println!(
        "drain bench: {n} messages, destinations {}",
        dests.join(" and ")
    );

    let baseline = baseline_run(&base, n)?;
    let big = drain_run(&base, "drain", n, &dests, &ca)?;
    let small = drain_run(&base, "drain (N/10)", (n / 10).max(1), &dests, &ca)?;
    let balanced = match start_balancer(&base, &dests, &mut servers)? {
        Some((lb, lb_ca)) => Some(drain_run(&base, "via HAProxy", n, &[lb], &lb_ca)?),
        None => {
            println!(
                "haproxy not found: the balancer case is skipped (apt-get install -y haproxy)"
            );
            None
        }
    };

    println!();
    println!(
        "{:<14} {:>9} {:>9} {:>8} {:>8} {:>7} {:>13}",
        "run", "messages", "MB", "secs", "msg/s", "MB/s", "peak RSS MiB"
    );
    for r in [Some(&baseline), Some(&big), Some(&small), balanced.as_ref()]
        .into_iter()
        .flatten()
    {
        r.print();
    }
    println!();
    let ratio = big.msg_per_s() / baseline.msg_per_s();
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

/// HAProxy (`examples/haproxy-http.cfg`) on 127.0.0.4 in front of `dests`, round-robin per
/// request; returns its `IP:PORT` and its certificate (for `--ca-cert`), or None without
/// `haproxy`.
fn start_balancer(
    base: &Path,
    dests: &[String],
    servers: &mut Servers,
) -> anyhow::Result<Option<(String, PathBuf)>> {
    let ip = "127.0.0.4";
    let (cert, key) = drain::tls::write_self_signed(&[ip.into()], base, "lb")?;
    let both = base.join("lb-both.pem");
    fs::write(
        &both,
        fs::read_to_string(&cert)? + &fs::read_to_string(&key)?,
    )?;
    let port = std::net::TcpListener::bind((ip, 0))?.local_addr()?.port();
    let listen = format!("{ip}:{port}");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/haproxy-http.cfg");
    let lines: Vec<String> = dests
        .iter()
        .enumerate()
        .map(|(i, d)| format!("server drain{} {d}", i + 1))
        .collect();
    let cfg = fs::read_to_string(example)?
        .replace("@LISTEN@", &listen)
        .replace("@CERT@", &both.display().to_string())
        .replace("server drain1 @BACKEND1@", &lines.join("\n    "))
        // Access logs of every request would cost the balancer, not the drain.
        .replace("    option httplog\n", "    option dontlog-normal\n");
    let path = base.join("haproxy.cfg");
    fs::write(&path, cfg)?;
    let child = match Command::new("haproxy")
        .arg("-f")
        .arg(&path)
        .arg("-db")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("cannot start haproxy"),
    };
    servers.0.push(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&listen).is_err() {
        ensure!(
            Instant::now() < deadline,
            "haproxy is not accepting on {listen}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Some((listen, cert)))
}

/// `--messages N` or `--messages=N`; anything else (cargo passes `--bench`) is ignored.
fn parse_messages() -> anyhow::Result<usize> {
    let mut n = 20_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = match a.strip_prefix("--messages") {
            Some("") => args.next().context("--messages needs a value")?,
            Some(v) if v.starts_with('=') => v[1..].to_string(),
            _ => continue,
        };
        n = value
            .parse()
            .with_context(|| format!("--messages {value}"))?;
    }
    ensure!(n >= 10, "--messages must be at least 10");
    Ok(n)
}

/// `drain --data-dir DIR --quiet`, killed if this process dies (e.g. on Ctrl-C).
fn drain_command(data_dir: &Path) -> Command {
    let mut cmd = Command::new(DRAIN);
    cmd.arg("--data-dir")
        .arg(data_dir)
        .arg("--quiet")
        .stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// Starts the two destinations; returns their `IP:PORT` and the CA bundle trusting both.
fn start_destinations(
    base: &Path,
    servers: &mut Servers,
) -> anyhow::Result<(Vec<String>, PathBuf)> {
    let (mut addrs, mut bundle) = (Vec::new(), String::new());
    for (i, ip) in ["127.0.0.2", "127.0.0.3"].into_iter().enumerate() {
        let name = format!("d{}", i + 1);
        let dir = base.join(&name);
        // Private, as `drain serve` wants a data directory holding mail.
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
            .create(&dir)?;
        let (cert, key) = drain::tls::write_self_signed(&[ip.into()], base, &name)?;
        bundle.push_str(&fs::read_to_string(&cert)?);
        let child = drain_command(&dir)
            .args(["serve", "--listen", &format!("{ip}:0")])
            .args(["--accept-drain-from", "127.0.0.0/8"])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .spawn()
            .context("cannot start `drain serve`")?;
        servers.0.push(child);
        addrs.push(wait_for_addr(&dir.join("serve.addr"), &mut servers.0[i])?);
    }
    let ca = base.join("ca.pem");
    fs::write(&ca, bundle)?;
    Ok((addrs, ca))
}

/// Waits for `drain serve` to write `IP:PORT\n` (it does so once it accepts connections).
fn wait_for_addr(path: &Path, child: &mut Child) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = fs::read_to_string(path)
            && s.ends_with('\n')
        {
            return Ok(s.trim().to_string());
        }
        if let Some(status) = child.try_wait()? {
            bail!("`drain serve` exited early ({status})");
        }
        ensure!(Instant::now() < deadline, "`drain serve` not ready in 30s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Fills a fresh spool under `dir` with `n` messages; returns their total size in bytes.
fn fill(dir: &Path, n: usize) -> anyhow::Result<u64> {
    Ok(drain::demo::fill(dir, n)?
        .values()
        .map(|(_, _, size)| size)
        .sum())
}

/// Message files under `<dir>/spool/*/*.msg` (not `spool/.tmp`).
fn message_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let spool = dir.join("spool");
    let mut out = Vec::new();
    for q in fs::read_dir(&spool).with_context(|| spool.display().to_string())? {
        let q = q?.path();
        if q.is_dir() && !q.file_name().unwrap().to_string_lossy().starts_with('.') {
            for f in fs::read_dir(&q)? {
                let f = f?.path();
                if f.extension().is_some_and(|e| e == "msg") {
                    out.push(f);
                }
            }
        }
    }
    Ok(out)
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    let sync = fs::File::open(dir).and_then(|d| d.sync_all());
    sync.with_context(|| format!("fsync {}", dir.display()))
}

/// Moves a spool's files into a local directory with the spool's durability, timed.
fn baseline_run(base: &Path, n: usize) -> anyhow::Result<Run> {
    let src = base.join("baseline-src");
    let bytes = fill(&src, n)?;
    let dst = base.join("baseline-dst");
    let tmp = dst.join("spool/.tmp");
    fs::create_dir_all(&tmp)?;
    let start = Instant::now();
    for batch in message_files(&src)?.chunks(BASELINE_BATCH) {
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
    ensure!(message_files(&dst)?.len() == n, "baseline lost files");
    Ok(Run::new("local move", n, bytes, secs, None))
}

/// Drains a fresh spool of `n` messages to the destinations as a child process, timed.
fn drain_run(
    base: &Path,
    label: &'static str,
    n: usize,
    dests: &[String],
    ca: &Path,
) -> anyhow::Result<Run> {
    let src = base.join(format!("src-{n}"));
    let bytes = fill(&src, n)?;
    let count = || -> anyhow::Result<usize> {
        let dirs = [base.join("d1"), base.join("d2")];
        dirs.iter().map(|d| Ok(message_files(d)?.len())).sum()
    };
    let before = count()?;

    let start = Instant::now();
    // DRAIN_BENCH_ARGS: extra drain options to compare settings ("--concurrency 32").
    let extra = std::env::var("DRAIN_BENCH_ARGS").unwrap_or_default();
    let mut child = drain_command(&src)
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
    let (code, rss_kib) = wait4(child.id() as libc::pid_t)?;
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
    println!("{label}: {n} messages in {secs:.2}s wall ({own}s by drain's report)");
    Ok(Run::new(label, n, bytes, secs, Some(rss_kib)))
}

/// Reaps `pid`; returns its exit code (None if killed by a signal) and peak RSS in KiB.
fn wait4(pid: libc::pid_t) -> anyhow::Result<(Option<i32>, u64)> {
    let mut status = 0;
    // SAFETY: rusage is plain data, valid when zeroed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals.
    while unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("wait4");
        }
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Ok((code, usage.ru_maxrss as u64)) // ru_maxrss is in KiB on Linux
}
