//! Test harness shared by every integration test: temporary directories, running the real
//! `drain` binary, and a seeded random generator. The rest is split by responsibility:
//! `servers` (real `drain serve` destinations), `spool` (filling and listing spools), `process`
//! (background drains, readiness by output, time limits), `inspect` (the journal through
//! `drain inspect --json`), `census` (where every message ended up), `events` (an event
//! endpoint), `proxy` (a TLS-terminating proxy that drops answers) and `haproxy` (a real HAProxy
//! from `examples/`). Each test crate uses
//! what it needs, hence `dead_code` allowed.
#![allow(dead_code)]

pub mod ask;
pub mod balancers;
pub mod census;
pub mod events;
pub mod haproxy;
pub mod inspect;
pub mod nginx;
pub mod process;
pub mod proxy;
pub mod servers;
pub mod spool;

// Flat re-exports, so a test needs only `use common::*;` (a test that uses none of a module's
// items would otherwise warn).
#[allow(unused_imports)]
pub use {census::*, events::*, inspect::*, process::*, servers::*, spool::*};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

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

    /// A subdirectory, owner only, as a data directory should be (drain warns about others).
    pub fn sub(&self, name: &str) -> PathBuf {
        use std::os::unix::fs::DirBuilderExt;
        let p = self.0.join(name);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&p)
            .expect("create dir");
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

/// Runs `drain ARGS...` to completion, with no data directory unless ARGS give one.
pub fn drain_bare(args: &[&str]) -> Output {
    Command::new(BIN)
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

/// An HTTPS client trusting the certificates in `ca` (PEM), connecting from `bind`: raw
/// requests to a `drain serve`, as a sender at that address would send them.
pub fn https_client(ca: &Path, bind: &str) -> reqwest::Client {
    drain::tls::install_provider();
    let pem = std::fs::read(ca).expect("CA file");
    reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).expect("PEM"))
        .local_address(bind.parse::<std::net::IpAddr>().expect("bind address"))
        .no_proxy()
        .build()
        .expect("client")
}

/// The typed code of an error answer's JSON body (`None`: the body carries none).
pub fn reject_code(text: &str) -> Option<drain::wire::RejectCode> {
    serde_json::from_str::<drain::wire::ErrorResponse>(text)
        .unwrap_or_else(|e| panic!("{e}: {text}"))
        .code
}
