//! A real HAProxy (Debian's `haproxy`) run by a test from one of the operator configurations
//! in `examples/`, its placeholders filled in; killed when the guard is dropped.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TempDir, closed_port};

/// A running `haproxy -db`; killed (and reaped) on drop.
pub struct HaProxy {
    child: Child,
    pub addr: SocketAddr,
    log: std::path::PathBuf,
}

impl HaProxy {
    /// Starts HAProxy from `examples/<example>` with `@LISTEN@` (a free port on `ip`) and the
    /// given `(placeholder, value)` pairs filled in; waits until it accepts connections.
    pub fn start(tmp: &TempDir, example: &str, ip: &str, fill: &[(&str, String)]) -> HaProxy {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(example);
        let mut cfg = std::fs::read_to_string(&src).expect("example configuration");
        let addr: SocketAddr = format!("{ip}:{}", closed_port(ip)).parse().unwrap();
        cfg = cfg.replace("@LISTEN@", &addr.to_string());
        for (k, v) in fill {
            cfg = cfg.replace(k, v);
        }
        assert!(
            !cfg.contains("@BACKEND1@") && !cfg.contains("@CERT@"),
            "unfilled: {cfg}"
        );
        let path = tmp.path().join(example);
        std::fs::write(&path, cfg).unwrap();
        let log = tmp.path().join(format!("{example}.log"));
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap())
            .spawn()
            .expect("haproxy installed (tests/run.sh installs it)");
        let mut h = HaProxy { child, addr, log };
        h.wait_accepting();
        h
    }

    fn wait_accepting(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("haproxy exited ({st}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy not accepting: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `IP:PORT` as a destination argument.
    pub fn dest(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
