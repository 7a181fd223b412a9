//! The value types of the settings: how each is read from the config file (with the same
//! checks and messages as its flag) and how it is written back as TOML by `--check-config`.
//!
//! One [`ConfigValue`] impl per Rust type, so a new setting of an existing type needs no code
//! here. Used by the settings table (`super::table`), `file` (reading) and `render`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::{Reader, Value};
use crate::events::processor::Endpoint;
use crate::intake::access::NetList;
use crate::spool::SpoolSync;

/// A setting's type: read from a TOML value, written as TOML.
pub trait ConfigValue: Sized {
    /// Reads the value of `key`; a problem is recorded in `r` (with its line) and gives `None`.
    /// Relative paths are taken from `base`.
    fn read(r: &mut Reader<'_>, key: &str, v: &Value<'_>, base: &Path) -> Option<Self>;
    /// The value as TOML, as `--check-config` prints it.
    fn to_toml(&self) -> String;
}

/// The range of each integer setting, by key: beyond it a value is refused where it is given
/// (file line or flag), never passed on to panic later (a semaphore of 2^64 permits, a date
/// 10^14 days ago).
pub fn integer_range(key: &str) -> (u64, u64) {
    match key {
        "incoming_drain_workers" => (1, MAX_WORKERS as u64),
        "max_request_size" => (1024, MAX_REQUEST_SIZE as u64),
        "max_connections_per_peer" => (1, 65536),
        _ => (1, u64::from(u32::MAX)),
    }
}

/// Most incoming messages processed at once.
pub const MAX_WORKERS: usize = 4096;
/// Largest transfer request that may be configured (4 GiB).
pub const MAX_REQUEST_SIZE: usize = 4 << 30;
/// Longest dedupe retention (ten years).
pub const MAX_RETENTION: Duration = Duration::from_secs(3650 * 24 * 3600);

/// The range of each duration setting, by key: the timeouts from 100 ms (shorter would cut
/// healthy peers) to an hour; the dedupe retention up to [`MAX_RETENTION`].
pub fn duration_range(key: &str) -> (Duration, Duration) {
    match key {
        "tls_handshake_timeout" | "header_read_timeout" | "body_idle_timeout" => {
            (Duration::from_millis(100), Duration::from_secs(3600))
        }
        "event_timeout" => (Duration::from_secs(1), Duration::from_secs(3600)),
        _ => (Duration::ZERO, MAX_RETENTION),
    }
}

/// Checks a duration setting against [`duration_range`].
pub fn check_duration(key: &str, d: Duration) -> Result<Duration, String> {
    let (min, max) = duration_range(key);
    if d < min || d > max {
        return Err(format!(
            "{} is out of range ({} to {})",
            humantime::format_duration(d),
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

/// Checks an integer setting against [`integer_range`]; `name` is the key or the flag.
pub fn check_integer(key: &str, name: &str, n: usize) -> Result<usize, String> {
    let (min, max) = integer_range(key);
    if (n as u64) < min || (n as u64) > max {
        return Err(format!("{name}: {n} is out of range ({min} to {max})"));
    }
    Ok(n)
}

/// Parses `"ADDR:PORT"`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("invalid address {s:?} (expected IP:PORT, for example 0.0.0.0:443 or [::]:443)")
    })
}

/// Parses a duration such as `7d`, `36h`, `90m`, `500ms`, of at most [`MAX_RETENTION`] (each
/// setting's own range is [`duration_range`]).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?} ({e}; expected for example \"7d\" or \"36h\")")
    })?;
    if d > MAX_RETENTION {
        return Err(format!("duration {s:?} is out of range (at most 3650d)"));
    }
    Ok(d)
}

/// Parses `--event-timeout` / `event_timeout`: a duration from 1s to 1h.
pub fn parse_event_timeout(s: &str) -> Result<Duration, String> {
    parse_duration_for("event_timeout", s)
}

/// Parses a duration and checks it against [`duration_range`] of `key`.
fn parse_duration_for(key: &str, s: &str) -> Result<Duration, String> {
    parse_duration(s).and_then(|d| check_duration(key, d))
}

/// Checks an event endpoint URL (the event processor's own check).
pub fn check_endpoint(s: &str) -> Result<String, String> {
    Endpoint::new(s).map(|e| e.url)
}

/// A TOML string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A TOML array of strings.
fn list<I: IntoIterator<Item = String>>(items: I) -> String {
    let v: Vec<String> = items.into_iter().map(|s| quote(&s)).collect();
    format!("[{}]", v.join(", "))
}

impl ConfigValue for SocketAddr {
    fn read(r: &mut Reader<'_>, key: &str, v: &Value<'_>, _: &Path) -> Option<Self> {
        r.parsed(key, v, parse_listen)
    }
    fn to_toml(&self) -> String {
        quote(&self.to_string())
    }
}

impl ConfigValue for PathBuf {
    fn read(r: &mut Reader<'_>, key: &str, v: &Value<'_>, base: &Path) -> Option<Self> {
        r.parsed(key, v, |s| {
            if s.trim().is_empty() {
                Err("empty path".into())
            } else {
                Ok(base.join(s))
            }
        })
    }
    fn to_toml(&self) -> String {
        quote(&self.display().to_string())
    }
}

impl ConfigValue for NetList {
    fn read(r: &mut Reader<'_>, key: &str, v: &Value<'_>, _: &Path) -> Option<Self> {
        let items = r.strings(key, v)?;
        let mut list = NetList::default();
        let mut ok = true;
        for (s, span) in items {
            if let Err(e) = list.parse_into(s) {
                r.err(span, key, e);
                ok = false;
            }
        }
        ok.then_some(list)
    }
    fn to_toml(&self) -> String {
        list(self.0.iter().map(|n| n.to_string()))
    }
}

/// A count or a size: an integer, at least 1.
impl ConfigValue for usize {
    fn read(r: &mut Reader<'_>, key: &str, v: &Value<'_>, _: &Path) -> Option<Self> {
        let (min, max) = integer_range(key);
        r.integer(key, v, min, max)
    }
    fn to_toml(&self) -> String {
        self.to_string()
    }
}

/// Event endpoint URLs (the only list of strings among the settings).
impl ConfigValue for Vec<String> {
    fn read(r: &mut Reader<'_>, key: &str, v: &Value<'_>, _: &Path) -> Option<Self> {
        let items = r.strings(key, v)?;
        let mut out = Vec::new();
        let mut ok = true;
        for (s, span) in items {
            match check_endpoint(s) {
                Ok(u) => out.push(u),
                Err(e) => {
                    r.err(span, key, e);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }
    fn to_toml(&self) -> String {
        list(self.iter().cloned())
    }
}

impl ConfigValue for Duration {
    fn read(r: &mut Reader<'_>, key: &str, v: &Value<'_>, _: &Path) -> Option<Self> {
        r.parsed(key, v, |s| {
            parse_duration(s).and_then(|d| check_duration(key, d))
        })
    }
    fn to_toml(&self) -> String {
        quote(&humantime::format_duration(*self).to_string())
    }
}

impl ConfigValue for SpoolSync {
    fn read(r: &mut Reader<'_>, key: &str, v: &Value<'_>, _: &Path) -> Option<Self> {
        r.parsed(key, v, str::parse)
    }
    fn to_toml(&self) -> String {
        quote(self.as_str())
    }
}

impl ConfigValue for bool {
    fn read(r: &mut Reader<'_>, key: &str, v: &Value<'_>, _: &Path) -> Option<Self> {
        r.boolean(key, v)
    }
    fn to_toml(&self) -> String {
        self.to_string()
    }
}
