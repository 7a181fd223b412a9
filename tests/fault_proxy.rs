//! Lost answers: a fault-injecting TCP proxy in front of one destination drops the response of
//! transfer requests that reached the receiver, round after round, and the census proves every
//! message still ends up on exactly one destination, byte-identical, with nothing left behind.
//!
//! A faulty connection (picked per connection by a seeded xorshift, probability 1/2) is cut once
//! more than 4 KiB went client->server and the client has gone quiet, instead of forwarding the
//! server's next bytes. Bytes the server sends while the request is still streaming (TLS 1.3
//! session tickets, sent right after the handshake) are forwarded: cutting there would truncate
//! the request rather than lose its answer.
//!
//! Replay a failure with `DRAIN_FAULT_SEED=<seed printed on stderr>` (the seed fixes the faulty/
//! healthy sequence in connection order; which request a connection carries still depends on
//! timing). `DRAIN_FAULT_MIN` sets the number of faults to inject (default 20).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Bytes client->server after which a faulty connection drops the next answer: more than a TLS
/// handshake or a query, less than any transfer request (a frame is at least 2 KiB, batches of 4).
const ARM_AFTER: usize = 4096;
/// Client->server silence that marks a request as completely forwarded.
const QUIET: Duration = Duration::from_millis(30);
/// How long a faulty connection waits for the receiver's answer before cutting anyway.
const ANSWER_GRACE: Duration = Duration::from_millis(500);
/// Rounds of 300 messages at most, so a proxy that injects too few faults cannot loop forever.
/// The sender reuses its pooled connections, so a round opens only a few to A and each faulty
/// one fails once (about one fault per round): 100 rounds leave a wide margin over 20.
const MAX_ROUNDS: usize = 100;
/// One drain run may not take longer than this (each fault costs the sender about a second).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// xorshift64: small, seedable, good enough to pick faulty connections.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn seed() -> u64 {
    let s = match std::env::var("DRAIN_FAULT_SEED") {
        Ok(v) => v.trim().parse().expect("DRAIN_FAULT_SEED is a u64"),
        Err(_) => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).expect("random");
            u64::from_le_bytes(b)
        }
    };
    // xorshift is stuck at 0.
    if s == 0 { 0x9e37_79b9_7f4a_7c15 } else { s }
}

fn fault_min() -> usize {
    std::env::var("DRAIN_FAULT_MIN")
        .map(|v| v.trim().parse().expect("DRAIN_FAULT_MIN is a number"))
        .unwrap_or(20)
}

#[derive(Default)]
struct Stats {
    connections: AtomicUsize,
    faulty: AtomicUsize,
    faults: AtomicUsize,
    /// Faults where the receiver's answer arrived (and was dropped) after other early bytes.
    answered: AtomicUsize,
}

/// Whether the client is still sending: bytes went client->server within a quiet period. Data
/// the server sends while the request is still streaming (TLS 1.3 session tickets right after the
/// handshake) is not an answer to it; an HTTP/1 answer only comes once the request is complete.
fn still_sending(sent: &AtomicUsize) -> bool {
    let before = sent.load(Ordering::SeqCst);
    std::thread::sleep(QUIET);
    sent.load(Ordering::SeqCst) != before
}

/// A TCP proxy that forwards to `upstream` and, on connections the RNG picks as faulty, shuts
/// both sockets instead of forwarding the first answer to a transfer-sized request.
struct FaultProxy {
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    fn start(listen_ip: &str, upstream: SocketAddr, seed: u64) -> FaultProxy {
        let listener = TcpListener::bind(format!("{listen_ip}:0")).expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (stats.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = XorShift(seed);
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let faulty = rng.next().is_multiple_of(2);
                st.connections.fetch_add(1, Ordering::SeqCst);
                if faulty {
                    st.faulty.fetch_add(1, Ordering::SeqCst);
                }
                let server = match TcpStream::connect(upstream) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("proxy: cannot reach {upstream}: {e}");
                        continue;
                    }
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                spawn_pipes(client, server, faulty, st.clone());
            }
        });
        FaultProxy { addr, stats, stop }
    }

    fn faults(&self) -> usize {
        self.stats.faults.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
    }
}

