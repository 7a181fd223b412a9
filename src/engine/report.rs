//! What a drain run did, counted as it happens and printed at the end (text, or JSON).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

pub use crate::base::units::{Count, human_bytes};

/// A message or file that did not move, and why.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// Message id, or the file's path when it could not be read.
    pub what: String,
    pub reason: String,
}

/// The final report of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub run_id: String,
    pub run_seq: u64,
    pub exit_code: i32,
    pub outcome: String,
    pub elapsed_secs: f64,
    /// Acknowledged by each destination (stored or already held).
    pub delivered: BTreeMap<String, Count>,
    /// Acknowledged by each queue kind.
    pub by_queue: BTreeMap<String, Count>,
    /// Local copies removed.
    pub removed: u64,
    /// Failed attempts by reason (a message may fail over and then succeed).
    pub failures: BTreeMap<String, u64>,
    /// Files that could not be read (exit 11).
    pub unreadable: Vec<Problem>,
    /// Messages every destination rejected permanently or that could not be sent (exit 12).
    pub undelivered: Vec<Problem>,
    /// Acknowledged messages whose local copy could not be removed (exit 40/41).
    pub remove_failed: Vec<Problem>,
    /// Messages left in doubt (sent, not yet confirmed) when the run stopped.
    pub in_doubt: u64,
    /// Moved to the fallback path (exit 13), and where.
    pub fallback: Count,
    pub fallback_path: Option<String>,
}

/// Keep the reason part of a failure short and stable so counts group well.
pub fn reason_key(dest: &str, reason: &str) -> String {
    let short: String = reason.chars().take(160).collect();
    format!("{dest}: {short}")
}

impl Report {
    pub fn total(&self) -> Count {
        let mut c = Count::default();
        for d in self.delivered.values() {
            c.messages += d.messages;
            c.bytes += d.bytes;
        }
        c
    }

    pub fn set_elapsed(&mut self, d: Duration) {
        self.elapsed_secs = (d.as_secs_f64() * 1000.0).round() / 1000.0;
    }

    /// Human-readable report.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let total = self.total();
        let secs = self.elapsed_secs.max(0.001);
        let _ = writeln!(
            s,
            "drain run {} (#{}): {} (exit {})",
            self.run_id, self.run_seq, self.outcome, self.exit_code
        );
        let _ = writeln!(
            s,
            "  moved {} messages, {} in {:.1}s ({:.0} msg/s, {}/s); removed {} local copies",
            total.messages,
            human_bytes(total.bytes),
            self.elapsed_secs,
            total.messages as f64 / secs,
            human_bytes((total.bytes as f64 / secs) as u64),
            self.removed
        );
        for (d, c) in &self.delivered {
            let _ = writeln!(
                s,
                "  -> {d}: {} messages, {}",
                c.messages,
                human_bytes(c.bytes)
            );
        }
        if let Some(p) = &self.fallback_path {
            let _ = writeln!(
                s,
                "  -> fallback path {p}: {} messages, {} (drain it later: drain --data-dir {p} <DESTINATION>...)",
                self.fallback.messages,
                human_bytes(self.fallback.bytes)
            );
        }
        for (q, c) in &self.by_queue {
            let _ = writeln!(
                s,
                "  queue {q}: {} messages, {}",
                c.messages,
                human_bytes(c.bytes)
            );
        }
        if !self.failures.is_empty() {
            let _ = writeln!(s, "  failed attempts (retried or failed over):");
            for (r, n) in &self.failures {
                let _ = writeln!(s, "    {n} x {r}");
            }
        }
        let lists = [
            ("could not be read (left in place)", &self.unreadable),
            ("could not be delivered (left in place)", &self.undelivered),
            (
                "delivered but the local copy could not be removed",
                &self.remove_failed,
            ),
        ];
        for (title, list) in lists {
            if !list.is_empty() {
                let _ = writeln!(s, "  {} {title}:", list.len());
                for p in list.iter().take(50) {
                    let _ = writeln!(s, "    {}: {}", p.what, p.reason);
                }
                if list.len() > 50 {
                    let _ = writeln!(
                        s,
                        "    ... and {} more (the journal has them all)",
                        list.len() - 50
                    );
                }
            }
        }
        if self.in_doubt > 0 {
            let _ = writeln!(
                s,
                "  {} messages are in doubt (sent, not confirmed): run `drain resume`",
                self.in_doubt
            );
        }
        s
    }
}
