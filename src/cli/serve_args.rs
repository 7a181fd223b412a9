//! `drain serve`'s command line: every setting as a flag (the same table as the settings file,
//! `intake::config`), and how flags and file combine into [`ServeOptions`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::intake::{NetList, ServeOptions, config};

#[derive(Args, Debug)]
#[command(after_help = "\
Settings come from --config FILE (TOML, keys named after GreenArrow's directives: listen, tls_cert,
tls_key, accept_drain_from, http_trusted_proxy_ips, incoming_drain_workers, event_endpoints,
event_timeout, max_request_size, dedupe_retention, wait_after_drain, metrics_listen, client_ca,
tls_handshake_timeout, header_read_timeout, body_idle_timeout, max_connections_per_peer,
spool_sync) and from
these flags; a flag
given wins over the file, and a list flag given replaces the file's list.

Examples:
  drain --data-dir /var/lib/mail serve --config /etc/drain/serve.toml
  drain serve --config /etc/drain/serve.toml --check-config      validate, print the effective settings")]
pub struct ServeArgs {
    /// Settings file (TOML); flags given on the command line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the settings (file, flags, certificate and key), print the effective ones as
    /// TOML, and exit: 0 when valid, 1 otherwise. Serves nothing.
    #[arg(long)]
    pub check_config: bool,
    /// Address and port to listen on (default 0.0.0.0:443; port 0: any free port, written to
    /// <data-dir>/serve.addr).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Certificate chain (PEM). Required, here or as tls_cert in --config.
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM). Required, here or as tls_key in --config.
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Who may drain into this instance: IP or CIDR, repeatable or comma-separated.
    /// Nothing is accepted unless listed.
    #[arg(long = "accept-drain-from", value_name = "IP|CIDR")]
    pub accept_drain_from: Vec<String>,
    /// Proxies and balancers whose word on the sender's address is taken (IP or CIDR,
    /// repeatable or comma-separated): their PROXY protocol header (v1/v2, before TLS) and
    /// X-Forwarded-For / Client-IP headers. A PROXY header from any other peer closes the
    /// connection; their forwarding headers are ignored.
    #[arg(
        long = "trusted-proxy-ips",
        visible_alias = "http-trusted-proxy-ips",
        value_name = "IP|CIDR"
    )]
    pub trusted_proxy_ips: Vec<String>,
    /// Incoming messages processed at once (default 8).
    #[arg(long, value_name = "N")]
    pub incoming_drain_workers: Option<usize>,
    /// Largest transfer request accepted, in bytes (413 beyond; default 268435456, 256 MiB).
    #[arg(long, value_name = "BYTES")]
    pub max_request_size: Option<usize>,
    /// Where the event processor POSTs events, as a JSON array (repeatable).
    #[arg(long = "event-endpoint", value_name = "URL")]
    pub event_endpoints: Vec<String>,
    /// How long one POST to an event endpoint may take before it counts as failed and is
    /// retried (default 30s; 1s to 1h). Each endpoint is delivered to on its own, so a slow
    /// one never holds up the others.
    #[arg(long, value_parser = config::parse_event_timeout, value_name = "DURATION")]
    pub event_timeout: Option<std::time::Duration>,
    /// After a drain of this instance stopped it, stay alive (serving nothing, holding
    /// nothing) until SIGTERM/SIGINT: for a container's main process, which must outlive the
    /// preStop hook that drains it.
    #[arg(long)]
    pub wait_after_drain: bool,
    /// How long dedupe keys are kept when a sender never says its run finished (default 7d).
    #[arg(long, value_parser = config::parse_duration, value_name = "DURATION")]
    pub dedupe_retention: Option<std::time::Duration>,
    /// Serve Prometheus metrics (plain HTTP, GET /metrics) on this address; bind it to an
    /// address only your monitoring reaches.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// Mutual TLS: accept only senders presenting a client certificate issued by a CA in this
    /// PEM file (in addition to --accept-drain-from). Senders pass --client-cert/--client-key.
    #[arg(long, value_name = "PEM")]
    pub client_ca: Option<PathBuf>,
    /// Longest a TLS handshake may take before the connection is closed (default 10s; 100ms
    /// to 1h).
    #[arg(long, value_parser = config::parse_duration, value_name = "DURATION")]
    pub tls_handshake_timeout: Option<std::time::Duration>,
    /// Longest wait for a request's header over HTTP/1, also how long an idle kept-alive
    /// connection stays open; over HTTP/2, the keep-alive ping interval and how long its answer
    /// may take (default 30s; 100ms to 1h).
    #[arg(long, value_parser = config::parse_duration, value_name = "DURATION")]
    pub header_read_timeout: Option<std::time::Duration>,
    /// A request body that delivers no byte for this long is aborted (408, nothing stored,
    /// logged and counted) (default 30s; 100ms to 1h).
    #[arg(long, value_parser = config::parse_duration, value_name = "DURATION")]
    pub body_idle_timeout: Option<std::time::Duration>,
    /// Most connections open at once from one peer address; more are closed at accept, with a
    /// warning (default 64; 1 to 65536; --trusted-proxy-ips peers are exempt).
    #[arg(long, value_name = "N")]
    pub max_connections_per_peer: Option<usize>,
    /// How a received transfer's copies are made durable before it is answered: `file` (an
    /// fsync per copy, a directory fsync per queue), `filesystem` (one syncfs(2) per transfer:
    /// fewer syncs, but it also flushes what others wrote on that file system), or `auto`
    /// (default: `filesystem` on ext4, XFS and btrfs, `file` elsewhere, FUSE and NFS included).
    #[arg(long, value_name = "auto|file|filesystem")]
    pub spool_sync: Option<crate::spool::SpoolSync>,
}