/// Copies client->server and server->client on two threads.
fn spawn_pipes(client: TcpStream, server: TcpStream, faulty: bool, stats: Arc<Stats>) {
    let sent = Arc::new(AtomicUsize::new(0));
    // client -> server
    {
        let (mut from, mut to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let sent = sent.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) => {
                        let _ = to.shutdown(Shutdown::Write);
                        return;
                    }
                    Ok(n) => {
                        // Counted before forwarding: an answer to these bytes cannot come back
                        // before the other direction sees the count.
                        sent.fetch_add(n, Ordering::SeqCst);
                        if to.write_all(&buf[..n]).is_err() {
                            let _ = from.shutdown(Shutdown::Both);
                            return;
                        }
                    }
                    Err(_) => {
                        let _ = to.shutdown(Shutdown::Both);
                        return;
                    }
                }
            }
        });
    }
    // server -> client
    std::thread::spawn(move || {
        let (mut from, mut to) = (server, client);
        let mut buf = vec![0u8; 64 * 1024];
        let mut early_passed = false;
        loop {
            match from.read(&mut buf) {
                Ok(0) => {
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
                Ok(n) => {
                    let armed = faulty && sent.load(Ordering::SeqCst) > ARM_AFTER;
                    if armed && still_sending(&sent) {
                        early_passed = true;
                    } else if armed {
                        // The whole request reached the receiver (the client went quiet); its
                        // answer never comes back. Unless early bytes went by already, what we
                        // hold may be the TLS session tickets: give the answer time to come (so
                        // the receiver finishes storing), then drop it too.
                        if !early_passed {
                            let _ = from.set_read_timeout(Some(ANSWER_GRACE));
                            if matches!(from.read(&mut buf), Ok(m) if m > 0) {
                                stats.answered.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        stats.faults.fetch_add(1, Ordering::SeqCst);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                        return;
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        let _ = from.shutdown(Shutdown::Both);
                        return;
                    }
                }
                Err(_) => {
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
    });
}

/// A `drain serve` process with a caller-made certificate (valid for several addresses).
struct Serve {
    child: Child,
    data_dir: PathBuf,
    addr: SocketAddr,
    log: PathBuf,
}

impl Serve {
    fn start(tmp: &TempDir, name: &str, ip: &str, cert: &Path, key: &Path) -> Serve {
        let data_dir = tmp.sub(name);
        let log = tmp.path().join(format!("{name}.log"));
        let addr_file = data_dir.join("serve.addr");
        let _ = std::fs::remove_file(&addr_file);
        let mut child = Command::new(BIN)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["serve", "--listen", &format!("{ip}:0")])
            .args(["--accept-drain-from", "127.0.0.0/8"])
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn drain serve");
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            if let Ok(s) = std::fs::read_to_string(&addr_file)
                && s.ends_with('\n')
            {
                break s.trim().parse().expect("serve.addr holds an address");
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "drain serve exited early ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "drain serve did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        Serve {
            child,
            data_dir,
            addr,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `drain --data-dir DIR ARGS...` with a time limit; returns (exit code, stdout, stderr).
fn drain_with_timeout(dir: &Path, args: &[&str], logs: &Path) -> (i32, String, String) {
    let out = logs.with_extension("out");
    let err = logs.with_extension("err");
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("run drain");
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait drain") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "drain did not finish within {RUN_TIMEOUT:?}\nstderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default(),
    )
}

/// Sum of N over the sender's "confirms it holds N of the in-doubt messages" lines: messages a
/// lost answer had in fact stored.
fn confirmed_held(stderr: &str) -> usize {
    stderr
        .lines()
        .filter_map(|l| l.split("confirms it holds ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<usize>().ok())
        .sum()
}

#[test]
fn lost_answers_lose_and_duplicate_nothing() {
    let seed = seed();
    let min_faults = fault_min();
    eprintln!("fault proxy: DRAIN_FAULT_SEED={seed} DRAIN_FAULT_MIN={min_faults}");
    let started = Instant::now();

    let tmp = TempDir::new("fault");
    let (cert_a, key_a) =
        drain::tls::write_self_signed(&["127.0.0.2".into(), "127.0.0.8".into()], tmp.path(), "a")
            .expect("cert for A");
    let a = Serve::start(&tmp, "a", "127.0.0.2", &cert_a, &key_a);
    let b = Server::start(&tmp, "b", ServeConfig::on("127.0.0.3"));
    let proxy = FaultProxy::start("127.0.0.8", a.addr, seed);

    let ca = tmp.path().join("ca.pem");
    std::fs::write(
        &ca,
        std::fs::read_to_string(&cert_a).unwrap() + &std::fs::read_to_string(&b.cert).unwrap(),
    )
    .expect("write bundle");
    let src = tmp.sub("src");
    let proxy_dest = proxy.addr.to_string();
    let b_dest = b.dest();

    let mut originals: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut rounds = 0;
    let mut held_after_fault = 0;
    while proxy.faults() < min_faults {
        assert!(
            rounds < MAX_ROUNDS,
            "only {} faults in {MAX_ROUNDS} rounds (seed {seed})",
            proxy.faults()
        );
        rounds += 1;
        let batch = fill(&src, 300);
        assert_eq!(batch.len(), 300);
        for (id, v) in batch {
            assert!(originals.insert(id, v).is_none(), "fill repeated an id");
        }
        let before = proxy.faults();
        let conns_before = proxy.stats.connections.load(Ordering::SeqCst);
        let t = Instant::now();
        let (code, stdout, stderr) = drain_with_timeout(
            &src,
            &[
                "--ca-cert",
                ca.to_str().unwrap(),
                "--concurrency",
                "16",
                "--batch-size",
                "4",
                "--json",
                &proxy_dest,
                &b_dest,
            ],
            &tmp.path().join(format!("round{rounds}")),
        );
        assert_eq!(
            code,
            0,
            "round {rounds} (seed {seed}) failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nA log:\n{}",
            a.log()
        );
        // The run's own report: all 300 acknowledged and removed, nothing left in doubt.
        let report: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("round {rounds}: report is not JSON ({e}):\n{stdout}"));
        let delivered: u64 = report["delivered"]
            .as_object()
            .expect("report.delivered")
            .values()
            .map(|c| c["messages"].as_u64().expect("delivered count"))
            .sum();
        assert_eq!(delivered, 300, "round {rounds} (seed {seed}): {report}");
        assert_eq!(
            report["removed"], 300,
            "round {rounds} (seed {seed}): {report}"
        );
        assert_eq!(
            report["in_doubt"], 0,
            "round {rounds} (seed {seed}): {report}"
        );
        let held = confirmed_held(&stderr);
        held_after_fault += held;
        eprintln!(
            "round {rounds}: {} connections to A, {} faults, {held} messages held by A despite a \
             lost answer, {:.1?}",
            proxy.stats.connections.load(Ordering::SeqCst) - conns_before,
            proxy.faults() - before,
            t.elapsed()
        );
        let left = spool_ls(&src);
        assert!(
            left.is_empty(),
            "round {rounds} (seed {seed}) exited 0 but left {} messages: {:?}",
            left.len(),
            left.iter().take(5).collect::<Vec<_>>()
        );
    }

    // Census: each original on exactly one destination, with its hash and queue.
    let mut seen: BTreeMap<String, (&str, LsEntry)> = BTreeMap::new();
    let mut on_a = 0;
    for (name, dir) in [("A", &a.data_dir), ("B", &b.data_dir)] {
        for e in spool_ls(dir) {
            if name == "A" {
                on_a += 1;
            }
            if let Some((other, _)) = seen.insert(e.id.clone(), (name, e.clone())) {
                panic!("message {} is on {other} and {name} (seed {seed})", e.id);
            }
        }
    }
    let mut missing = Vec::new();
    for (id, (queue, hash)) in &originals {
        match seen.get(id) {
            None => missing.push(id.clone()),
            Some((name, e)) => {
                assert_eq!(&e.hash, hash, "message {id} on {name}: hash (seed {seed})");
                assert_eq!(
                    &e.queue, queue,
                    "message {id} on {name}: queue (seed {seed})"
                );
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} messages lost (seed {seed}): {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let extra: Vec<&String> = seen
        .keys()
        .filter(|id| !originals.contains_key(*id))
        .collect();
    assert!(
        extra.is_empty(),
        "unknown messages on the destinations: {extra:?}"
    );
    assert_eq!(seen.len(), originals.len());
    assert!(spool_ls(&src).is_empty(), "the source spool is not empty");

    assert!(
        on_a > 0,
        "A received nothing through the proxy (seed {seed})"
    );
    assert!(on_a < originals.len(), "B received nothing (seed {seed})");
    let faults = proxy.faults();
    assert!(
        faults >= min_faults,
        "{faults} faults < {min_faults} (seed {seed})"
    );
    eprintln!(
        "fault proxy: seed {seed}: {rounds} rounds, {} messages ({on_a} on A, {} on B), \
         {} connections ({} faulty), {faults} faults ({} held the tickets, not the answer), \
         {held_after_fault} messages held by A despite a lost answer, {:.1?}",
        originals.len(),
        originals.len() - on_a,
        proxy.stats.connections.load(Ordering::SeqCst),
        proxy.stats.faulty.load(Ordering::SeqCst),
        proxy.stats.answered.load(Ordering::SeqCst),
        started.elapsed()
    );
}
