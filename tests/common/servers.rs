//! Real `drain serve` destinations on loopback, with self-signed certificates: start, kill
//! (SIGKILL), restart on the same address; and the CA bundle a drain needs to trust them.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{BIN, LsEntry, TempDir, drain, spool_ls};

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
    /// A destination whose certificate names its IP address.
    pub fn start(tmp: &TempDir, name: &str, cfg: ServeConfig<'_>) -> Server {
        let ip = cfg.ip;
        Self::start_with_names(tmp, name, cfg, &[ip])
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
