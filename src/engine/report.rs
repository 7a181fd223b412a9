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

use super::failure::Failure;
use super::options::Mode;
use crate::events::EventCounts;

use crate::base::units::{Count, human_bytes};

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
    /// Empty (and absent from the JSON) when no run was begun ("nothing to resume").
    #[serde(skip_serializing_if = "String::is_empty")]
    pub run_id: String,
    #[serde(skip_serializing_if = "is_zero")]
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
    /// Failed attempts grouped by destination and kind (a message may fail over and then
    /// succeed), keyed `"<destination>: <kind>"`.
    pub failures: BTreeMap<String, FailureGroup>,
    /// Files that could not be read (exit 11).
    pub unreadable: Vec<Problem>,
    /// Messages every destination rejected permanently or that could not be sent (exit 12).
    pub undelivered: Vec<Problem>,
    /// Acknowledged messages whose local copy could not be removed (exit 40/41).
    pub remove_failed: Vec<Problem>,
    /// Queue directories whose fsync after the removals failed (exit 40/41): the removals are
    /// not known durable, so the run stays open for `drain resume` (`what`: the spool).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removals_not_durable: Vec<Problem>,
    /// Files the final scan still found in the spool although nothing else reports them
    /// (exit 12): exit 0 means the final scan found the spool empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_behind: Vec<Problem>,
    /// Messages left in doubt (sent, not yet confirmed) when the run stopped.
    pub in_doubt: u64,
    /// Moved to the fallback path (exit 13), and where.
    pub fallback: Count,
    pub fallback_path: Option<String>,
    /// Moves into the fallback path that an interrupted attempt began and this one completed
    /// (or found done); they do not make the exit code 13.
    pub fallback_completed: u64,
    /// Messages sent elsewhere after `--reassign-after` while the destination they were sent
    /// to may hold them: flagged possible duplicates (`what`: the id).
    pub possible_duplicates: Vec<Problem>,
    /// The instance's events when the run ended: a drain does not move them, `drain serve`
    /// delivers them; pending ones are lost if the instance is retired now.
    pub events: EventCounts,
}

