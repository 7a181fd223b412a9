//! A drain's wait on a running `drain serve` under faults: the drain SIGKILLed or SIGTERMed
//! while it waits for events, the serve stopped (SIGSTOP) or gone during the wait. In each case
//! the serve ends up taking messages again (or lets a new drain take over), the drain ends with
//! the exit code product.md gives, within a bounded time, and the spool is untouched.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

/// A source instance running `drain serve` whose event endpoint always answers 500, with `n`
/// messages added through `spool add` (so `n` events pending), and a destination that refuses
/// connections. Addresses: 127.0.0.`base` (endpoint), `base+1` (source; the destination's
/// closed port is on it too).
struct Stuck {
    _sink: EventSink,
    src_dir: PathBuf,
    src: Server,
    dest: String,
}

impl Stuck {
    fn start(tmp: &TempDir, base: u8, n: usize) -> Stuck {
        let ip = |k: u8| format!("127.0.0.{}", base + k);
        let sink = EventSink::start(&ip(0));
        sink.status.store(500, Ordering::SeqCst);
        let src_dir = tmp.sub("src");
        for i in 0..n {
            spool_add(&src_dir, "queue", 0, None, format!("m {i}\r\n").as_bytes());
        }
        let src_ip = ip(1);
        let mut cfg = ServeConfig::on(&src_ip);
        cfg.extra = vec!["--event-endpoint".into(), sink.url.clone()];
        let src = Server::start(tmp, "src", cfg);
        let dest = format!("{src_ip}:{}", closed_port(&src_ip));
        Stuck {
            _sink: sink,
            src_dir,
            src,
            dest,
        }
    }
}

/// `GET /v1/health` of `s`: whether it accepts transfers.
fn accepting(s: &Server) -> bool {
    drain::tls::install_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pem = std::fs::read(&s.cert).unwrap();
        let certs = reqwest::Certificate::from_pem_bundle(&pem).unwrap();
        let c = reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only(certs)
            .build()
            .unwrap();
        let url = format!("https://{}/v1/health", s.addr);
        let v: serde_json::Value = c.get(url).send().await.unwrap().json().await.unwrap();
        v["accepting"].as_bool().unwrap()
    })
}

