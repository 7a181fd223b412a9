//! `drain demo`: the whole product on one machine. Starts two `drain serve` destinations on
//! 127.0.0.2 and 127.0.0.3 with self-signed certificates, fills a source spool with sample
//! messages of every queue kind, drains it, and audits where every message went.
//!
//! Drains through `engine::session`, as `drain` does; called by the CLI (`drain demo`), and
//! `fill` by tests and benches.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::base::{MessageId, QueueKind, Timestamp};
use crate::engine::{Destination, DrainOptions, Mode, ProgressMode, session};
use crate::spool::{Header, Message, Spool};

/// Kills the child processes however the demo ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run(messages: usize, keep: bool) -> anyhow::Result<i32> {
    let base = std::env::temp_dir().join(format!("drain-demo-{}", MessageId::random()?));
    crate::base::durable::create_private_dir_all(&base)?;
    let result = run_in(&base, messages);
    if keep {
        println!("demo files kept in {}", base.display());
    } else {
        let _ = std::fs::remove_dir_all(&base);
    }
    result
}

fn run_in(base: &Path, messages: usize) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("cannot find the drain executable")?;
    let mut children = Children(Vec::new());
    let (dests, ca) = start_destinations(base, &exe, &mut children)?;
    let src = base.join("source");
    let originals = fill(&src, messages)?;
    let total: u64 = originals.values().map(|(_, _, s)| s).sum();
    println!(
        "source: {} messages ({}) in {}",
        originals.len(),
        crate::base::units::human_bytes(total),
        src.display()
    );
    println!(
        "draining to {} ...",
        dests
            .iter()
            .map(|(_, d)| d.to_string())
            .collect::<Vec<_>>()
            .join(" and ")
    );
    let opts = DrainOptions {
        data_dir: src.clone(),
        destinations: dests.iter().map(|(_, d)| d.clone()).collect(),
        concurrency: crate::engine::default_concurrency(),
        bind_ip: None,
        ca_cert: Some(ca),
        client_identity: None,
        max_in_flight_bytes: 64 << 20,
        batch_size: None,
        mode: Mode::Fresh,
        reassign_after: None,
        fallback: None,
        progress: ProgressMode::for_stderr(false, Duration::from_secs(2)),
        journal_retention: crate::engine::DEFAULT_JOURNAL_RETENTION,
    };
    let wait = crate::control::EventWait {
        wait: true,
        max: None,
    };
    let code = session::drain(opts, Some(wait))?.print(false)?;
    let ok = audit(&src, &dests, &originals)? && code == 0;
    println!("demo {}", if ok { "passed" } else { "FAILED" });
    Ok(if ok { 0 } else { code.max(1) })
}

/// A destination of the demo: its data directory and address.
type Dest = (std::path::PathBuf, Destination);

/// Starts two `drain serve` destinations with self-signed certificates; returns them and the
/// path of a CA bundle trusting both.
fn start_destinations(
    base: &Path,
    exe: &Path,
    children: &mut Children,
) -> anyhow::Result<(Vec<Dest>, std::path::PathBuf)> {
    let mut dests = Vec::new();
    let mut bundle = String::new();
    for (i, ip) in ["127.0.0.2", "127.0.0.3"].iter().enumerate() {
        let dir = base.join(format!("dest{}", i + 1));
        crate::base::durable::create_private_dir_all(&dir)?;
        let (cert, key) =
            crate::tls::write_self_signed(&[ip.to_string()], base, &format!("dest{}", i + 1))?;
        bundle.push_str(&std::fs::read_to_string(&cert)?);
        let child = Command::new(exe)
            .arg("--data-dir")
            .arg(&dir)
            .arg("--quiet")
            .args([
                "serve",
                "--listen",
                &format!("{ip}:0"),
                "--accept-drain-from",
                "127.0.0.0/8",
            ])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start `drain serve`")?;
        children.0.push(child);
        let addr = wait_for_file(&dir.join("serve.addr"), &mut children.0[i])?;
        println!(
            "destination {} : drain serve on {addr} (data in {})",
            i + 1,
            dir.display()
        );
        dests.push((dir, Destination::parse(&addr).map_err(anyhow::Error::msg)?));
    }
    let ca = base.join("ca.pem");
    std::fs::write(&ca, bundle)?;
    Ok((dests, ca))
}