impl ServeArgs {
    /// The settings the flags given on the command line make (the rest: `None`).
    fn flag_layer(&self) -> anyhow::Result<config::Layer> {
        let nets = |flag: &str, list: &[String]| -> anyhow::Result<Option<NetList>> {
            if list.is_empty() {
                return Ok(None);
            }
            let mut l = NetList::default();
            for s in list {
                l.parse_into(s)
                    .map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
            }
            Ok(Some(l))
        };
        let in_range = |key: &str, flag: &str, v: Option<usize>| -> anyhow::Result<Option<usize>> {
            v.map(|n| config::check_integer(key, flag, n))
                .transpose()
                .map_err(anyhow::Error::msg)
        };
        let duration = |key: &str,
                        flag: &str,
                        v: Option<std::time::Duration>|
         -> anyhow::Result<Option<std::time::Duration>> {
            v.map(|d| config::check_duration(key, d))
                .transpose()
                .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
        };
        let endpoints = if self.event_endpoints.is_empty() {
            None
        } else {
            Some(
                self.event_endpoints
                    .iter()
                    .map(|u| {
                        config::check_endpoint(u)
                            .map_err(|e| anyhow::anyhow!("--event-endpoint: {e}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?,
            )
        };
        Ok(config::Layer {
            listen: self.listen,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            accept_drain_from: nets("--accept-drain-from", &self.accept_drain_from)?,
            http_trusted_proxy_ips: nets("--trusted-proxy-ips", &self.trusted_proxy_ips)?,
            incoming_drain_workers: in_range(
                "incoming_drain_workers",
                "--incoming-drain-workers",
                self.incoming_drain_workers,
            )?,
            event_endpoints: endpoints,
            event_timeout: self.event_timeout,
            max_request_size: in_range(
                "max_request_size",
                "--max-request-size",
                self.max_request_size,
            )?,
            dedupe_retention: self.dedupe_retention,
            wait_after_drain: self.wait_after_drain.then_some(true),
            metrics_listen: self.metrics_listen,
            client_ca: self.client_ca.clone(),
            tls_handshake_timeout: duration(
                "tls_handshake_timeout",
                "--tls-handshake-timeout",
                self.tls_handshake_timeout,
            )?,
            header_read_timeout: duration(
                "header_read_timeout",
                "--header-read-timeout",
                self.header_read_timeout,
            )?,
            body_idle_timeout: duration(
                "body_idle_timeout",
                "--body-idle-timeout",
                self.body_idle_timeout,
            )?,
            max_connections_per_peer: in_range(
                "max_connections_per_peer",
                "--max-connections-per-peer",
                self.max_connections_per_peer,
            )?,
            spool_sync: self.spool_sync,
        })
    }

    /// The effective settings: the flags given, over the `--config` file, over the defaults.
    pub fn settings(&self) -> anyhow::Result<config::Settings> {
        let flags = self.flag_layer()?;
        let file = match &self.config {
            Some(p) => Some((p.clone(), config::Layer::from_file(p)?)),
            None => None,
        };
        Ok(config::Settings::resolve(flags, file)?)
    }

    pub fn into_options(self, data_dir: PathBuf) -> anyhow::Result<ServeOptions> {
        Ok(self.settings()?.into_options(data_dir))
    }
}