/// Waits (up to a minute) for the serve to accept transfers again.
fn wait_accepting(s: &Server) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !accepting(s) {
        assert!(
            Instant::now() < deadline,
            "the serve never accepted again:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

type Watched = (std::process::Child, std::sync::mpsc::Receiver<String>);

/// Starts `drain --max-event-wait 60s DEST` and waits for its line saying it waits for events.
fn drain_waiting(s: &Stuck) -> Watched {
    let (child, rx) = spawn_watched(&s.src_dir, &["--max-event-wait", "60s", &s.dest]);
    wait_line(&rx, "waiting for the event processor");
    assert!(!accepting(&s.src), "intake is stopped during the wait");
    (child, rx)
}

/// Waits for a watched drain to exit: its exit code and the rest of its standard error.
fn finish((mut child, rx): Watched) -> (i32, String) {
    let code = wait_up_to(&mut child, Duration::from_secs(60)).expect("drain exits");
    (code, rx.iter().collect::<Vec<_>>().join("\n"))
}

fn spool_ids(dir: &Path) -> Vec<String> {
    spool_ls(dir).into_iter().map(|e| e.id).collect()
}

#[test]
fn a_drain_killed_while_waiting_for_events_gives_intake_back() {
    let tmp = TempDir::new("killwait");
    let s = Stuck::start(&tmp, 131, 3);
    let before = spool_ids(&s.src_dir);
    let (mut child, _rx) = drain_waiting(&s);
    let dead_pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    wait_accepting(&s.src);
    assert!(
        s.src.log().contains("went away without finishing"),
        "{}",
        s.src.log()
    );
    // A new drain can start (and waits, as the first did, on the failing endpoint).
    let o = drain(&s.src_dir, &["--max-event-wait", "1s", &s.dest]);
    assert_eq!(code(&o), 10, "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "drain: 3 events still pending after --max-event-wait 1s; the spool is \
             untouched and intake is accepting again"
        ),
        "{}",
        show(&o)
    );
    assert!(!err.contains(&format!("pid {dead_pid}")), "{err}");
    assert_eq!(spool_ids(&s.src_dir), before, "the spool is untouched");
    wait_accepting(&s.src);
}

#[test]
fn sigterm_while_waiting_for_events_exits_42_and_gives_intake_back() {
    let tmp = TempDir::new("termwait");
    let s = Stuck::start(&tmp, 134, 2);
    let before = spool_ids(&s.src_dir);
    let w = drain_waiting(&s);
    signal(&w.0, libc::SIGTERM);
    let (code, err) = finish(w);
    assert_eq!(code, 42, "{err}");
    assert!(
        err.contains(
            "drain: stopped by signal while waiting for 2 events to be delivered; nothing \
             moved, the spool is untouched and intake is accepting again"
        ),
        "{err}"
    );
    assert!(accepting(&s.src), "intake accepts again at once");
    assert_eq!(spool_ids(&s.src_dir), before);
    assert_eq!(pending_events(&s.src_dir), 2);
}

#[test]
fn a_second_drain_during_the_wait_names_the_first_drain() {
    let tmp = TempDir::new("twowait");
    let s = Stuck::start(&tmp, 137, 1);
    let w = drain_waiting(&s);
    let o = drain(&s.src_dir, &["--max-event-wait", "5s", &s.dest]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let want = format!(
        "drain: data directory {} is already being drained by pid {} (drain); wait for that \
         drain to end, or stop it first\n",
        s.src_dir.display(),
        w.0.id()
    );
    assert_eq!(String::from_utf8_lossy(&o.stderr), want);
    signal(&w.0, libc::SIGTERM);
    assert_eq!(finish(w).0, 42);
}

/// Continues a stopped process when dropped, so a failing test leaves nothing stopped.
struct Continue(u32);

impl Drop for Continue {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a pid this test started.
        unsafe {
            libc::kill(self.0 as i32, libc::SIGCONT);
        }
    }
}

#[test]
fn a_stopped_serve_does_not_hang_the_drain() {
    let tmp = TempDir::new("sigstop");
    let s = Stuck::start(&tmp, 140, 2);
    let before = spool_ids(&s.src_dir);
    let pid = s.src.child.id();
    signal(&s.src.child, libc::SIGSTOP);
    let guard = Continue(pid);
    let started = Instant::now();
    let o = drain(&s.src_dir, &["--max-event-wait", "5s", &s.dest]);
    let took = started.elapsed();
    assert_eq!(code(&o), 1, "{}", show(&o));
    eprintln!("the drain on a stopped serve ended after {took:?}");
    assert!(took < Duration::from_secs(7), "took {took:?}");
    let socket = s.src_dir.join("control.sock");
    let want = format!(
        "drain: drain serve (pid {pid}) holds {} but gave no answer on its control socket {} \
         within 5s (is it stopped, e.g. by SIGSTOP, or hung?); nothing was changed, the spool \
         is untouched\n",
        s.src_dir.display(),
        socket.display()
    );
    assert_eq!(String::from_utf8_lossy(&o.stderr), want);
    drop(guard);
    assert_eq!(spool_ids(&s.src_dir), before);
    wait_accepting(&s.src);
}

#[test]
fn a_serve_that_dies_during_the_wait_is_reported_not_reachable() {
    let tmp = TempDir::new("diewait");
    let mut s = Stuck::start(&tmp, 143, 2);
    let w = drain_waiting(&s);
    let pid = s.src.child.id();
    s.src.kill();
    let (code, err) = finish(w);
    assert_eq!(code, 10, "{err}");
    let want = format!(
        "drain: 2 events are pending and drain serve (pid {pid}): not reachable on its control \
         socket {}: Connection refused (os error 111); nothing delivers them; the spool is \
         untouched and intake is accepting again",
        s.src_dir.join("control.sock").display()
    );
    assert!(err.contains(&want), "{err}");
    assert!(!err.contains("no --event-endpoint"), "{err}");
}