/// The audit: every original on exactly one destination, byte-identical, none left behind.
fn audit(
    src: &Path,
    dests: &[Dest],
    originals: &HashMap<MessageId, (QueueKind, crate::base::ContentHash, u64)>,
) -> anyhow::Result<bool> {
    println!("audit:");
    let mut seen: HashMap<MessageId, usize> = HashMap::new();
    let mut mismatched = 0;
    for (dir, d) in dests {
        let spool = Spool::open(dir)?;
        let mut per_queue: BTreeMap<&str, usize> = BTreeMap::new();
        for e in spool.scan() {
            let m = spool.read(&e?)?;
            *seen.entry(m.header.id).or_default() += 1;
            *per_queue.entry(m.header.queue.as_str()).or_default() += 1;
            match originals.get(&m.header.id) {
                Some((q, h, _)) if *q == m.header.queue && *h == m.hash => {}
                _ => mismatched += 1,
            }
        }
        let n: usize = per_queue.values().sum();
        println!("  {d}: {n} messages {per_queue:?}");
    }
    let left = Spool::open(src)?.scan().count();
    let once = originals
        .keys()
        .filter(|id| seen.get(id) == Some(&1))
        .count();
    println!(
        "  {once} of {} messages are on exactly one destination with the same hash; {mismatched} differ; {left} left in the source spool",
        originals.len()
    );
    Ok(once == originals.len() && mismatched == 0 && left == 0)
}

/// Waits until `drain serve` writes its address (or exits).
fn wait_for_file(path: &Path, child: &mut Child) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && s.ends_with('\n')
        {
            return Ok(s.trim().to_string());
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("`drain serve` exited early ({status})");
        }
        if Instant::now() > deadline {
            anyhow::bail!("`drain serve` did not start within 30s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How `fill_with` sizes the sample messages' bodies (the spool file adds its header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sizes {
    /// `fill`'s: most 2-50 KiB, one in 200 from 256 KiB to 1 MiB.
    Typical,
    /// Issue 15's workload W1 (the benchmark's default): log-normal, median 12 KiB,
    /// sigma 0.97, clamped to 200 B..=256 KiB; 20,000 messages make about 397 MB of files.
    W1,
    /// 1 KiB bodies: a million messages in little disk, for the benchmark's `--scale`.
    Small,
}

/// Sample messages: sizes typical of email (most 2-50 KiB, a few up to 1 MiB), every queue
/// kind, some attempted with a retry time. Returns id -> (queue, hash, size).
pub fn fill(
    dir: &Path,
    n: usize,
) -> anyhow::Result<HashMap<MessageId, (QueueKind, crate::base::ContentHash, u64)>> {
    fill_with(dir, n, Sizes::Typical)
}

/// `fill` with the size distribution chosen; sizes, queues and attempts come from a fixed
/// seed, so the same `n` and `sizes` give the same workload (ids are random).
pub fn fill_with(
    dir: &Path,
    n: usize,
    sizes: Sizes,
) -> anyhow::Result<HashMap<MessageId, (QueueKind, crate::base::ContentHash, u64)>> {
    let spool = Spool::open(dir)?;
    let mut out = HashMap::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut chunk = Vec::new();
    for i in 0..n {
        let r = next();
        let size = match sizes {
            Sizes::Typical if r % 200 == 0 => 256 * 1024 + (next() % (768 * 1024)) as usize,
            Sizes::Typical => 2048 + (next() % (48 * 1024)) as usize,
            Sizes::W1 => {
                // Box-Muller: a standard normal from two uniforms, u1 in (0, 1].
                let unit = |x: u64| (x >> 11) as f64 / (1u64 << 53) as f64;
                let (u1, u2) = (1.0 - unit(next()), unit(next()));
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (12_288.0 * (0.97 * z).exp()).clamp(200.0, 262_144.0) as usize
            }
            Sizes::Small => 1024,
        };
        let queue = QueueKind::ALL[i % 4];
        let attempts = (r % 5) as u32;
        let header = Header {
            id: MessageId::random()?,
            queue,
            from: format!("sender{}@example.com", r % 97),
            to: vec![format!("rcpt{}@example.net", i)],
            attempts,
            next_retry_at: (attempts > 0).then(|| {
                Timestamp(
                    time::OffsetDateTime::now_utc() + time::Duration::minutes((r % 600) as i64),
                )
            }),
            created_at: Timestamp::now(),
            properties: BTreeMap::from([("demo".to_string(), i.to_string())]),
            body_len: 0,
        };
        let body = sample_body(i, size);
        let bytes = crate::spool::format::encode(&header, &body)?;
        let msg = Message::from_bytes(bytes.into())?;
        out.insert(header.id, (queue, msg.hash, msg.bytes.len() as u64));
        chunk.push(msg);
        if chunk.len() == 256 {
            spool.store_many(&chunk)?;
            chunk.clear();
        }
    }
    spool.store_many(&chunk)?;
    Ok(out)
}

/// A plausible RFC 5322 message of about `size` bytes.
pub fn sample_body(i: usize, size: usize) -> Vec<u8> {
    let mut b = format!(
        "From: Sender <sender@example.com>\r\nTo: rcpt{i}@example.net\r\nSubject: demo message {i}\r\nMessage-ID: <{i}@demo.example.com>\r\n\r\n"
    )
    .into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog. 0123456789 \xc3\xa9\xc3\xa8\r\n";
    while b.len() < size {
        b.extend_from_slice(line);
    }
    b.truncate(size.max(1));
    b
}
