//! `drain serve --config FILE`: the intake's settings in a TOML file, with keys named after
//! GreenArrow's directives, and how they combine with the command line.
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
//! | `incoming_drain_workers` | integer, at least 1 | `--incoming-drain-workers` | `8` |
//! | `event_endpoints` | array of `http(s)://` URLs | `--event-endpoint` | `[]` |
//! | `max_request_size` | integer, bytes | `--max-request-size` | `268435456` (256 MiB) |
//! | `dedupe_retention` | string, a duration (`"7d"`, `"36h"`) | `--dedupe-retention` | `"7d"` |
//! | `wait_after_drain` | boolean | `--wait-after-drain` | `false` |
//! | `metrics_listen` | string `"ADDR:PORT"` | `--metrics-listen` | none: no metrics listener |
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
//! certificate and key, and prints the effective settings as TOML ([`Settings::to_toml`]),
//! each line commented with where its value came from.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::ServeOptions;
use super::access::{Access, NetList};
use crate::events::processor::Endpoint;

pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 443);
pub const DEFAULT_WORKERS: usize = 8;
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 256 << 20;
pub const DEFAULT_DEDUPE_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Every key of the file, with the flag that overrides it.
pub const KEYS: &[(&str, &str)] = &[
    ("listen", "--listen"),
    ("tls_cert", "--tls-cert"),
    ("tls_key", "--tls-key"),
    ("accept_drain_from", "--accept-drain-from"),
    ("http_trusted_proxy_ips", "--trusted-proxy-ips"),
    ("incoming_drain_workers", "--incoming-drain-workers"),
    ("event_endpoints", "--event-endpoint"),
    ("max_request_size", "--max-request-size"),
    ("dedupe_retention", "--dedupe-retention"),
    ("wait_after_drain", "--wait-after-drain"),
    ("metrics_listen", "--metrics-listen"),
];

fn flag_of(key: &str) -> &'static str {
    KEYS.iter()
        .find(|(k, _)| *k == key)
        .map(|(_, f)| *f)
        .unwrap_or("")
}

/// One or more problems with the settings, each a complete line naming where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => f.write_str(one),
            many => {
                write!(f, "{} problems with the settings:", many.len())?;
                for p in many {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// One source of settings (the file, or the flags): `None` where it says nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Layer {
    pub listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub accept_drain_from: Option<NetList>,
    pub http_trusted_proxy_ips: Option<NetList>,
    pub incoming_drain_workers: Option<usize>,
    pub event_endpoints: Option<Vec<String>>,
    pub max_request_size: Option<usize>,
    pub dedupe_retention: Option<Duration>,
    pub wait_after_drain: Option<bool>,
    pub metrics_listen: Option<SocketAddr>,
}

/// Parses `"ADDR:PORT"`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("invalid address {s:?} (expected IP:PORT, for example 0.0.0.0:443 or [::]:443)")
    })
}

/// Parses a duration such as `7d`, `36h`, `90m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?} ({e}; expected for example \"7d\" or \"36h\")")
    })
}

/// Checks an event endpoint URL (the event processor's own check).
pub fn check_endpoint(s: &str) -> Result<String, String> {
    Endpoint::new(s).map(|e| e.url)
}

/// Reads values out of a parsed document, collecting every problem with its line.
struct Reader<'a> {
    name: &'a str,
    text: &'a str,
    errors: Vec<(usize, String)>,
}

type Value<'i> = Spanned<DeValue<'i>>;

