//! `drain inspect`: audit the journal (`<data-dir>/journal.redb`) read-only: every run, the
//! detail of one run (messages and bytes by state, destination and queue kind, throughput),
//! its anomalies, or one message's whole history.
//!
//! Safe at any time, a drain running included: the journal is read through the journal's
//! read-only `journal::Reader` (opened as the drain opens it, in redb's single-writer mode; one
//! read transaction, one consistent snapshot; a journal left unclean by a SIGKILL is recovered
//! in memory); nothing is created or modified. This module holds no database code: it renders
//! what the reader hands it. Messages are streamed: memory holds counters and bounded lists, so
//! a journal of a million messages is summarised in the memory of a small one. A record that
//! does not decode is listed as an anomaly naming its key; only a journal that cannot be read
//! at all fails the command (exit 1, naming the file). Called by the CLI (`drain inspect`).
//!
//! # `--json` (schema 1)
//!
//! One JSON document on standard output. Fields are only ever added within a schema number;
//! renaming, removing or retyping one bumps `schema`. Types: `Count` is
//! `{"messages": u64, "bytes": u64}` (bytes: spool file sizes); times are RFC 3339 strings
//! (UTC); ids are 32 hex digits; destinations are `host:port`; `Listing<T>` is
//! `{"count": u64, "truncated": u64, "items": [T]}`: `count` items in all, the first at most
//! 10,000 (`JSON_LIST_CAP`) listed, `truncated` = `count` - listed.
//!
//! Default view:
//!
//! ```text
//! schema        1
//! journal       string: the journal's path
//! exists        bool: false when no drain has run here (then runs is [] and run null)
//! unclean       bool: no process had the journal open and its last writer did not close it
//!               (SIGKILL, crash); it was read through an in-memory recovery
//! runs          [Run], oldest first:
//!   seq u64, id string, status "running"|"interrupted"|"finished",
//!   started_at string, ended_at string|null, destinations [string],
//!   exit_code i32|null, resumed u32
//! corrupt_runs  [Corrupt]: run records that do not decode; Corrupt = {key string, reason string}
//! events        {dir string, pending u64, dead_letter Listing<{id string, notes [{endpoint
//!               string, reason string, at string|null}]}>}: the instance's event queue (not
//!               the journal's): events not yet delivered to every endpoint, and those an
//!               endpoint refused for good (kept in `events/dead-letter/`)
//! run           RunDetail|null: the last run, or --run SEQ:
//!   seq, id, status, started_at, ended_at, exit_code, resumed, destinations   (as in Run)
//!   by_state        StateCounts: {read, sent, acked, deleted, delivered, total: Count}
//!                   (delivered = acked + deleted)
//!   by_destination  {dest: {sent, acked, deleted, delivered: Count}}: messages whose latest
//!                   destination it is, by state (read ones are not counted)
//!   by_queue        {"queue"|"bounce-lite"|"bounce-full"|"submission": StateCounts}
//!   throughput      {elapsed_secs f64, messages_per_sec f64, bytes_per_sec f64}: delivered
//!                   over the wall-clock time from started_at to ended_at (to now while
//!                   running), interruptions included
//!   anomalies:
//!     in_doubt            Listing<{id, dest string|null, queue, size u64, since string|null}>:
//!                         state sent (in flight while the run is running; after a crash,
//!                         `drain resume` asks dest)
//!     acked_not_removed   Listing<{id, dest, reason string|null}>: acked, and the local copy's
//!                         removal failed (reason) or the run ended before it (null)
//!     possible_duplicates Listing<{id, state, dest, reassigned_from [string]}>
//!     unreadable          Listing<{path, kind "unreadable"|"corrupt", reason, at}>
//!     corrupt_records     Listing<Corrupt>: message or unreadable records that do not decode
//!     rejections          [ReasonGroup] with kind "permanent"|"transient"
//!     client_certificate_refusals {dest: u64}: messages a destination refused at the TLS
//!                         handshake for our client certificate (none presented, or not
//!                         issued by a CA it trusts: `drain serve --client-ca`)
//!     failovers           [ReasonGroup] with kind "not_delivered" (connection refused, 503, ...)
//!     not_delivered       Listing<{id, queue, size, rejected_by [{dest, reason}],
//!                         last_note string|null}>: still read when the run ended
//!                         (interrupted or finished); empty while it runs
//!   ReasonGroup = {dest, kind, reason (cut to 200 characters), messages u64 (distinct),
//!                  ids [string] (at most 1,000), ids_truncated u64}, most messages first; at
//!                  most 100 groups per list, then one group {dest "*", reason "(other reasons)"}
//!                  per kind
//!   compacted_at    string, only when the run was compacted (`drain compact`): the detail
//!                   is the one kept then (lists cut to 1,000 items)
//! ```
//!
//! `--message ID`:
//!
//! ```text
//! schema 1, journal string, message string (the id)
//! runs   [{seq, run_id string|null, run_status string|null, queue, hash, size, state,
//!          dest string|null, rejected_by [{dest, reason}], possible_duplicate bool,
//!          remove_failed string|null,
//!          history [{event, state, at, dest string|null, note string|null}]}]
//!        every run where the message appears, oldest first; event: read, sent,
//!        not_delivered, rejected, refused, reassigned, acked, remove_failed, deleted
//! corrupt_records [Corrupt]
//! compacted_runs  [u64], only when some are: runs whose message records were compacted (not
//!                 searched)
//! ```

