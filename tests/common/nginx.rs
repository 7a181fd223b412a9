//! A real nginx (Debian's `nginx`) run by a test from `examples/nginx.conf`, its placeholders
//! filled in; stopped when the guard is dropped.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TempDir, closed_port};

/// A running `nginx -g 'daemon off;'`; killed (and reaped) on drop.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    prefix: PathBuf,
}

impl Nginx {
    /// Starts nginx on a free port of `ip` with the `(placeholder, value)` pairs filled in
    /// (`@LISTEN@` and `@PREFIX@` are filled here); waits until it accepts connections.
    pub fn start(tmp: &TempDir, ip: &str, fill: &[(&str, String)]) -> Nginx {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nginx.conf");
        let mut cfg = std::fs::read_to_string(&src).expect("examples/nginx.conf");
        let addr: SocketAddr = format!("{ip}:{}", closed_port(ip)).parse().unwrap();
        let prefix = tmp.path().join("nginx");
        std::fs::create_dir_all(&prefix).unwrap();
        cfg = cfg
            .replace("@LISTEN@", &addr.to_string())
            .replace("@PREFIX@", &prefix.display().to_string());
        for (k, v) in fill {
            cfg = cfg.replace(k, v);
        }
        let unfilled = cfg
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .any(|l| l.contains('@'));
        assert!(!unfilled, "unfilled: {cfg}");
        let path = prefix.join("nginx.conf");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(&prefix)
            .args(["-g", "daemon off; master_process on; user root;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(prefix.join("stderr.log")).unwrap())
            .spawn()
            .expect("nginx installed (tests/run.sh installs it)");
        let mut n = Nginx {
            child,
            addr,
            prefix,
        };
        n.wait_accepting();
        n
    }

    fn wait_accepting(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("nginx exited ({st}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx not accepting: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its error log, standard error and access log.
    pub fn log(&self) -> String {
        ["error.log", "stderr.log", "access.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.prefix.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `IP:PORT` as a destination argument.
    pub fn dest(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers too (a SIGKILL would orphan them, listening).
        let pid = self.child.id() as i32;
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