impl Reader<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn err(&mut self, span: Range<usize>, key: &str, msg: impl fmt::Display) {
        let line = self.line(&span);
        self.errors
            .push((line, format!("{}:{line}: {key}: {msg}", self.name)));
    }

    fn wrong_type(&mut self, key: &str, v: &Value<'_>, want: &str) {
        let found = v.get_ref().type_str();
        self.err(
            v.span(),
            key,
            format!("expected {want}, found {} {found}", article(found)),
        );
    }

    fn string<'v>(&mut self, key: &str, v: &'v Value<'_>) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                self.wrong_type(key, v, "a string");
                None
            }
        }
    }

    /// An array of strings, or one string; each with its span.
    fn strings<'v>(&mut self, key: &str, v: &'v Value<'_>) -> Option<Vec<(&'v str, Range<usize>)>> {
        match v.get_ref() {
            DeValue::String(s) => Some(vec![(s.as_ref(), v.span())]),
            DeValue::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(s) => out.push((s.as_ref(), item.span())),
                        _ => {
                            self.wrong_type(key, item, "a string in the array");
                            ok = false;
                        }
                    }
                }
                ok.then_some(out)
            }
            _ => {
                self.wrong_type(key, v, "an array of strings");
                None
            }
        }
    }

    fn integer(&mut self, key: &str, v: &Value<'_>, min: u64) -> Option<usize> {
        let DeValue::Integer(i) = v.get_ref() else {
            self.wrong_type(key, v, "an integer");
            return None;
        };
        match u64::from_str_radix(i.as_str(), i.radix())
            .ok()
            .filter(|n| *n >= min)
            .and_then(|n| usize::try_from(n).ok())
        {
            Some(n) => Some(n),
            None => {
                self.err(
                    v.span(),
                    key,
                    format!("{i} is out of range (at least {min})"),
                );
                None
            }
        }
    }

    fn boolean(&mut self, key: &str, v: &Value<'_>) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(key, v, "true or false");
                None
            }
        }
    }

    fn parsed<T>(
        &mut self,
        key: &str,
        v: &Value<'_>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let s = self.string(key, v)?;
        match parse(s) {
            Ok(t) => Some(t),
            Err(e) => {
                self.err(v.span(), key, e);
                None
            }
        }
    }

    fn path(&mut self, key: &str, v: &Value<'_>, base: &Path) -> Option<PathBuf> {
        self.parsed(key, v, |s| {
            if s.trim().is_empty() {
                Err("empty path".into())
            } else {
                Ok(base.join(s))
            }
        })
    }

    fn nets(&mut self, key: &str, v: &Value<'_>) -> Option<NetList> {
        let items = self.strings(key, v)?;
        let mut list = NetList::default();
        let mut ok = true;
        for (s, span) in items {
            if let Err(e) = list.parse_into(s) {
                self.err(span, key, e);
                ok = false;
            }
        }
        ok.then_some(list)
    }

    fn urls(&mut self, key: &str, v: &Value<'_>) -> Option<Vec<String>> {
        let items = self.strings(key, v)?;
        let mut out = Vec::new();
        let mut ok = true;
        for (s, span) in items {
            match check_endpoint(s) {
                Ok(u) => out.push(u),
                Err(e) => {
                    self.err(span, key, e);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// A known key close to an unknown one, for "did you mean".
fn suggest(unknown: &str) -> Option<&'static str> {
    let norm = unknown.trim().to_ascii_lowercase().replace('-', "_");
    let keys = KEYS.iter().map(|(k, _)| *k);
    if let Some(k) = keys.clone().find(|k| *k == norm) {
        return Some(k);
    }
    // The flag's name (`trusted_proxy_ips`, `event_endpoint`) or a near miss.
    if let Some((k, _)) = KEYS
        .iter()
        .find(|(_, f)| f.trim_start_matches('-').replace('-', "_") == norm)
    {
        return Some(k);
    }
    keys.map(|k| (edit_distance(&norm, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
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
        let doc = DeTable::parse(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let line = text.as_bytes()[..s.start.min(text.len())]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count()
                        + 1;
                    format!(":{line}")
                })
                .unwrap_or_default();
            ConfigError(vec![format!(
                "{name}{at}: not valid TOML: {}",
                e.message().trim()
            )])
        })?;
        let mut r = Reader {
            name,
            text,
            errors: Vec::new(),
        };
        let mut layer = Layer::default();
        let mut entries: Vec<_> = doc.get_ref().iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        for (k, v) in entries {
            let key: &str = k.get_ref().as_ref();
            match key {
                "listen" => layer.listen = r.parsed(key, v, parse_listen),
                "metrics_listen" => layer.metrics_listen = r.parsed(key, v, parse_listen),
                "tls_cert" => layer.tls_cert = r.path(key, v, base),
                "tls_key" => layer.tls_key = r.path(key, v, base),
                "accept_drain_from" => layer.accept_drain_from = r.nets(key, v),
                "http_trusted_proxy_ips" => layer.http_trusted_proxy_ips = r.nets(key, v),
                "incoming_drain_workers" => layer.incoming_drain_workers = r.integer(key, v, 1),
                "max_request_size" => layer.max_request_size = r.integer(key, v, 1),
                "event_endpoints" => layer.event_endpoints = r.urls(key, v),
                "dedupe_retention" => layer.dedupe_retention = r.parsed(key, v, parse_duration),
                "wait_after_drain" => layer.wait_after_drain = r.boolean(key, v),
                _ => {
                    let hint = match suggest(key) {
                        Some(k) => format!("; did you mean {k}?"),
                        None => {
                            let all: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
                            format!("; the keys are {}", all.join(", "))
                        }
                    };
                    r.err(k.span(), key, format!("unknown key{hint}"));
                }
            }
        }
        if r.errors.is_empty() {
            Ok(layer)
        } else {
            r.errors.sort_by_key(|(line, _)| *line);
            Err(ConfigError(r.errors.into_iter().map(|(_, e)| e).collect()))
        }
    }
}

/// Where an effective setting came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    File,
    Default,
}

/// A setting's value and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting<T> {
    pub value: T,
    pub source: Source,
}

