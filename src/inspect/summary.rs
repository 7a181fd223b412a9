//! The summary of one run, built while streaming its records: counters by state, destination
//! and queue kind, and bounded lists of anomalies. Memory is the counters plus at most `cap`
//! items per list (and `GROUP_CAP` reason groups of at most `cap.min(GROUP_IDS_CAP)` ids
//! each), whatever the number of messages.
//!
//! The field names and types here are the `--json` schema documented in `super` (mod.rs):
//! change them only with a new schema number.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::RunRow;
use crate::base::units::Count;
use crate::base::{MessageId, Timestamp};
use crate::journal::Corrupt;
use crate::journal::{MessageRecord, RunStatus, State, UnreadableRecord};
use crate::tls::HandshakeRefusal;

/// Distinct (destination, kind, reason) groups listed per grouping; further ones are counted
/// in one `(other reasons)` group per kind.
pub const GROUP_CAP: usize = 100;
/// Message ids listed per reason group (at most the list cap).
pub const GROUP_IDS_CAP: usize = 1000;
/// Reasons are cut to this many characters, so that they group well.
const REASON_CHARS: usize = 200;

/// Messages and bytes in each state; `delivered` is `acked` + `deleted`, `total` all four.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StateCounts {
    pub read: Count,
    pub sent: Count,
    pub acked: Count,
    pub deleted: Count,
    pub delivered: Count,
    pub total: Count,
}

impl StateCounts {
    fn add(&mut self, state: State, bytes: u64) {
        match state {
            State::Read => self.read.add(bytes),
            State::Sent => self.sent.add(bytes),
            State::Acked => self.acked.add(bytes),
            State::Deleted => self.deleted.add(bytes),
        }
        if matches!(state, State::Acked | State::Deleted) {
            self.delivered.add(bytes);
        }
        self.total.add(bytes);
    }
}

/// One destination's messages: in doubt with it (`sent`), acknowledged by it and not yet
/// removed locally (`acked`), removed locally (`deleted`); `delivered` = `acked` + `deleted`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DestCounts {
    pub sent: Count,
    pub acked: Count,
    pub deleted: Count,
    pub delivered: Count,
    /// Behind a load balancer: the messages per instance (by id) they were sent to; omitted
    /// for a destination that does not name its instances.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub instances: BTreeMap<String, InstanceCounts>,
}

/// One instance's messages behind a destination: in doubt with it, delivered to it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceCounts {
    pub in_doubt: u64,
    pub delivered: u64,
}

/// Delivered messages and bytes per second of the run's elapsed time.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Throughput {
    pub elapsed_secs: f64,
    pub messages_per_sec: f64,
    pub bytes_per_sec: f64,
}

/// A bounded list: `count` items in all, the first `items.len()` listed, `truncated` not.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Listing<T> {
    pub count: u64,
    pub truncated: u64,
    pub items: Vec<T>,
}

impl<T> Default for Listing<T> {
    fn default() -> Self {
        Listing {
            count: 0,
            truncated: 0,
            items: Vec::new(),
        }
    }
}

