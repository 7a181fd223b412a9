//! What a drain run did, counted as it happens and printed at the end (text, or JSON), and the
//! exit code it means.
//!
//! Owns [`Report`] and [`exit_code`] (the table of product.md). Uses only `options` ([`Mode`]);
//! filled by the ledger and the flow modules through `run`, finished by `lifecycle`, printed
//! by the CLI and the demo.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::options::Mode;

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

    /// The report as printed on standard output: one JSON line, or the text.
    pub fn render(&self, json: bool) -> Result<String, serde_json::Error> {
        Ok(if json {
            format!("{}\n", serde_json::to_string(self)?)
        } else {
            self.to_text()
        })
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

/// The exit code and a one-line outcome, as product.md defines them.
pub fn exit_code(r: &Report, stopped: bool, mode: Mode) -> (i32, &'static str) {
    if stopped {
        (42, "stopped by signal")
    } else if !r.remove_failed.is_empty() {
        if r.undelivered.is_empty() && r.in_doubt == r.remove_failed.len() as u64 {
            (40, "delivered; removing some local copies failed")
        } else {
            (41, "partly delivered; removing some local copies failed")
        }
    } else if !r.undelivered.is_empty() || r.in_doubt > 0 {
        (12, "some messages could not be distributed")
    } else if !r.unreadable.is_empty() {
        (11, "some messages could not be read")
    } else if r.fallback.messages > 0 {
        (13, "the rest was moved to the fallback path")
    } else if mode == Mode::SettleOnly {
        (0, "settled")
    } else {
        (0, "drained")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(n: usize) -> Vec<Problem> {
        (0..n)
            .map(|i| Problem {
                what: format!("m{i}"),
                reason: "r".into(),
            })
            .collect()
    }

    /// What a test case puts into the report.
    #[derive(Default, Clone, Copy)]
    struct Case {
        stopped: bool,
        remove_failed: usize,
        undelivered: usize,
        in_doubt: u64,
        unreadable: usize,
        fallback: u64,
        settle_only: bool,
    }

    fn code_of(c: Case) -> (i32, &'static str) {
        let r = Report {
            remove_failed: problems(c.remove_failed),
            undelivered: problems(c.undelivered),
            in_doubt: c.in_doubt,
            unreadable: problems(c.unreadable),
            fallback: Count {
                messages: c.fallback,
                bytes: c.fallback * 10,
            },
            ..Report::default()
        };
        let mode = if c.settle_only {
            Mode::SettleOnly
        } else {
            Mode::Fresh
        };
        exit_code(&r, c.stopped, mode)
    }

    #[test]
    fn exit_code_table() {
        let none = Case::default();
        let table: Vec<(&str, Case, i32, &str)> = vec![
            ("empty spool", none, 0, "drained"),
            (
                "settle only",
                Case {
                    settle_only: true,
                    ..none
                },
                0,
                "settled",
            ),
            (
                "unreadable",
                Case {
                    unreadable: 1,
                    ..none
                },
                11,
                "some messages could not be read",
            ),
            (
                "undelivered",
                Case {
                    undelivered: 2,
                    ..none
                },
                12,
                "some messages could not be distributed",
            ),
            (
                "in doubt",
                Case {
                    in_doubt: 1,
                    ..none
                },
                12,
                "some messages could not be distributed",
            ),
            (
                "undelivered beats unreadable",
                Case {
                    undelivered: 1,
                    unreadable: 1,
                    ..none
                },
                12,
                "some messages could not be distributed",
            ),
            (
                "fallback",
                Case {
                    fallback: 3,
                    ..none
                },
                13,
                "the rest was moved to the fallback path",
            ),
            (
                "unreadable beats fallback",
                Case {
                    unreadable: 1,
                    fallback: 3,
                    ..none
                },
                11,
                "some messages could not be read",
            ),
            (
                "remove failed, all delivered",
                Case {
                    remove_failed: 2,
                    in_doubt: 2,
                    ..none
                },
                40,
                "delivered; removing some local copies failed",
            ),
            (
                "remove failed, more in doubt",
                Case {
                    remove_failed: 2,
                    in_doubt: 3,
                    ..none
                },
                41,
                "partly delivered; removing some local copies failed",
            ),
            (
                "remove failed and undelivered",
                Case {
                    remove_failed: 1,
                    in_doubt: 1,
                    undelivered: 1,
                    ..none
                },
                41,
                "partly delivered; removing some local copies failed",
            ),
            (
                "remove failed, none in doubt",
                Case {
                    remove_failed: 1,
                    ..none
                },
                41,
                "partly delivered; removing some local copies failed",
            ),
            (
                "stopped beats everything",
                Case {
                    stopped: true,
                    remove_failed: 1,
                    undelivered: 1,
                    unreadable: 1,
                    in_doubt: 4,
                    fallback: 1,
                    ..none
                },
                42,
                "stopped by signal",
            ),
            (
                "stopped with nothing else",
                Case {
                    stopped: true,
                    ..none
                },
                42,
                "stopped by signal",
            ),
        ];
        for (name, case, code, outcome) in table {
            assert_eq!(code_of(case), (code, outcome), "{name}");
        }
    }
}