fn pick<T>(flag: Option<T>, file: Option<T>) -> Option<Setting<T>> {
    match (flag, file) {
        (Some(value), _) => Some(Setting {
            value,
            source: Source::Flag,
        }),
        (None, Some(value)) => Some(Setting {
            value,
            source: Source::File,
        }),
        (None, None) => None,
    }
}

fn or_default<T>(s: Option<Setting<T>>, value: T) -> Setting<T> {
    s.unwrap_or(Setting {
        value,
        source: Source::Default,
    })
}

/// The settings `drain serve` runs with: flags over the file over the defaults.
#[derive(Clone, Debug)]
pub struct Settings {
    pub config_file: Option<PathBuf>,
    pub listen: Setting<SocketAddr>,
    pub tls_cert: Setting<PathBuf>,
    pub tls_key: Setting<PathBuf>,
    pub accept_drain_from: Setting<NetList>,
    pub http_trusted_proxy_ips: Setting<NetList>,
    pub incoming_drain_workers: Setting<usize>,
    pub event_endpoints: Setting<Vec<String>>,
    pub max_request_size: Setting<usize>,
    pub dedupe_retention: Setting<Duration>,
    pub wait_after_drain: Setting<bool>,
    pub metrics_listen: Setting<Option<SocketAddr>>,
}

impl Settings {
    /// Combines the flags given with the config file (if any). The certificate and key are
    /// required from one or the other.
    pub fn resolve(flags: Layer, file: Option<(PathBuf, Layer)>) -> Result<Settings, ConfigError> {
        let (config_file, file) = match file {
            Some((p, l)) => (Some(p), l),
            None => (None, Layer::default()),
        };
        let mut missing = Vec::new();
        let mut required = |key: &str, s: Option<Setting<PathBuf>>| {
            if s.is_none() {
                let what = if key == "tls_cert" {
                    "the TLS certificate chain (PEM)"
                } else {
                    "the TLS private key (PEM)"
                };
                missing.push(match &config_file {
                    Some(p) => format!(
                        "{key}: {what} is required: give {} or set {key} in {}",
                        flag_of(key),
                        p.display()
                    ),
                    None => format!(
                        "{key}: {what} is required: give {} (or --config FILE with {key})",
                        flag_of(key)
                    ),
                });
            }
            s
        };
        let tls_cert = required("tls_cert", pick(flags.tls_cert, file.tls_cert));
        let tls_key = required("tls_key", pick(flags.tls_key, file.tls_key));
        let (Some(tls_cert), Some(tls_key)) = (tls_cert, tls_key) else {
            return Err(ConfigError(missing));
        };
        let metrics_listen = or_default(
            pick(flags.metrics_listen, file.metrics_listen).map(|s| Setting {
                value: Some(s.value),
                source: s.source,
            }),
            None,
        );
        let s = Settings {
            listen: or_default(pick(flags.listen, file.listen), DEFAULT_LISTEN),
            tls_cert,
            tls_key,
            accept_drain_from: or_default(
                pick(flags.accept_drain_from, file.accept_drain_from),
                NetList::default(),
            ),
            http_trusted_proxy_ips: or_default(
                pick(flags.http_trusted_proxy_ips, file.http_trusted_proxy_ips),
                NetList::default(),
            ),
            incoming_drain_workers: or_default(
                pick(flags.incoming_drain_workers, file.incoming_drain_workers),
                DEFAULT_WORKERS,
            ),
            event_endpoints: or_default(
                pick(flags.event_endpoints, file.event_endpoints),
                Vec::new(),
            ),
            max_request_size: or_default(
                pick(flags.max_request_size, file.max_request_size),
                DEFAULT_MAX_REQUEST_SIZE,
            ),
            dedupe_retention: or_default(
                pick(flags.dedupe_retention, file.dedupe_retention),
                DEFAULT_DEDUPE_RETENTION,
            ),
            wait_after_drain: or_default(
                pick(flags.wait_after_drain, file.wait_after_drain),
                false,
            ),
            metrics_listen,
            config_file,
        };
        if let Some(m) = s.metrics_listen.value
            && m == s.listen.value
            && m.port() != 0
        {
            return Err(ConfigError(vec![format!(
                "metrics_listen: {m} is also the intake's listen address; give it its own port"
            )]));
        }
        Ok(s)
    }