pub mod compact;
mod history;
mod summary;
mod text;

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub use crate::journal::{Corrupt, OpenMode};
pub use history::{MessageHistory, Step};
pub use summary::{Anomalies, DestCounts, Listing, RunDetail, StateCounts, Throughput};

use crate::base::{MessageId, Timestamp};
use crate::events::{DeadLetter, EventCounts, EventQueue};
use crate::journal::{Reader, RunStatus};

/// The `--json` schema version.
pub const SCHEMA: u32 = 1;
/// Items listed per anomaly list in `--json`.
pub const JSON_LIST_CAP: usize = 10_000;

/// What to show.
#[derive(Clone, Debug)]
pub struct InspectOptions {
    pub data_dir: PathBuf,
    pub json: bool,
    /// The run to detail (default: the last).
    pub run: Option<u64>,
    /// Show this message's history instead of the summary.
    pub message: Option<MessageId>,
    /// Items listed per anomaly kind in text.
    pub limit: usize,
}

/// The default view (the `--json` document).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub schema: u32,
    pub journal: String,
    pub exists: bool,
    pub unclean: bool,
    pub runs: Vec<RunRow>,
    pub corrupt_runs: Vec<Corrupt>,
    pub events: Events,
    pub run: Option<RunDetail>,
}

/// The instance's event queue, as `drain inspect` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Events {
    pub dir: String,
    pub pending: u64,
    pub dead_letter: Listing<DeadLetter>,
}

impl Events {
    /// Reads the event queue of `data_dir` (creating nothing), listing at most `cap` dead
    /// letters.
    fn read(data_dir: &Path, cap: usize) -> Events {
        let counts = EventCounts::of(data_dir);
        let mut dead_letter = Listing::default();
        for d in EventQueue::read_only(data_dir)
            .dead_letters()
            .unwrap_or_default()
        {
            dead_letter.push(cap, || d);
        }
        Events {
            dir: counts.dir,
            pending: counts.pending,
            dead_letter,
        }
    }
}

/// A run as `drain inspect` shows it: the run record without its options and final report
/// (those can be large and are not needed here; unknown fields are skipped while decoding).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRow {
    pub seq: u64,
    pub id: String,
    pub status: RunStatus,
    pub started_at: Timestamp,
    #[serde(default)]
    pub ended_at: Option<Timestamp>,
    pub destinations: Vec<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub resumed: u32,
    /// Set when the run's message records were compacted (its detail was kept instead).
    #[serde(default, skip_serializing)]
    pub compacted: Option<crate::journal::Compacted>,
}

impl RunRow {
    /// When its message records were compacted, if they were.
    pub fn compacted_at(&self) -> Option<Timestamp> {
        self.compacted.as_ref().map(|c| c.at)
    }
}

/// Runs `drain inspect` and returns what it prints.
pub fn inspect(opts: &InspectOptions) -> anyhow::Result<String> {
    match crate::journal::read(&opts.data_dir, |reader| render(opts, reader))? {
        Some(out) => Ok(out),
        None => Ok(nothing(opts, &crate::journal::file_path(&opts.data_dir))),
    }
}

