//! The journal as an operator sees it: `drain inspect --json` (schema 1, documented in
//! `src/inspect/mod.rs`), the run summary and one message's history.

use std::path::Path;

use serde::Deserialize;

use super::{code, drain, show};

/// `drain inspect --json ARGS...` on `dir`, which must succeed: its one JSON document.
pub fn inspect_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    try_inspect_json(dir, args).unwrap_or_else(|e| panic!("{e}"))
}

/// `drain inspect --json ARGS...` on `dir`: its document, or what it printed if it failed.
pub fn try_inspect_json(dir: &Path, args: &[&str]) -> Result<serde_json::Value, String> {
    let mut all = vec!["inspect", "--json"];
    all.extend_from_slice(args);
    let o = drain(dir, &all);
    if code(&o) != 0 {
        return Err(show(&o));
    }
    serde_json::from_slice(&o.stdout).map_err(|e| format!("not JSON ({e}): {}", show(&o)))
}

/// One message in one run, as `drain inspect --json --message ID` lists it.
#[derive(Clone, Debug, Deserialize)]
pub struct MessageInRun {
    pub seq: u64,
    pub state: String,
    pub dest: Option<String>,
    pub possible_duplicate: bool,
    pub history: Vec<Step>,
}

/// One transition of a message's history.
#[derive(Clone, Debug, Deserialize)]
pub struct Step {
    /// `read`, `sent`, `not_delivered`, `rejected`, `refused`, `reassigned`, `acked`, ...
    pub event: String,
    pub state: String,
    /// RFC 3339.
    pub at: String,
    pub dest: Option<String>,
    pub note: Option<String>,
}

impl Step {
    pub fn time(&self) -> time::OffsetDateTime {
        time::OffsetDateTime::parse(&self.at, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{:?} is not RFC 3339: {e}", self.at))
    }
}

/// Message `id` in the last run of `dir`'s journal that holds it (None: never journaled).
pub fn message_history(dir: &Path, id: &str) -> Option<MessageInRun> {
    let v = inspect_json(dir, &["--message", id]);
    let runs: Vec<MessageInRun> =
        serde_json::from_value(v["runs"].clone()).unwrap_or_else(|e| panic!("{e}: {v}"));
    runs.into_iter().last()
}

/// `<state>.messages` of the last run's `by_state` (0 when there is no run).
pub fn last_run_count(summary: &serde_json::Value, state: &str) -> u64 {
    summary["run"]["by_state"][state]["messages"]
        .as_u64()
        .unwrap_or(0)
}
