//! Shared by the power-loss tests: temporary directories, power-loss mounts, the `drain`
//! binary, `drain serve` receivers on a mount, and the commands a census runs (`spool ls`,
//! `inspect`). Each test file uses part of it.
#![allow(dead_code)]

pub mod events;
pub mod mail;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use drain_powerloss::{Ext4Disk, Mount};

/// Where a receiver's data directory lives: a power-loss mount, or ext4 on one.
pub trait Volume {
    fn root(&self) -> &Path;
}

impl Volume for Mount {
    fn root(&self) -> &Path {
        self.mountpoint()
    }
}

impl Volume for Ext4Disk {
    fn root(&self) -> &Path {
        self.mountpoint()
    }
}

/// A temporary directory, removed on drop unless `DRAIN_TEST_KEEP` is set.
pub struct Tmp(pub PathBuf);

impl Tmp {
    pub fn new(tag: &str) -> Tmp {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).unwrap();
        let name: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let p = std::env::temp_dir().join(format!("drain-powerloss-{tag}-{name}"));
        fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        if std::env::var_os("DRAIN_TEST_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

pub fn drain_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DRAIN_BIN") {
        return PathBuf::from(p);
    }
    // target/debug/deps/harness-HASH -> target/debug/drain
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("drain");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bin drain` first (or set DRAIN_BIN)",
        bin.display()
    );
    bin
}

/// A power-loss mount at `tmp/name` over `tmp/name.backing`.
pub fn volume(tmp: &Tmp, name: &str) -> Mount {
    let mnt = tmp.0.join(name);
    let backing = tmp.0.join(format!("{name}.backing"));
    for d in [&mnt, &backing] {
        fs::create_dir_all(d).unwrap();
    }
    Mount::new(&backing, &tmp.0.join(format!("{name}.store")), &mnt).unwrap()
}

/// Seeded xorshift64*: cut moments are reproducible from the printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn from_env(var: &str) -> Rng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let mut b = [0u8; 8];
                getrandom::fill(&mut b).unwrap();
                u64::from_le_bytes(b) | 1
            });
        eprintln!("seed {seed} (replay with {var}={seed})");
        Rng(seed)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// A `drain serve` receiver whose data directory is a power-loss mount (or ext4 on one).
pub struct Receiver<V: Volume = Mount> {
    child: Option<Child>,
    pub mount: V,
    ip: String,
    port: u16,
    pub cert: PathBuf,
    key: PathBuf,
    /// More `drain serve` options (event endpoints).
    extra: Vec<String>,
    /// `drain serve`'s standard error, appended to by every start (with traces of each
    /// message acknowledged and each event sent).
    pub log: PathBuf,
}

impl Receiver {
    pub fn start(tmp: &Tmp, name: &str, ip: &str) -> Receiver {
        Receiver::start_with(tmp, name, ip, &[])
    }

    /// [`Receiver::start`] with more `drain serve` options.
    pub fn start_with(tmp: &Tmp, name: &str, ip: &str, extra: &[String]) -> Receiver {
        Receiver::start_on(volume(tmp, name), tmp, name, ip, extra)
    }
}

impl<V: Volume> Receiver<V> {
    /// A receiver whose data directory is the root of `mount`.
    pub fn start_on(mount: V, tmp: &Tmp, name: &str, ip: &str, extra: &[String]) -> Receiver<V> {
        let (cert, key) = drain::tls::write_self_signed(&[ip.to_string()], &tmp.0, name).unwrap();
        let mut r = Receiver {
            child: None,
            mount,
            ip: ip.to_string(),
            port: 0,
            cert,
            key,
            extra: extra.to_vec(),
            log: tmp.0.join(format!("{name}.log")),
        };
        r.spawn();
        r
    }

    pub fn data_dir(&self) -> &Path {
        self.mount.root()
    }

    /// Starts `drain serve` (on the port it had before, after the first start).
    pub fn spawn(&mut self) {
        let addr_file = self.data_dir().join("serve.addr");
        let _ = fs::remove_file(&addr_file);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(drain_bin())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["serve", "--listen", &format!("{}:{}", self.ip, self.port)])
            .args(["--accept-drain-from", "127.0.0.0/8", "--tls-cert"])
            .arg(&self.cert)
            .arg("--tls-key")
            .arg(&self.key)
            .args(&self.extra)
            .env(
                "RUST_LOG",
                "info,rustls=off,drain::intake::handler=trace,drain::events::processor=trace",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            if let Ok(s) = fs::read_to_string(&addr_file)
                && s.ends_with('\n')
            {
                break s.trim().to_string();
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("drain serve exited early ({st}):\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "drain serve did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        self.port = addr.rsplit(':').next().unwrap().parse().unwrap();
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn dest(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl<V: Volume> Drop for Receiver<V> {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(drain_bin())
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// (queue, hash) of every message in a spool, by id (`drain spool ls --json`).
pub fn spool(dir: &Path) -> BTreeMap<String, (String, String)> {
    let o = run(dir, &["spool", "ls", "--json"]);
    assert!(
        o.status.success(),
        "spool ls: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let s = |k: &str| v[k].as_str().unwrap().to_string();
            (s("id"), (s("queue"), s("hash")))
        })
        .collect()
}

/// (id, (queue, hash)) of every copy a receiver's mail server delivered (see `mail`); an id
/// delivered twice is there twice.
pub fn delivered(dir: &Path) -> Vec<(String, (String, String))> {
    let Ok(rd) = fs::read_dir(dir.join(mail::DELIVERED)) else {
        return Vec::new();
    };
    rd.map(|de| {
        let path = de.unwrap().path();
        let m = drain::spool::Message::from_bytes(fs::read(&path).unwrap().into())
            .unwrap_or_else(|e| panic!("delivered {} is not whole: {e}", path.display()));
        let h = m.header;
        (h.id.to_string(), (h.queue.to_string(), m.hash.to_string()))
    })
    .collect()
}

/// `drain inspect --json` on a data directory: the journal opens (through redb's recovery after
/// a cut) and nothing in it or in the spool is corrupt. Returns the document.
pub fn inspect(dir: &Path) -> serde_json::Value {
    let o = run(dir, &["inspect", "--json"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "inspect failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let count = |v: &serde_json::Value| v.as_array().map_or(0, Vec::len);
    assert_eq!(count(&v["corrupt_runs"]), 0, "corrupt runs: {text}");
    if !v["run"].is_null() {
        let anomalies = &v["run"]["anomalies"];
        for kind in ["corrupt_records", "unreadable"] {
            assert_eq!(anomalies[kind]["count"], 0, "{kind}: {text}");
        }
    }
    v
}

pub fn spawn_drain(src: &Path, args: &[String], log: &Path) -> Child {
    Command::new(drain_bin())
        .arg("--data-dir")
        .arg(src)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

pub fn wait_up_to(child: &mut Child, d: Duration) -> Option<i32> {
    let deadline = Instant::now() + d;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st.code().unwrap_or(-1));
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs `drain ARGS` to completion, again after every non-zero exit, until it exits 0.
pub fn until_success(src: &Path, args: &[String], log: &Path) {
    for attempt in 1..=20 {
        let mut child = spawn_drain(src, args, log);
        let code = wait_up_to(&mut child, Duration::from_secs(300)).expect("drain hung");
        if code == 0 {
            return;
        }
        eprintln!("attempt {attempt} of `drain {args:?}` exited {code}; again");
    }
    panic!(
        "drain never exited 0:\n{}",
        fs::read_to_string(log).unwrap_or_default()
    );
}

pub fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists();
    if !ok {
        eprintln!("\n*** SKIPPED: /dev/fuse is missing; the power-loss harness cannot run ***\n");
    }
    ok
}