fn nothing(opts: &InspectOptions, path: &Path) -> String {
    let journal = path.display().to_string();
    if !opts.json {
        let mut out =
            format!("no drain has run on this data directory ({journal} does not exist)\n");
        if opts.message.is_none() {
            text::events(&mut out, &Events::read(&opts.data_dir, opts.limit));
        }
        return out;
    }
    let doc = match opts.message {
        Some(id) => serde_json::to_value(MessageHistory {
            schema: SCHEMA,
            journal,
            message: id.to_string(),
            runs: Vec::new(),
            corrupt_records: Vec::new(),
            compacted_runs: Vec::new(),
        }),
        None => serde_json::to_value(Summary {
            schema: SCHEMA,
            journal,
            exists: false,
            unclean: false,
            runs: Vec::new(),
            corrupt_runs: Vec::new(),
            events: Events::read(&opts.data_dir, JSON_LIST_CAP),
            run: None,
        }),
    };
    format!("{}\n", doc.unwrap_or_default())
}

fn render(opts: &InspectOptions, reader: &Reader) -> anyhow::Result<String> {
    if let Some(id) = opts.message {
        let h = history::collect(reader, id, opts.run, SCHEMA)?;
        return Ok(if opts.json {
            format!("{}\n", serde_json::to_string(&h)?)
        } else {
            text::history(&h)
        });
    }
    let cap = if opts.json { JSON_LIST_CAP } else { opts.limit };
    let mut s = summarize(reader, opts.run, cap)?;
    s.events = Events::read(&opts.data_dir, cap);
    Ok(if opts.json {
        format!("{}\n", serde_json::to_string(&s)?)
    } else {
        text::summary(&s, opts.limit)
    })
}

/// Builds the default view, streaming run `run` (default: the last one whose record decodes).
fn summarize(reader: &Reader, run: Option<u64>, cap: usize) -> anyhow::Result<Summary> {
    let runs = reader.runs::<RunRow>()?;
    let path = reader.path();
    let row = match run {
        None => runs.rows.last(),
        Some(seq) => {
            if let Some(c) = runs.corrupt.iter().find(|c| c.key == format!("run {seq}")) {
                anyhow::bail!(
                    "journal {}: run #{seq} cannot be detailed: corrupt record {}: {}",
                    path.display(),
                    c.key,
                    c.reason
                );
            }
            let found = runs.rows.iter().find(|r| r.seq == seq);
            if found.is_none() {
                anyhow::bail!(
                    "journal {}: there is no run #{seq} (runs: {})",
                    path.display(),
                    describe_seqs(&runs.seqs)
                );
            }
            found
        }
    };
    let detail = match row {
        None => None,
        Some(row) if let Some(c) = &row.compacted => {
            let mut d: RunDetail = serde_json::from_value(c.detail.clone()).with_context(|| {
                format!(
                    "journal {}: the audit kept for compacted run #{} does not decode",
                    path.display(),
                    row.seq
                )
            })?;
            d.compacted_at = Some(c.at);
            Some(d)
        }
        Some(row) => {
            let mut c = summary::Collector::new(row, cap);
            reader.for_each_message(row.seq, |id, rec| c.message(id, rec))?;
            reader.for_each_unreadable(row.seq, |p, rec| c.unreadable(p, rec))?;
            Some(c.finish(Timestamp::now()))
        }
    };
    Ok(Summary {
        schema: SCHEMA,
        journal: path.display().to_string(),
        exists: true,
        unclean: reader.mode() == OpenMode::Recovered,
        runs: runs.rows,
        corrupt_runs: runs.corrupt,
        events: Events {
            dir: String::new(),
            pending: 0,
            dead_letter: Listing::default(),
        },
        run: detail,
    })
}

fn describe_seqs(seqs: &[u64]) -> String {
    match (seqs.first(), seqs.last()) {
        (Some(a), Some(b)) if a == b => format!("#{a}"),
        (Some(a), Some(b)) => format!("#{a} to #{b}"),
        _ => "none".to_string(),
    }
}

#[cfg(test)]
mod tests;