impl<T> Listing<T> {
    pub(crate) fn push(&mut self, cap: usize, item: impl FnOnce() -> T) {
        self.count += 1;
        if self.items.len() < cap {
            self.items.push(item());
        } else {
            self.truncated += 1;
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InDoubt {
    pub id: String,
    pub dest: Option<String>,
    pub queue: String,
    pub size: u64,
    /// When it was sent (its last `sent` transition).
    pub since: Option<Timestamp>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AckedNotRemoved {
    pub id: String,
    pub dest: Option<String>,
    /// The last removal failure; null when the run ended before it tried.
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PossibleDuplicate {
    pub id: String,
    pub state: State,
    /// The destination of its latest `sent`.
    pub dest: Option<String>,
    /// Destinations it was reassigned away from while they may have held it.
    pub reassigned_from: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Unreadable {
    pub path: String,
    /// `unreadable` (I/O error) or `corrupt` (bad contents).
    pub kind: String,
    pub reason: String,
    pub at: Timestamp,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rejection {
    pub dest: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NotDelivered {
    pub id: String,
    pub queue: String,
    pub size: u64,
    /// Destinations that rejected it permanently.
    pub rejected_by: Vec<Rejection>,
    /// The note of its last transition (why it came back to `read`), if any.
    pub last_note: Option<String>,
}

/// Messages that met the same outcome at the same destination for the same reason.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReasonGroup {
    pub dest: String,
    /// `permanent` or `transient` (rejections), `not_delivered` (failovers).
    pub kind: String,
    pub reason: String,
    /// Distinct messages (a message counts once per group).
    pub messages: u64,
    pub ids: Vec<String>,
    pub ids_truncated: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Anomalies {
    pub in_doubt: Listing<InDoubt>,
    pub acked_not_removed: Listing<AckedNotRemoved>,
    pub possible_duplicates: Listing<PossibleDuplicate>,
    pub unreadable: Listing<Unreadable>,
    pub corrupt_records: Listing<Corrupt>,
    pub rejections: Vec<ReasonGroup>,
    /// Messages refused at the TLS handshake for our client certificate (mutual TLS), by
    /// destination: each counted once per destination.
    pub client_certificate_refusals: BTreeMap<String, u64>,
    pub failovers: Vec<ReasonGroup>,
    pub not_delivered: Listing<NotDelivered>,
}

impl Anomalies {
    /// Whether anything at all is worth the operator's attention.
    pub fn is_empty(&self) -> bool {
        self.in_doubt.count == 0
            && self.acked_not_removed.count == 0
            && self.possible_duplicates.count == 0
            && self.unreadable.count == 0
            && self.corrupt_records.count == 0
            && self.rejections.is_empty()
            && self.client_certificate_refusals.is_empty()
            && self.failovers.is_empty()
            && self.not_delivered.count == 0
    }
}

/// Everything `drain inspect` says about one run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunDetail {
    pub seq: u64,
    pub id: String,
    pub status: RunStatus,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub exit_code: Option<i32>,
    pub resumed: u32,
    pub destinations: Vec<String>,
    pub by_state: StateCounts,
    pub by_destination: BTreeMap<String, DestCounts>,
    pub by_queue: BTreeMap<String, StateCounts>,
    pub throughput: Throughput,
    pub anomalies: Anomalies,
    /// When the run's message records were compacted: this detail is the one kept then
    /// (`drain compact`), and single messages can no longer be looked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted_at: Option<Timestamp>,
}

type GroupKey = (String, &'static str, String);

/// Reason groups being counted.
#[derive(Default)]
struct Groups {
    map: HashMap<GroupKey, ReasonGroup>,
}

impl Groups {
    fn add(&mut self, key: GroupKey, id: &str, ids_cap: usize) {
        let key = if self.map.len() >= GROUP_CAP && !self.map.contains_key(&key) {
            ("*".to_string(), key.1, "(other reasons)".to_string())
        } else {
            key
        };
        let g = self.map.entry(key).or_insert_with_key(|k| ReasonGroup {
            dest: k.0.clone(),
            kind: k.1.to_string(),
            reason: k.2.clone(),
            messages: 0,
            ids: Vec::new(),
            ids_truncated: 0,
        });
        g.messages += 1;
        if g.ids.len() < ids_cap {
            g.ids.push(id.to_string());
        } else {
            g.ids_truncated += 1;
        }
    }

    /// Most messages first.
    fn into_sorted(self) -> Vec<ReasonGroup> {
        let mut v: Vec<ReasonGroup> = self.map.into_values().collect();
        v.sort_by(|a, b| {
            b.messages
                .cmp(&a.messages)
                .then_with(|| (&a.dest, &a.kind, &a.reason).cmp(&(&b.dest, &b.kind, &b.reason)))
        });
        v
    }
}

const REJECTED: &str = "rejected: ";
const REFUSED: &str = "refused (transient): ";
const REASSIGNED: &str = "reassigned, possible duplicate: ";

fn short(reason: &str) -> String {
    reason.chars().take(REASON_CHARS).collect()
}

/// Builds a [`RunDetail`] from a stream of records.
pub struct Collector {
    cap: usize,
    ended: bool,
    detail: RunDetail,
    rejections: Groups,
    failovers: Groups,
}

impl Collector {
    /// `cap`: items kept per anomaly list.
    pub fn new(run: &RunRow, cap: usize) -> Collector {
        Collector {
            cap,
            ended: run.status != RunStatus::Running,
            detail: RunDetail {
                seq: run.seq,
                id: run.id.clone(),
                status: run.status,
                started_at: run.started_at,
                ended_at: run.ended_at,
                exit_code: run.exit_code,
                resumed: run.resumed,
                destinations: run.destinations.clone(),
                by_state: StateCounts::default(),
                by_destination: BTreeMap::new(),
                by_queue: BTreeMap::new(),
                throughput: Throughput {
                    elapsed_secs: 0.0,
                    messages_per_sec: 0.0,
                    bytes_per_sec: 0.0,
                },
                anomalies: Anomalies::default(),
                compacted_at: None,
            },
            rejections: Groups::default(),
            failovers: Groups::default(),
        }
    }

    pub fn corrupt(&mut self, c: Corrupt) {
        self.detail.anomalies.corrupt_records.push(self.cap, || c);
    }

    pub fn unreadable(&mut self, path: String, rec: Result<UnreadableRecord, Corrupt>) {
        match rec {
            Ok(r) => self
                .detail
                .anomalies
                .unreadable
                .push(self.cap, || Unreadable {
                    path,
                    kind: r.kind,
                    reason: r.reason,
                    at: r.at,
                }),
            Err(c) => self.corrupt(c),
        }
    }

    pub fn message(&mut self, id: MessageId, rec: Result<MessageRecord, Corrupt>) {
        let rec = match rec {
            Ok(r) => r,
            Err(c) => return self.corrupt(c),
        };
        let cap = self.cap;
        let d = &mut self.detail;
        let a = &mut d.anomalies;
        let queue = rec.queue.as_str();
        d.by_state.add(rec.state, rec.size);
        d.by_queue
            .entry(queue.to_string())
            .or_default()
            .add(rec.state, rec.size);
        if rec.state != State::Read
            && let Some(dest) = &rec.dest
        {
            let c = d.by_destination.entry(dest.clone()).or_default();
            match rec.state {
                State::Sent => c.sent.add(rec.size),
                State::Acked => c.acked.add(rec.size),
                _ => c.deleted.add(rec.size),
            }
            if rec.state != State::Sent {
                c.delivered.add(rec.size);
            }
            if let Some(i) = &rec.instance {
                let ic = c.instances.entry(i.clone()).or_default();
                if rec.state == State::Sent {
                    ic.in_doubt += 1;
                } else {
                    ic.delivered += 1;
                }
            }
        }
        let id = id.to_string();
        match rec.state {
            State::Sent => a.in_doubt.push(cap, || InDoubt {
                id: id.clone(),
                dest: rec.dest.clone(),
                queue: queue.to_string(),
                size: rec.size,
                since: rec
                    .history
                    .iter()
                    .rev()
                    .find(|t| t.state == State::Sent)
                    .map(|t| t.at),
            }),
            State::Acked if rec.remove_failed.is_some() || self.ended => {
                a.acked_not_removed.push(cap, || AckedNotRemoved {
                    id: id.clone(),
                    dest: rec.dest.clone(),
                    reason: rec.remove_failed.clone(),
                })
            }
            State::Read if self.ended => a.not_delivered.push(cap, || NotDelivered {
                id: id.clone(),
                queue: queue.to_string(),
                size: rec.size,
                rejected_by: rec
                    .rejected_by
                    .iter()
                    .map(|(dest, reason)| Rejection {
                        dest: dest.clone(),
                        reason: reason.clone(),
                    })
                    .collect(),
                last_note: rec.history.last().and_then(|t| t.note.clone()),
            }),
            _ => {}
        }
        if rec.possible_duplicate {
            a.possible_duplicates.push(cap, || PossibleDuplicate {
                id: id.clone(),
                state: rec.state,
                dest: rec.dest.clone(),
                reassigned_from: rec
                    .history
                    .iter()
                    .filter(|t| t.note.as_deref().is_some_and(|n| n.starts_with(REASSIGNED)))
                    .filter_map(|t| t.dest.clone())
                    .collect(),
            });
        }
        self.count_reasons(&id, &rec);
    }

    /// Rejections (history notes and `rejected_by`) and failovers (not-delivered notes), each
    /// counted once per message and group.
    fn count_reasons(&mut self, id: &str, rec: &MessageRecord) {
        let mut rejections: Vec<GroupKey> = Vec::new();
        let mut failovers: Vec<GroupKey> = Vec::new();
        for t in &rec.history {
            let (State::Read, Some(dest), Some(note)) = (t.state, &t.dest, &t.note) else {
                continue;
            };
            if let Some(r) = note.strip_prefix(REJECTED) {
                rejections.push((dest.clone(), "permanent", short(r)));
            } else if let Some(r) = note.strip_prefix(REFUSED) {
                rejections.push((dest.clone(), "transient", short(r)));
            } else if !note.starts_with(REASSIGNED) {
                failovers.push((dest.clone(), "not_delivered", short(note)));
            }
        }
        for (dest, reason) in &rec.rejected_by {
            rejections.push((dest.clone(), "permanent", short(reason)));
        }
        rejections.sort();
        rejections.dedup();
        let mut refused_by: Vec<&String> = rejections
            .iter()
            .filter(|(_, _, reason)| HandshakeRefusal::is_reason(reason))
            .map(|(dest, _, _)| dest)
            .collect();
        refused_by.dedup();
        for dest in refused_by {
            *self
                .detail
                .anomalies
                .client_certificate_refusals
                .entry(dest.clone())
                .or_default() += 1;
        }
        let ids_cap = self.cap.min(GROUP_IDS_CAP);
        for (list, groups) in [
            (rejections, &mut self.rejections),
            (failovers, &mut self.failovers),
        ] {
            let mut list = list;
            list.sort();
            list.dedup();
            for key in list {
                groups.add(key, id, ids_cap);
            }
        }
    }

    /// The detail; elapsed time runs from `started_at` to `ended_at`, or to `now` while the run
    /// has not ended.
    pub fn finish(self, now: Timestamp) -> RunDetail {
        let mut d = self.detail;
        let end = d.ended_at.unwrap_or(now);
        let nanos = (end.unix_nanos() - d.started_at.unix_nanos()).max(0);
        let secs = nanos as f64 / 1e9;
        let per = secs.max(0.001);
        d.throughput = Throughput {
            elapsed_secs: (secs * 1000.0).round() / 1000.0,
            messages_per_sec: round2(d.by_state.delivered.messages as f64 / per),
            bytes_per_sec: round2(d.by_state.delivered.bytes as f64 / per),
        };
        d.anomalies.rejections = self.rejections.into_sorted();
        d.anomalies.failovers = self.failovers.into_sorted();
        d
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