    /// What `--check-config` checks beyond the values themselves: the certificate and key
    /// load and match.
    pub fn check(&self) -> Result<(), ConfigError> {
        crate::tls::server_config(&self.tls_cert.value, &self.tls_key.value)
            .map(|_| ())
            .map_err(|e| ConfigError(vec![format!("tls_cert / tls_key: {e}")]))
    }

    fn source_note(&self, key: &str, source: Source) -> String {
        match source {
            Source::Flag => flag_of(key).to_string(),
            Source::File => self
                .config_file
                .as_ref()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "config file".into()),
            Source::Default => "default".into(),
        }
    }

    /// The effective settings as a config file, each line commented with its source
    /// (`--flag`, the file's name, or `default`).
    pub fn to_toml(&self) -> String {
        fn q(s: &str) -> String {
            toml::Value::String(s.to_string()).to_string()
        }
        fn list<I: IntoIterator<Item = String>>(items: I) -> String {
            let v: Vec<String> = items.into_iter().map(|s| q(&s)).collect();
            format!("[{}]", v.join(", "))
        }
        fn nets(l: &NetList) -> String {
            list(l.0.iter().map(|n| n.to_string()))
        }
        let path = |p: &Path| q(&p.display().to_string());
        let mut lines: Vec<(String, String, Source)> = vec![
            (
                "listen".into(),
                q(&self.listen.value.to_string()),
                self.listen.source,
            ),
            (
                "tls_cert".into(),
                path(&self.tls_cert.value),
                self.tls_cert.source,
            ),
            (
                "tls_key".into(),
                path(&self.tls_key.value),
                self.tls_key.source,
            ),
            (
                "accept_drain_from".into(),
                nets(&self.accept_drain_from.value),
                self.accept_drain_from.source,
            ),
            (
                "http_trusted_proxy_ips".into(),
                nets(&self.http_trusted_proxy_ips.value),
                self.http_trusted_proxy_ips.source,
            ),
            (
                "incoming_drain_workers".into(),
                self.incoming_drain_workers.value.to_string(),
                self.incoming_drain_workers.source,
            ),
            (
                "event_endpoints".into(),
                list(self.event_endpoints.value.iter().cloned()),
                self.event_endpoints.source,
            ),
            (
                "max_request_size".into(),
                self.max_request_size.value.to_string(),
                self.max_request_size.source,
            ),
            (
                "dedupe_retention".into(),
                q(&humantime::format_duration(self.dedupe_retention.value).to_string()),
                self.dedupe_retention.source,
            ),
            (
                "wait_after_drain".into(),
                self.wait_after_drain.value.to_string(),
                self.wait_after_drain.source,
            ),
        ];
        if let Some(m) = self.metrics_listen.value {
            lines.push((
                "metrics_listen".into(),
                q(&m.to_string()),
                self.metrics_listen.source,
            ));
        }
        let mut out = String::from("# drain serve: effective settings");
        match &self.config_file {
            Some(p) => out.push_str(&format!(
                " (flags given override {}; the rest are defaults)\n",
                p.display()
            )),
            None => out.push_str(" (from flags and defaults; no --config file)\n"),
        }
        let width = lines
            .iter()
            .map(|(k, v, _)| k.len() + 3 + v.len())
            .filter(|w| *w <= 60)
            .max()
            .unwrap_or(0);
        for (k, v, src) in &lines {
            let kv = format!("{k} = {v}");
            out.push_str(&format!("{kv:<width$}  # {}\n", self.source_note(k, *src)));
        }
        if self.metrics_listen.value.is_none() {
            out.push_str("# metrics_listen is not set: no metrics listener\n");
        }
        out
    }

    /// The server's options.
    pub fn into_options(self, data_dir: PathBuf) -> ServeOptions {
        ServeOptions {
            data_dir,
            listen: self.listen.value,
            tls_cert: self.tls_cert.value,
            tls_key: self.tls_key.value,
            access: Access {
                accept_from: self.accept_drain_from.value,
                trusted_proxies: self.http_trusted_proxy_ips.value,
            },
            workers: self.incoming_drain_workers.value,
            max_request_bytes: self.max_request_size.value,
            dedupe_retention: self.dedupe_retention.value,
            event_endpoints: self.event_endpoints.value,
            wait_after_drain: self.wait_after_drain.value,
            metrics_listen: self.metrics_listen.value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Layer, ConfigError> {
        Layer::parse(text, "serve.toml", Path::new("/etc/drain"))
    }

    #[test]
    fn every_key_parses() {
        let l = parse(
            r#"
listen = "127.0.0.1:8443"
tls_cert = "cert.pem"
tls_key = "/abs/key.pem"
accept_drain_from = ["10.0.0.0/8", "192.168.1.7"]
http_trusted_proxy_ips = "10.9.0.1, 10.9.0.2"
incoming_drain_workers = 16
event_endpoints = ["https://events.example.com/x"]
max_request_size = 1_048_576
dedupe_retention = "36h"
wait_after_drain = true
metrics_listen = "127.0.0.1:9100"
"#,
        )
        .unwrap();
        assert_eq!(l.listen, Some("127.0.0.1:8443".parse().unwrap()));
        assert_eq!(l.tls_cert, Some(PathBuf::from("/etc/drain/cert.pem")));
        assert_eq!(l.tls_key, Some(PathBuf::from("/abs/key.pem")));
        assert_eq!(l.accept_drain_from.unwrap().0.len(), 2);
        assert_eq!(l.http_trusted_proxy_ips.unwrap().0.len(), 2);
        assert_eq!(l.incoming_drain_workers, Some(16));
        assert_eq!(l.max_request_size, Some(1 << 20));
        assert_eq!(l.dedupe_retention, Some(Duration::from_secs(36 * 3600)));
        assert_eq!(l.wait_after_drain, Some(true));
        assert_eq!(l.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
    }

    #[test]
    fn every_problem_is_named_with_line_and_key() {
        let e = parse(
            "listen = \"0.0.0.0:443\"\n\
             incoming_drain_workers = \"8\"\n\
             accept_drain_from = [\n  \"10.0.0.1\",\n  \"10.0.0.0/33\",\n]\n\
             listn = \"x\"\n\
             trusted_proxy_ips = []\n\
             max_request_size = 0\n\
             dedupe_retention = \"7 weeks and a bit\"\n",
        )
        .unwrap_err();
        assert_eq!(
            e.0,
            vec![
                "serve.toml:2: incoming_drain_workers: expected an integer, found a string"
                    .to_string(),
                "serve.toml:5: accept_drain_from: invalid CIDR \"10.0.0.0/33\" (expected for \
                 example 10.0.0.0/8)"
                    .into(),
                "serve.toml:7: listn: unknown key; did you mean listen?".into(),
                "serve.toml:8: trusted_proxy_ips: unknown key; did you mean \
                 http_trusted_proxy_ips?"
                    .into(),
                "serve.toml:9: max_request_size: 0 is out of range (at least 1)".into(),
                e.0[5].clone(),
            ]
        );
        assert!(
            e.0[5].starts_with("serve.toml:10: dedupe_retention: invalid duration"),
            "{e}"
        );
        let syntax = parse("listen = \n").unwrap_err();
        assert!(
            syntax.0[0].starts_with("serve.toml:1: not valid TOML"),
            "{syntax}"
        );
    }

    #[test]
    fn flags_win_and_lists_replace() {
        let file = parse(
            "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\naccept_drain_from = [\"10.0.0.1\"]\n\
             incoming_drain_workers = 3\n",
        )
        .unwrap();
        let flags = Layer {
            accept_drain_from: Some("10.0.0.2".parse().unwrap()),
            ..Layer::default()
        };
        let s = Settings::resolve(flags, Some(("serve.toml".into(), file))).unwrap();
        assert_eq!(s.accept_drain_from.value, "10.0.0.2".parse().unwrap());
        assert_eq!(s.accept_drain_from.source, Source::Flag);
        assert_eq!(s.incoming_drain_workers.value, 3);
        assert_eq!(s.incoming_drain_workers.source, Source::File);
        assert_eq!(s.listen.source, Source::Default);
        let text = s.to_toml();
        assert!(
            text.contains("accept_drain_from = [\"10.0.0.2/32\"]"),
            "{text}"
        );
        // The printed settings are themselves a valid config file.
        assert!(parse(&text).is_ok(), "{text}");

        let e = Settings::resolve(Layer::default(), None).unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        assert!(e.0[0].contains("--tls-cert"), "{e}");
    }
}
