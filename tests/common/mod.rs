//! Test harness: temporary instances, real `drain serve` processes with real TLS on loopback,
//! and helpers that drive the real `drain` binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

pub const BIN: &str = env!("CARGO_BIN_EXE_drain");

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("random");
        let name: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let p = std::env::temp_dir().join(format!("drain-test-{tag}-{name}"));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn sub(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::create_dir_all(&p).expect("create dir");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("DRAIN_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A running `drain serve` destination.
pub struct Server {
    pub child: Child,
    pub data_dir: PathBuf,
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    log: PathBuf,
    accept: String,
    trusted_proxies: Option<String>,
    extra: Vec<String>,
}

pub struct ServeConfig<'a> {
    pub ip: &'a str,
    pub accept: &'a str,
    pub trusted_proxies: Option<&'a str>,
    pub port: u16,
    /// More `drain serve` arguments (`--event-endpoint URL`, ...).
    pub extra: Vec<String>,
}

impl<'a> ServeConfig<'a> {
    pub fn on(ip: &'a str) -> Self {
        ServeConfig {
            ip,
            accept: "127.0.0.0/8",
            trusted_proxies: None,
            port: 0,
            extra: Vec::new(),
        }
    }
}

impl Server {
    pub fn start(tmp: &TempDir, name: &str, cfg: ServeConfig<'_>) -> Server {
        let data_dir = tmp.sub(name);
        let (cert, key) =
            drain::tls::write_self_signed(&[cfg.ip.to_string()], tmp.path(), name).expect("cert");
        Self::spawn(
            data_dir,
            cert,
            key,
            &cfg,
            tmp.path().join(format!("{name}.log")),
        )
    }

    pub fn spawn(
        data_dir: PathBuf,
        cert: PathBuf,
        key: PathBuf,
        cfg: &ServeConfig<'_>,
        log: PathBuf,
    ) -> Server {
        let _ = std::fs::remove_file(data_dir.join("serve.addr"));
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir")
            .arg(&data_dir)
            .args(["serve", "--listen", &format!("{}:{}", cfg.ip, cfg.port)])
            .args(["--accept-drain-from", cfg.accept])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("log file"),
            );
        if let Some(p) = cfg.trusted_proxies {
            cmd.args(["--trusted-proxy-ips", p]);
        }
        cmd.args(&cfg.extra);
        let mut child = cmd.spawn().expect("spawn drain serve");
        let addr = wait_for_addr(&data_dir.join("serve.addr"), &mut child, &log);
        Server {
            child,
            data_dir,
            addr,
            cert,
            key,
            log,
            accept: cfg.accept.to_string(),
            trusted_proxies: cfg.trusted_proxies.map(str::to_string),
            extra: cfg.extra.clone(),
        }
    }

    /// Starts a destination whose certificate is valid for several addresses (a proxy's too).
    pub fn start_with_names(
        tmp: &TempDir,
        name: &str,
        cfg: ServeConfig<'_>,
        names: &[&str],
    ) -> Server {
        let data_dir = tmp.sub(name);
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let (cert, key) = drain::tls::write_self_signed(&names, tmp.path(), name).expect("cert");
        Self::spawn(
            data_dir,
            cert,
            key,
            &cfg,
            tmp.path().join(format!("{name}.log")),
        )
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same address and port with the same data.
    pub fn restart(&mut self) {
        self.kill();
        let ip = self.addr.ip().to_string();
        let cfg = ServeConfig {
            ip: &ip,
            accept: &self.accept,
            trusted_proxies: self.trusted_proxies.as_deref(),
            port: self.addr.port(),
            extra: self.extra.clone(),
        };
        let log = self.log.clone();
        let fresh = Self::spawn(
            self.data_dir.clone(),
            self.cert.clone(),
            self.key.clone(),
            &cfg,
            log,
        );
        drop(std::mem::replace(self, fresh)); // its child is already reaped
    }

    /// `IP:PORT` as a destination argument.
    pub fn dest(&self) -> String {
        self.addr.to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn ls(&self) -> Vec<LsEntry> {
        spool_ls(&self.data_dir)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_addr(path: &Path, child: &mut Child, log: &Path) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && s.ends_with('\n')
        {
            return s.trim().parse().expect("serve.addr holds an address");
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "drain serve exited early ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "drain serve did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A small seeded random generator (xorshift64*): kill moments are reproducible from the seed.
pub struct Rng(pub u64);

impl Rng {
    /// Seed from `var` if set, else random; printed so a failure can be replayed.
    pub fn from_env(var: &str) -> Rng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let mut b = [0u8; 8];
                getrandom::fill(&mut b).expect("random");
                u64::from_le_bytes(b) | 1
            });
        eprintln!("seed {seed} (replay with {var}={seed})");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// How many kill points a harness run makes: `DRAIN_KILL_POINTS`, default 20 (CI); the soak
/// runs 500.
pub fn kill_points() -> usize {
    std::env::var("DRAIN_KILL_POINTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

/// Sends a signal to a child process.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a pid we own; no memory is shared.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// A tiny HTTP endpoint for events: answers every POST with the current status and keeps
/// every event it acknowledged (by id, so a repeat shows).
pub struct EventSink {
    pub url: String,
    pub status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl EventSink {
    pub fn start(ip: &str) -> EventSink {
        use std::io::{BufRead, BufReader, Read, Write};
        use std::sync::atomic::{AtomicU16, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind(format!("{ip}:0")).expect("bind sink");
        let url = format!("http://{}/events", listener.local_addr().expect("addr"));
        let status = Arc::new(AtomicU16::new(200));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (st, rx) = (status.clone(), received.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let l = line.trim().to_ascii_lowercase();
                    if l.is_empty() {
                        break;
                    }
                    if let Some(v) = l.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let code = st.load(Ordering::SeqCst);
                if code == 200
                    && let Ok(serde_json::Value::Array(events)) = serde_json::from_slice(&body)
                {
                    rx.lock().expect("lock").extend(events);
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        EventSink {
            url,
            status,
            received,
        }
    }

    pub fn ids(&self) -> Vec<String> {
        self.received
            .lock()
            .expect("lock")
            .iter()
            .map(|e| e["id"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// Files in `<data-dir>/events` that are pending events.
pub fn pending_events(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("events"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

/// Starts `drain --data-dir DIR ARGS...` with its standard error streamed, line by line, to
/// the returned channel (stdout piped, for `wait_with_output`).
pub fn spawn_watched(dir: &Path, args: &[&str]) -> (Child, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn drain");
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Readiness by output: waits for a line containing `needle`; returns the lines seen.
pub fn wait_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no line containing {needle:?} in {seen:#?}"));
        let found = line.contains(needle);
        seen.push(line);
        if found {
            return seen;
        }
    }
}

/// Tries `drain serve` on `dir` (listening on `ip`), which is expected to refuse to start.
pub fn try_serve(tmp: &TempDir, dir: &Path, ip: &str) -> Output {
    let (cert, key) =
        drain::tls::write_self_signed(&[ip.to_string()], tmp.path(), &format!("try-{ip}"))
            .expect("cert");
    drain(
        dir,
        &[
            "serve",
            "--listen",
            &format!("{ip}:0"),
            "--accept-drain-from",
            "127.0.0.1",
            "--tls-cert",
            cert.to_str().expect("utf-8 path"),
            "--tls-key",
            key.to_str().expect("utf-8 path"),
        ],
    )
}

/// A spool file built in memory (for speaking the wire protocol directly).
pub fn message(queue: drain::base::QueueKind, attempts: u32, body: &[u8]) -> drain::spool::Message {
    use drain::base::{MessageId, Timestamp};
    use drain::spool::{Header, Message};
    let h = Header {
        id: MessageId::random().expect("id"),
        queue,
        from: "a@example.com".into(),
        to: vec!["b@example.net".into()],
        attempts,
        next_retry_at: Some(Timestamp::parse("2031-01-01T00:00:00Z").expect("time")),
        created_at: Timestamp::now(),
        properties: BTreeMap::new(),
        body_len: 0,
    };
    let bytes = drain::spool::format::encode(&h, body).expect("encode");
    Message::from_bytes(bytes.into()).expect("parse")
}

/// A transfer body of `(message, hash to claim)` frames.
pub fn batch(msgs: &[(&drain::spool::Message, drain::base::ContentHash)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (m, h) in msgs {
        drain::wire::put_frame_header(&mut b, h, m.bytes.len() as u64);
        b.extend_from_slice(&m.bytes);
    }
    b
}

/// A CA bundle trusting every given server's certificate.
pub fn ca_bundle(tmp: &TempDir, servers: &[&Server]) -> PathBuf {
    let mut pem = String::new();
    for s in servers {
        pem.push_str(&std::fs::read_to_string(&s.cert).expect("cert"));
    }
    let p = tmp.path().join(format!("ca-{}.pem", servers.len()));
    std::fs::write(&p, pem).expect("write bundle");
    p
}

/// A loopback port with nothing listening.
pub fn closed_port(ip: &str) -> u16 {
    let l = TcpListener::bind(format!("{ip}:0")).expect("bind");
    l.local_addr().expect("addr").port()
}

/// Runs `drain --data-dir DIR ARGS...` to completion.
pub fn drain(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run drain")
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One line of `drain spool ls --json`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct LsEntry {
    pub id: String,
    pub queue: String,
    pub hash: String,
    pub size: u64,
    pub next_retry_at: Option<String>,
    pub attempts: u32,
}

pub fn spool_ls(dir: &Path) -> Vec<LsEntry> {
    let o = drain(dir, &["spool", "ls", "--json"]);
    let text = String::from_utf8_lossy(&o.stdout);
    text.lines()
        .map(|l| serde_json::from_str(l).expect("ls line is JSON"))
        .collect()
}

/// Adds a message through the real binary; returns its id.
pub fn spool_add(
    dir: &Path,
    queue: &str,
    attempts: u32,
    next_retry: Option<&str>,
    body: &[u8],
) -> String {
    let tmp = dir.join(".body");
    std::fs::write(&tmp, body).expect("write body");
    let mut args = vec![
        "spool",
        "add",
        "--queue",
        queue,
        "--from",
        "a@example.com",
        "--to",
        "b@example.net",
        "--to",
        "c@example.org",
    ];
    let attempts = attempts.to_string();
    args.extend(["--attempts", &attempts]);
    if let Some(t) = next_retry {
        args.extend(["--next-retry", t]);
    }
    let path = tmp.to_string_lossy().into_owned();
    args.push(&path);
    let o = drain(dir, &args);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let _ = std::fs::remove_file(&tmp);
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Fills a spool quickly through the library (the same code `spool add` uses).
pub fn fill(dir: &Path, n: usize) -> BTreeMap<String, (String, String)> {
    drain::demo::fill(dir, n)
        .expect("fill")
        .into_iter()
        .map(|(id, (q, h, _))| (id.to_string(), (q.to_string(), h.to_string())))
        .collect()
}

/// Every message of every server, by id; panics on a message held twice.
pub fn census(servers: &[&Server]) -> BTreeMap<String, (usize, LsEntry)> {
    let mut all = BTreeMap::new();
    for (i, s) in servers.iter().enumerate() {
        for e in s.ls() {
            if let Some((j, _)) = all.insert(e.id.clone(), (i, e.clone())) {
                panic!("message {} is on destination {j} and {i}", e.id);
            }
        }
    }
    all
}