/// Failed attempts of one kind with one destination.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FailureGroup {
    pub destination: String,
    /// The kind, in words (`connection refused (nothing listens there)`, `HTTP 503 (not_accepting)`).
    pub kind: String,
    pub count: u64,
    /// The detail of the first such attempt (the peer's reason, or the innermost error).
    pub example: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Report {
    /// Counts a failed attempt with `dest`.
    pub fn note_failure(&mut self, dest: &str, f: &Failure) {
        let kind = f.kind.to_string();
        self.failures
            .entry(format!("{dest}: {kind}"))
            .or_insert_with(|| FailureGroup {
                destination: dest.to_string(),
                kind,
                count: 0,
                example: f.detail.chars().take(300).collect(),
            })
            .count += 1;
    }

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
        if self.run_id.is_empty() {
            let _ = writeln!(s, "drain: {} (exit {})", self.outcome, self.exit_code);
            return s;
        }
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
        if self.fallback_completed > 0 {
            let _ = writeln!(
                s,
                "  completed {} moves into the fallback path that an interrupted attempt began",
                self.fallback_completed
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
            for (key, g) in &self.failures {
                let _ = writeln!(s, "    {} x {key}", g.count);
                if !g.example.is_empty() {
                    let _ = writeln!(s, "        first: {}", g.example);
                }
            }
        }
        self.write_problems(&mut s);
        self.write_events(&mut s);
        if self.in_doubt > 0 {
            let _ = writeln!(
                s,
                "  {} messages are in doubt (sent, not confirmed): run `drain resume`",
                self.in_doubt
            );
        }
        s
    }

    /// Events left behind: never silent, whatever the exit code.
    fn write_events(&self, s: &mut String) {
        let e = &self.events;
        if e.pending > 0 {
            let _ = writeln!(
                s,
                "  {} events are still pending in {}, not delivered to every endpoint: `drain \
                 serve` with --event-endpoint delivers them; retiring this instance now loses them",
                e.pending, e.dir
            );
        }
        if e.dead_letter > 0 {
            let _ = writeln!(
                s,
                "  {} events an endpoint refused for good are kept in {}/dead-letter",
                e.dead_letter, e.dir
            );
        }
    }

    /// The lists of what did not move (or moved with a flag), at most 50 lines each.
    fn write_problems(&self, s: &mut String) {
        let lists = [
            (
                "reassigned after --reassign-after (possible duplicates)",
                &self.possible_duplicates,
            ),
            ("could not be read (left in place)", &self.unreadable),
            ("could not be delivered (left in place)", &self.undelivered),
            (
                "delivered but the local copy could not be removed",
                &self.remove_failed,
            ),
            (
                "spool whose removals could not be made durable (`drain resume` finishes them)",
                &self.removals_not_durable,
            ),
            (
                "still in the spool at the final scan (left in place)",
                &self.left_behind,
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
    }
}

/// The exit code and a one-line outcome, as product.md defines them.
pub fn exit_code(r: &Report, stopped: bool, mode: Mode) -> (i32, &'static str) {
    if stopped {
        (42, "stopped by signal")
    } else if !r.remove_failed.is_empty() || !r.removals_not_durable.is_empty() {
        if r.undelivered.is_empty() && r.in_doubt == r.remove_failed.len() as u64 {
            (40, "delivered; removing some local copies failed")
        } else {
            (41, "partly delivered; removing some local copies failed")
        }
    } else if !r.undelivered.is_empty() || r.in_doubt > 0 || !r.left_behind.is_empty() {
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

    fn problems(n: u64) -> Vec<Problem> {
        (0..n)
            .map(|i| Problem {
                what: format!("m{i}"),
                reason: "r".into(),
            })
            .collect()
    }

    /// Columns of a case: stopped, remove_failed, undelivered, in_doubt, unreadable,
    /// fallback messages, settle_only, left behind at the final scan (booleans as 0/1).
    type Case = [u64; 8];

    /// Every exit code a run can produce, with the precedence between them.
    const TABLE: &[(&str, Case, i32)] = &[
        ("empty spool", [0, 0, 0, 0, 0, 0, 0, 0], 0),
        ("settle only", [0, 0, 0, 0, 0, 0, 1, 0], 0),
        ("unreadable", [0, 0, 0, 0, 1, 0, 0, 0], 11),
        ("undelivered", [0, 0, 2, 0, 0, 0, 0, 0], 12),
        ("in doubt", [0, 0, 0, 1, 0, 0, 0, 0], 12),
        ("in doubt, settle only", [0, 0, 0, 1, 0, 0, 1, 0], 12),
        ("undelivered beats unreadable", [0, 0, 1, 0, 1, 0, 0, 0], 12),
        ("fallback", [0, 0, 0, 0, 0, 3, 0, 0], 13),
        ("unreadable beats fallback", [0, 0, 0, 0, 1, 3, 0, 0], 11),
        ("undelivered beats fallback", [0, 0, 1, 0, 0, 3, 0, 0], 12),
        (
            "remove failed, rest delivered",
            [0, 2, 0, 2, 0, 0, 0, 0],
            40,
        ),
        ("remove failed, more in doubt", [0, 2, 0, 3, 0, 0, 0, 0], 41),
        (
            "remove failed and undelivered",
            [0, 1, 1, 1, 0, 0, 0, 0],
            41,
        ),
        ("remove failed, none in doubt", [0, 1, 0, 0, 0, 0, 0, 0], 41),
        (
            "remove failed beats unreadable",
            [0, 1, 0, 1, 1, 0, 0, 0],
            40,
        ),
        ("left behind", [0, 0, 0, 0, 0, 0, 0, 1], 12),
        ("unreadable and left behind", [0, 0, 0, 0, 1, 0, 0, 1], 12),
        ("stopped", [1, 0, 0, 0, 0, 0, 0, 0], 42),
        ("stopped beats everything", [1, 1, 1, 4, 1, 1, 1, 0], 42),
    ];

    fn outcome_of(code: i32, settle_only: bool) -> &'static str {
        match code {
            0 if settle_only => "settled",
            0 => "drained",
            11 => "some messages could not be read",
            12 => "some messages could not be distributed",
            13 => "the rest was moved to the fallback path",
            40 => "delivered; removing some local copies failed",
            41 => "partly delivered; removing some local copies failed",
            42 => "stopped by signal",
            _ => "?",
        }
    }

    #[test]
    fn removals_not_durable_give_40_or_41() {
        let mut r = Report {
            removals_not_durable: problems(1),
            ..Report::default()
        };
        assert_eq!(exit_code(&r, false, Mode::Fresh).0, 40);
        r.undelivered = problems(1);
        assert_eq!(exit_code(&r, false, Mode::Fresh).0, 41);
    }

    #[test]
    fn exit_code_table() {
        for &(name, c, code) in TABLE {
            let [
                stopped,
                remove_failed,
                undelivered,
                in_doubt,
                unreadable,
                fallback,
                settle,
                left,
            ] = c;
            let r = Report {
                remove_failed: problems(remove_failed),
                undelivered: problems(undelivered),
                in_doubt,
                unreadable: problems(unreadable),
                left_behind: problems(left),
                fallback: Count {
                    messages: fallback,
                    bytes: fallback * 10,
                },
                ..Report::default()
            };
            let mode = if settle == 1 {
                Mode::SettleOnly
            } else {
                Mode::Fresh
            };
            let want = (code, outcome_of(code, settle == 1));
            assert_eq!(exit_code(&r, stopped == 1, mode), want, "{name}");
        }
        let codes: std::collections::BTreeSet<i32> = TABLE.iter().map(|t| t.2).collect();
        assert_eq!(
            codes.into_iter().collect::<Vec<_>>(),
            [0, 11, 12, 13, 40, 41, 42]
        );
    }
}
