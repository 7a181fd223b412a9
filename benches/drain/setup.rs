//! The bench's processes and files: temporary directory, `drain serve` destinations, the
//! HAProxy balancer, spool filling and counting.

use std::ffi::OsString;
use std::fs;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

/// The `drain` binary: this build's, or `DRAIN_BENCH_BIN` (to compare two builds in the same
/// conditions).
pub fn drain_bin() -> OsString {
    std::env::var_os("DRAIN_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_drain").into())
}

/// Removes the benchmark's directory however the run ends.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Kills the child processes (servers, balancer, rsync daemon) however the run ends.
pub struct Servers(pub Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `program args...`, killed if this process dies (e.g. on Ctrl-C), stdin closed.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// `[wrap...] drain --data-dir DIR --quiet`: `wrap` is a command prefix such as
/// `perf record -o F --` (empty: drain itself).
pub fn drain_command(data_dir: &Path, wrap: &[OsString]) -> Command {
    let mut cmd = match wrap.split_first() {
        Some((program, args)) => {
            let mut c = command(program);
            c.args(args).arg(drain_bin());
            c
        }
        None => command(drain_bin()),
    };
    cmd.arg("--data-dir").arg(data_dir).arg("--quiet");
    cmd
}

/// Whether `program` is an executable on PATH.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| {
        fs::metadata(d.join(program))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// A port free on `ip` now (bound, then released).
pub fn free_port(ip: &str) -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// Waits until `addr` accepts TCP connections, or `child` exits, or 20 s pass.
pub fn wait_accepting(addr: &str, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited early ({status})");
        }
        ensure!(
            Instant::now() < deadline,
            "{what} is not accepting on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The two destinations: their `IP:PORT`, the CA bundle trusting both, and where each serves
/// its metrics (plain HTTP).
pub struct Destinations {
    pub addrs: Vec<String>,
    pub ca: PathBuf,
    pub metrics: Vec<String>,
}

/// Starts the two destinations on 127.0.0.2 and 127.0.0.3 (the first one's command prefixed
/// with `wrap_first`, for the profile).
pub fn start_destinations(
    base: &Path,
    servers: &mut Servers,
    wrap_first: &[OsString],
) -> anyhow::Result<Destinations> {
    let (mut addrs, mut bundle, mut metrics) = (Vec::new(), String::new(), Vec::new());
    // Extra `drain serve` options, as DRAIN_BENCH_ARGS gives the drain's.
    let serve_args = std::env::var("DRAIN_BENCH_SERVE_ARGS").unwrap_or_default();
    for (i, ip) in ["127.0.0.2", "127.0.0.3"].into_iter().enumerate() {
        let name = format!("d{}", i + 1);
        let dir = base.join(&name);
        // Private, as `drain serve` wants a data directory holding mail.
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
            .create(&dir)?;
        let (cert, key) = drain::tls::write_self_signed(&[ip.into()], base, &name)?;
        bundle.push_str(&fs::read_to_string(&cert)?);
        let wrap = if i == 0 { wrap_first } else { &[] };
        metrics.push(format!("{ip}:{}", free_port(ip)?));
        let child = drain_command(&dir, wrap)
            .args(["serve", "--listen", &format!("{ip}:0")])
            .args(["--metrics-listen", &metrics[i]])
            .args(["--accept-drain-from", "127.0.0.0/8"])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .args(serve_args.split_whitespace())
            .spawn()
            .context("cannot start `drain serve`")?;
        servers.0.push(child);
        let child = servers.0.last_mut().unwrap();
        addrs.push(wait_for_addr(&dir.join("serve.addr"), child)?);
    }
    let ca = base.join("ca.pem");
    fs::write(&ca, bundle)?;
    Ok(Destinations { addrs, ca, metrics })
}

/// `drain_intake_messages_stored_total` of a destination, from its metrics listener.
pub fn stored_total(metrics: &str) -> anyhow::Result<u64> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(metrics).with_context(|| format!("metrics at {metrics}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {metrics}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    text.lines()
        .find_map(|l| l.strip_prefix("drain_intake_messages_stored_total "))
        .with_context(|| format!("no stored counter in the metrics of {metrics}"))?
        .trim()
        .parse()
        .with_context(|| format!("the stored counter of {metrics}"))
}

/// Peak resident memory of the live process `pid` so far, in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM in /proc/PID/status")
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

/// HAProxy (`examples/haproxy-http.cfg`) on 127.0.0.4 in front of `dests`, round-robin per
/// request; returns its `IP:PORT` and its certificate (for `--ca-cert`), or None without
/// `haproxy`.
pub fn start_balancer(
    base: &Path,
    dests: &[String],
    servers: &mut Servers,
) -> anyhow::Result<Option<(String, PathBuf)>> {
    if !on_path("haproxy") {
        return Ok(None);
    }
    let ip = "127.0.0.4";
    let (cert, key) = drain::tls::write_self_signed(&[ip.into()], base, "lb")?;
    let both = base.join("lb-both.pem");
    fs::write(
        &both,
        fs::read_to_string(&cert)? + &fs::read_to_string(&key)?,
    )?;
    let listen = format!("{ip}:{}", free_port(ip)?);
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
    let child = command("haproxy")
        .arg("-f")
        .arg(&path)
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start haproxy")?;
    servers.0.push(child);
    wait_accepting(&listen, servers.0.last_mut().unwrap(), "haproxy")?;
    Ok(Some((listen, cert)))
}

/// Fills a fresh spool under `dir` with `n` messages; returns their total size in bytes.
pub fn fill(dir: &Path, n: usize, sizes: drain::demo::Sizes) -> anyhow::Result<u64> {
    Ok(drain::demo::fill_with(dir, n, sizes)?
        .values()
        .map(|(_, _, size)| size)
        .sum())
}

/// Message files under `<dir>/spool/*/*.msg` (not `spool/.tmp`).
pub fn message_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
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

/// Reaps `pid`; returns its exit code (None if killed by a signal) and resource usage.
pub fn wait4(pid: libc::pid_t) -> anyhow::Result<(Option<i32>, libc::rusage)> {
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
    Ok((code, usage))
}

/// User + system CPU seconds of the live process `pid` so far (`/proc/PID/stat`).
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command name, which is in parentheses: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / hz as f64)
}
