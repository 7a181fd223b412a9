//! `drain serve --config FILE`: the intake's settings in a TOML file, with keys named after
//! GreenArrow's directives, and how they combine with the command line.
//!
//! The settings are one table, below (the `settings!` macro of `table`): each line names a
//! key, its type, its flag and its default (or that it is required, or optional); from it come
//! the file's keys, the precedence, the defaults and the `--check-config` lines. Adding a
//! setting of an existing type is one line there, plus its flag (CLI) and its use
//! ([`ServeOptions`](crate::intake::ServeOptions)). Layers, each importing only those before:
//! `setting` (a value with its source, the precedence rule, [`ConfigError`]); `file` (TOML
//! with spans -> `FILE:LINE` errors, "did you mean" via `strsim`); `values` (per value type:
//! reading, checks, TOML output); the table here; `resolve` (cross-checks, certificate check,
//! [`Settings::into_options`]) and `render` ([`Settings::to_toml`]). Called by the CLI.
//!
//! Every key is optional and at the top level (no sections):
//!
//! | key | TOML type | flag | default |
//! | --- | --- | --- | --- |
//! | `listen` | string `"ADDR:PORT"` | `--listen` | `"0.0.0.0:443"` |
//! | `tls_cert` | string, a path (PEM chain) | `--tls-cert` | none: required |
//! | `tls_key` | string, a path (PEM key) | `--tls-key` | none: required |
//! | `accept_drain_from` | array of IP/CIDR strings | `--accept-drain-from` | `[]`: nothing accepted |
//! | `http_trusted_proxy_ips` | array of IP/CIDR strings | `--trusted-proxy-ips` | `[]` |
//! | `incoming_drain_workers` | integer, 1 to 4096 | `--incoming-drain-workers` | `8` |
//! | `event_endpoints` | array of `http(s)://` URLs | `--event-endpoint` | `[]` |
//! | `event_timeout` | string, a duration (`"30s"`), 1s to 1h | `--event-timeout` | `"30s"` |
//! | `max_request_size` | integer, bytes, 1024 to 4 GiB | `--max-request-size` | `268435456` (256 MiB) |
//! | `dedupe_retention` | string, a duration (`"7d"`, `"36h"`), at most `"3650d"` | `--dedupe-retention` | `"7d"` |
//! | `wait_after_drain` | boolean | `--wait-after-drain` | `false` |
//! | `metrics_listen` | string `"ADDR:PORT"` | `--metrics-listen` | none: no metrics listener |
//! | `client_ca` | string, a path (PEM CA certificates) | `--client-ca` | none: no client certificate required |
//! | `tls_handshake_timeout` | string, a duration, 100ms to 1h | `--tls-handshake-timeout` | `"10s"` |
//! | `header_read_timeout` | string, a duration, 100ms to 1h | `--header-read-timeout` | `"30s"` |
//! | `body_idle_timeout` | string, a duration, 100ms to 1h | `--body-idle-timeout` | `"30s"` |
//! | `max_connections_per_peer` | integer, 1 to 65536 | `--max-connections-per-peer` | `64` |
//! | `spool_sync` | string: `"auto"`, `"file"` or `"filesystem"` | `--spool-sync` | `"auto"` |
//!
//! An array key also takes one string (comma-separated for the IP/CIDR lists, as the flags do).
//!
//! Precedence: a flag given on the command line wins over the file; a list flag given at all
//! replaces the file's whole list (it does not add to it); what neither gives takes the default.
//! Relative paths in the file are relative to the file's directory.
//!
//! Unknown keys, wrong types and bad values are errors, every one reported (not only the first)
//! as `FILE:LINE: key: what`, e.g. `serve.toml:3: accept_drain_from: invalid CIDR "10.0.0.0/33"`.
//! IPs and CIDRs are checked by [`super::access::parse_net`], so the file and the flags give
//! the same messages. `drain serve --check-config` resolves everything, also loads the
//! certificate and key and the client CA (each CA certificate must be valid now), reports a
//! key file or data directory others may read as a warning, and prints the effective settings as TOML ([`Settings::to_toml`]),
//! each line commented with where its value came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::intake::access::NetList;
use crate::spool::SpoolSync;

mod file;
mod render;
mod resolve;
mod setting;
mod table;
#[cfg(test)]
mod tests;
mod values;

pub use setting::{ConfigError, Setting, Source};
use setting::{or_default, pick, required};
use table::settings;
pub use values::{
    MAX_REQUEST_SIZE, MAX_RETENTION, MAX_WORKERS, check_duration, check_endpoint, check_integer,
    duration_range, integer_range, parse_duration, parse_event_timeout, parse_listen,
};

pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 443);
pub const DEFAULT_WORKERS: usize = 8;
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 256 << 20;
pub const DEFAULT_DEDUPE_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 64;
pub const DEFAULT_EVENT_TIMEOUT: Duration = crate::events::processor::DEFAULT_TIMEOUT;

settings! {
    /// Address and port the intake listens on.
    listen: SocketAddr, "--listen", default(DEFAULT_LISTEN);
    /// The TLS certificate chain (PEM).
    tls_cert: PathBuf, "--tls-cert", required("the TLS certificate chain (PEM)");
    /// The TLS private key (PEM).
    tls_key: PathBuf, "--tls-key", required("the TLS private key (PEM)");
    /// Who may drain into this instance.
    accept_drain_from: NetList, "--accept-drain-from", default(NetList::default());
    /// Proxies whose forwarding headers are honoured.
    http_trusted_proxy_ips: NetList, "--trusted-proxy-ips", default(NetList::default());
    /// Incoming messages processed at once.
    incoming_drain_workers: usize, "--incoming-drain-workers", default(DEFAULT_WORKERS);
    /// Where the event processor POSTs events.
    event_endpoints: Vec<String>, "--event-endpoint", default(Vec::new());
    /// How long one POST to an event endpoint may take.
    event_timeout: Duration, "--event-timeout", default(DEFAULT_EVENT_TIMEOUT);
    /// Largest transfer request accepted, in bytes.
    max_request_size: usize, "--max-request-size", default(DEFAULT_MAX_REQUEST_SIZE);
    /// How long dedupe keys of unfinished runs are kept.
    dedupe_retention: Duration, "--dedupe-retention", default(DEFAULT_DEDUPE_RETENTION);
    /// Stay alive after a drain stopped this serve.
    wait_after_drain: bool, "--wait-after-drain", default(false);
    /// Where to serve Prometheus metrics.
    metrics_listen: SocketAddr, "--metrics-listen", optional("no metrics listener");
    /// Senders must present a client certificate issued by a CA in this file (PEM).
    client_ca: PathBuf, "--client-ca", optional("no client certificate required");
    /// Longest a TLS handshake may take.
    tls_handshake_timeout: Duration, "--tls-handshake-timeout", default(DEFAULT_TLS_HANDSHAKE_TIMEOUT);
    /// Longest wait for a request's header (HTTP/1), or for a ping's answer (HTTP/2).
    header_read_timeout: Duration, "--header-read-timeout", default(DEFAULT_HEADER_READ_TIMEOUT);
    /// Longest a request body may go without a byte arriving.
    body_idle_timeout: Duration, "--body-idle-timeout", default(DEFAULT_BODY_IDLE_TIMEOUT);
    /// Most connections open at once from one peer address.
    max_connections_per_peer: usize, "--max-connections-per-peer", default(DEFAULT_MAX_CONNECTIONS_PER_PEER);
    /// How received copies are made durable: an fsync each, or one syncfs per transfer.
    spool_sync: SpoolSync, "--spool-sync", default(SpoolSync::Auto);
}

/// The flag that overrides `key` ("" for no such key).
fn flag_of(key: &str) -> &'static str {
    KEYS.iter()
        .find(|(k, _)| *k == key)
        .map(|(_, f)| *f)
        .unwrap_or("")
}

impl Layer {
    /// Reads and checks a config file.
    pub fn from_file(path: &Path) -> Result<Layer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(vec![format!(
                "cannot read the config file {}: {e}",
                path.display()
            )])
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Layer::parse(&text, &path.display().to_string(), base)
    }

    /// Parses a config file's text; `name` is how errors name the file, `base` the directory
    /// relative paths are taken from.
    pub fn parse(text: &str, name: &str, base: &Path) -> Result<Layer, ConfigError> {
        let mut layer = Layer::default();
        file::read_document(text, name, KEYS, |r, key, v| {
            layer.read_key(r, key, v, base)
        })?;
        Ok(layer)
    }
}
