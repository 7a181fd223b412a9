//! The instance's event queue: delivery results and intake records waiting to be POSTed to the
//! configured HTTP endpoints by the event processor (`processor`, run by `drain serve`).
//!
//! Layout: one file per recorded group of events, `<data-dir>/events/<name>.json`, written
//! atomically (temp file, fsync, rename, directory fsync) by any process (`drain serve`'s intake,
//! `drain spool add`). A file holds one event (a JSON object; `<name>` is the event's `id`) or, for
//! a group recorded together (every message of one transfer), a JSON array of `n` events, at most
//! [`MAX_PER_FILE`] (`<name>` is the first event's `id` followed by `-x<n>`), so a transfer costs
//! one event fsync, not one per message. `<name>` starts with `<20-digit unix nanoseconds>-`, so
//! listing in name order is (roughly) time order, and its `-x<n>` lets the queue be counted in
//! events without reading any file. Per-endpoint delivery is recorded per file by an empty marker
//! file `<name>.<endpoint-key>.ack`, created durably after the endpoint answered 2xx; a file is
//! removed once every configured endpoint is done with it. So an acknowledged event is never sent
//! again to that endpoint, and no event is removed before every endpoint took it (or refused it for
//! good, below). A file's events always travel in one POST.
//!
//! **Permanent failures (the dead-letter directory).** An endpoint answering a 4xx other than
//! 408 (timeout) and 429 (too many requests) refuses that batch for good: retrying the same
//! POST cannot change the answer. Each event of the batch is then, durably and in this order,
//! copied to `<data-dir>/events/dead-letter/<id>.json` (the event alone, as a JSON object,
//! named by its `id`), given a note `dead-letter/<id>.<endpoint-key>.why` (JSON: `endpoint`,
//! `reason` with the HTTP status, `at`), and its file is marked `<name>.<endpoint-key>.dead` in
//! the queue, which counts as "done" for that endpoint only (the other endpoints still get the
//! events). Dead-lettered events are never deleted by `drain`: they are counted
//! (`drain_event_permanent_failures_total`, `drain inspect`'s `events.dead_letter`, the drain
//! report) and named in `drain inspect`. To retry one after fixing the endpoint, move
//! `dead-letter/<id>.json` back into `events/` (a file of one event is a valid queue file);
//! endpoints may see it again (drop repeats by `id`). Remove the `<name>.<endpoint-key>.dead`
//! marker too if its file is still queued and the endpoint should get all of it again.
//!
//! Event JSON (one object per event; the processor POSTs a JSON array of them):
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `id` | string | the event's name, unique; endpoints may use it to drop repeats |
//! | `type` | string | `message.received` (taken in by intake) or `message.spooled` (`spool add`) |
//! | `time` | RFC 3339 | when it happened |
//! | `instance` | 32 hex | the instance that recorded it |
//! | `message_id` | 32 hex | the message |
//! | `queue` | string | its queue kind |
//! | `from_instance` | 32 hex, optional | `message.received`: the sending instance |
//! | `run` | 32 hex, optional | `message.received`: the sending run |
//!
//! Written by `intake::store` (before a transfer is answered) and `drain spool add`; read by
//! the `processor`, by the metrics (`drain_events_pending`), by `drain inspect` and by the drain
//! report ([`EventCounts`]); a drain waits for it to be empty (`control::prepare`).

pub mod processor;

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::base::durable::{self, FileError, sync_dir};
use crate::base::{MessageId, QueueKind, Timestamp};

/// One event, as stored and as delivered.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub time: Timestamp,
    pub instance: String,
    pub message_id: MessageId,
    pub queue: QueueKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

impl Event {
    /// A new event with a fresh name.
    pub fn new(kind: &str, instance: &str, message_id: MessageId, queue: QueueKind) -> Event {
        let now = Timestamp::now();
        let nanos = now.unix_nanos().max(0) as u128;
        let rnd = MessageId::random()
            .map(|r| r.to_string())
            .unwrap_or_default();
        Event {
            id: format!("{nanos:020}-{}", &rnd[..16.min(rnd.len())]),
            kind: kind.to_string(),
            time: now,
            instance: instance.to_string(),
            message_id,
            queue,
            from_instance: None,
            run: None,
        }
    }
}

/// The event queue of one data directory.
#[derive(Clone, Debug)]
pub struct EventQueue {
    dir: PathBuf,
}

impl EventQueue {
    pub fn open(data_dir: &Path) -> Result<EventQueue, FileError> {
        let dir = data_dir.join("events");
        // Durable as created (create_private_dir_all fsyncs the data directory).
        if !dir.is_dir() {
            durable::create_private_dir_all(&dir)?;
        }
        Ok(EventQueue { dir })
    }

    /// The queue of `data_dir` for reading only: creates nothing (a missing directory reads
    /// as no events).
    pub fn read_only(data_dir: &Path) -> EventQueue {
        EventQueue {
            dir: data_dir.join("events"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records events durably, [`MAX_PER_FILE`] to a file (one file fsync per file and one
    /// directory fsync for all; see the module's documentation for their names and form).
    pub fn record(&self, events: &[Event]) -> Result<(), FileError> {
        if events.is_empty() {
            return Ok(());
        }
        for group in events.chunks(MAX_PER_FILE) {
            let (name, bytes) = match group {
                [one] => (one.id.clone(), serde_json::to_vec(one)),
                _ => (
                    format!("{}-x{}", group[0].id, group.len()),
                    serde_json::to_vec(group),
                ),
            };
            let path = self.dir.join(format!("{name}.json"));
            let bytes = bytes.map_err(|err| FileError::new(&path, err.into()))?;
            let tmp = self.dir.join(format!(".{name}.tmp"));
            durable::write_then_rename(&tmp, &path, &bytes, durable::Sync::Now)?;
        }
        sync_dir(&self.dir)
    }

    /// Calls `f` with the name of every pending event file, in directory order, streaming (memory
    /// does not grow with the queue). A name may come twice while the directory changes.
    pub fn for_each_pending(&self, mut f: impl FnMut(&str)) -> Result<(), FileError> {
        for de in fs::read_dir(&self.dir).map_err(|e| FileError::new(&self.dir, e))? {
            let de = de.map_err(|e| FileError::new(&self.dir, e))?;
            if let Some(name) = de
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|n| !n.starts_with('.'))
            {
                f(name);
            }
        }
        Ok(())
    }

    /// The `limit` oldest pending events, in name order, among those `wanted` keeps: one
    /// streaming pass over the directory holding at most `limit` names, so a backlog of a
    /// million events costs neither memory nor a sort of all of them.
    pub fn oldest(
        &self,
        limit: usize,
        mut wanted: impl FnMut(&str) -> bool,
    ) -> Result<Vec<String>, FileError> {
        let mut heap = std::collections::BinaryHeap::<String>::new();
        self.for_each_pending(|n| {
            if heap.len() >= limit && heap.peek().is_some_and(|max| n >= max.as_str()) {
                return;
            }
            if wanted(n) {
                heap.push(n.to_string());
                if heap.len() > limit {
                    heap.pop();
                }
            }
        })?;
        let mut names = heap.into_vec();
        names.sort();
        // A file system may list a name twice while the directory changes (seen on a FUSE
        // mount); one event must never go out twice in one batch.
        names.dedup();
        Ok(names)
    }

    /// How many events are waiting, counted from the names (streaming; no file is read).
    pub fn count(&self) -> Result<usize, FileError> {
        let mut n = 0;
        self.for_each_pending(|name| n += events_in(name))?;
        Ok(n)
    }

    /// Reads one event file: its events, in order.
    pub fn read(&self, name: &str) -> Result<Vec<Event>, FileError> {
        let path = self.dir.join(format!("{name}.json"));
        let bytes = fs::read(&path).map_err(|e| FileError::new(&path, e))?;
        let corrupt = |e: serde_json::Error| {
            FileError::new(&path, std::io::Error::other(format!("corrupt event: {e}")))
        };
        if bytes.trim_ascii_start().starts_with(b"[") {
            serde_json::from_slice(&bytes).map_err(corrupt)
        } else {
            serde_json::from_slice(&bytes)
                .map(|e| vec![e])
                .map_err(corrupt)
        }
    }

    fn marker(&self, name: &str, key: &str) -> PathBuf {
        self.dir.join(format!("{name}.{key}.ack"))
    }

    fn dead_marker(&self, name: &str, key: &str) -> PathBuf {
        self.dir.join(format!("{name}.{key}.dead"))
    }

    pub fn is_acked(&self, name: &str, key: &str) -> bool {
        self.marker(name, key).exists()
    }

    /// Endpoint `key` is done with the event: it took it, or refused it for good.
    pub fn is_done(&self, name: &str, key: &str) -> bool {
        self.is_acked(name, key) || self.dead_marker(name, key).exists()
    }

    /// The dead-letter directory (see the module's documentation).
    pub fn dead_letter_dir(&self) -> PathBuf {
        self.dir.join(DEAD_LETTER)
    }

    /// Records durably that endpoint `key` refused these event files for good: each of their
    /// events is copied into the dead-letter directory (one file per event, named by its `id`)
    /// with a note, then each file is marked done for that endpoint.
    pub fn mark_dead(&self, names: &[String], key: &str, note: &DeadNote) -> Result<(), FileError> {
        let dead = self.dead_letter_dir();
        if !dead.is_dir() {
            fs::create_dir_all(&dead).map_err(|e| FileError::new(&dead, e))?;
            sync_dir(&self.dir)?;
        }
        let note_bytes = serde_json::to_vec(note)
            .map_err(|e| FileError::new(&dead, std::io::Error::other(e)))?;
        for n in names {
            // One dead letter per event, so each can be inspected and moved back alone.
            for ev in self.read(n)? {
                let id = &ev.id;
                let copy = dead.join(format!("{id}.json"));
                let bytes = serde_json::to_vec(&ev)
                    .map_err(|e| FileError::new(&copy, std::io::Error::other(e)))?;
                durable::write_then_rename(
                    &dead.join(format!(".{id}.tmp")),
                    &copy,
                    &bytes,
                    durable::Sync::Now,
                )?;
                let why = dead.join(format!("{id}.{key}.why"));
                let tmp = dead.join(format!(".{id}.{key}.tmp"));
                durable::write_then_rename(&tmp, &why, &note_bytes, durable::Sync::Now)?;
            }
        }
        sync_dir(&dead)?;
        for n in names {
            let p = self.dead_marker(n, key);
            fs::File::create(&p).map_err(|e| FileError::new(&p, e))?;
        }
        sync_dir(&self.dir)
    }

    /// The events in the dead-letter directory, in name order, each with its notes.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, FileError> {
        let dead = self.dead_letter_dir();
        let mut out: std::collections::BTreeMap<String, Vec<DeadNote>> = Default::default();
        let rd = match fs::read_dir(&dead) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(FileError::new(&dead, e)),
        };
        for de in rd {
            let de = de.map_err(|e| FileError::new(&dead, e))?;
            let file = de.file_name().to_string_lossy().into_owned();
            if file.starts_with('.') {
                continue;
            }
            if let Some(name) = file.strip_suffix(".json") {
                out.entry(name.to_string()).or_default();
            } else if let Some(rest) = file.strip_suffix(".why")
                && let Some((name, _key)) = rest.rsplit_once('.')
            {
                let note = fs::read(de.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_else(|| DeadNote {
                        endpoint: String::new(),
                        reason: format!("unreadable note {}", de.path().display()),
                        at: None,
                    });
                out.entry(name.to_string()).or_default().push(note);
            }
        }
        Ok(out
            .into_iter()
            .map(|(id, notes)| DeadLetter { id, notes })
            .collect())
    }

    /// Records durably that endpoint `key` took these events.
    pub fn mark_acked(&self, names: &[String], key: &str) -> Result<(), FileError> {
        for n in names {
            let p = self.marker(n, key);
            match durable::create_private_file(&p) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(FileError::new(&p, e)),
            }
        }
        sync_dir(&self.dir)
    }

    /// Removes an event every endpoint took, then its markers.
    pub fn remove(&self, name: &str, keys: &[String]) -> Result<(), FileError> {
        let path = self.dir.join(format!("{name}.json"));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(FileError::new(&path, e)),
        }
        for k in keys {
            let _ = fs::remove_file(self.marker(name, k));
            let _ = fs::remove_file(self.dead_marker(name, k));
        }
        Ok(())
    }
}

/// Most events in one file, and so in one POST (the processor never splits a file): a
/// transfer of up to `wire::MAX_FRAMES` messages must not become a body an endpoint refuses
/// for its size (nginx's default limit is 1 MiB; 100 events are about 30 KB).
pub const MAX_PER_FILE: usize = 100;

/// How many events the file `name` holds, by its name: `n` for `...-x<n>`, else one.
pub fn events_in(name: &str) -> usize {
    name.rsplit_once("-x")
        .and_then(|(_, n)| n.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// The dead-letter directory's name inside `events/`.
const DEAD_LETTER: &str = "dead-letter";

/// Why an endpoint refused an event for good.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeadNote {
    pub endpoint: String,
    /// The HTTP status and what the endpoint said.
    pub reason: String,
    #[serde(default)]
    pub at: Option<Timestamp>,
}

/// An event in the dead-letter directory, with why each endpoint refused it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: String,
    pub notes: Vec<DeadNote>,
}

/// What the operator is told about an instance's events (the drain report, `drain inspect`).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct EventCounts {
    /// The events directory.
    pub dir: String,
    /// Events not yet delivered to every endpoint.
    pub pending: u64,
    /// Events some endpoint refused for good (in `dead-letter/`).
    pub dead_letter: u64,
}

impl EventCounts {
    /// Counts the events of `data_dir` without creating anything (none: zero).
    pub fn of(data_dir: &Path) -> EventCounts {
        let q = EventQueue::read_only(data_dir);
        EventCounts {
            dir: q.dir.display().to_string(),
            pending: q.count().map_or(0, |n| n as u64),
            dead_letter: q.dead_letters().map_or(0, |d| d.len() as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh queue in its own temporary data directory.
    fn temp_queue(tag: &str) -> (std::path::PathBuf, EventQueue) {
        let data = std::env::temp_dir().join(format!(
            "drain-events-{tag}-{}",
            MessageId::random().unwrap()
        ));
        let q = EventQueue::open(&data).unwrap();
        (data, q)
    }

    /// `oldest` keeps the `limit` smallest names `wanted` accepts, in order, from one pass.
    #[test]
    fn oldest_is_the_smallest_wanted_names_in_order() {
        let (data, q) = temp_queue("oldest");
        let mut events: Vec<Event> = (0..50)
            .map(|_| Event::new("t", "i", MessageId::random().unwrap(), QueueKind::Queue))
            .collect();
        for (i, e) in events.iter_mut().enumerate() {
            e.id = format!("{:020}-{:016x}", 1_000 + (i * 37) % 50, i);
        }
        for e in &events {
            q.record(std::slice::from_ref(e)).unwrap();
        }
        let mut all: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        all.sort();
        assert_eq!(q.oldest(10, |_| true).unwrap(), all[..10]);
        assert_eq!(q.oldest(100, |_| true).unwrap(), all);
        let odd: Vec<String> = all.iter().skip(1).step_by(2).cloned().collect();
        let mut asked = 0;
        let got = q
            .oldest(5, |n| {
                asked += 1;
                odd.iter().any(|o| o == n)
            })
            .unwrap();
        assert_eq!(got, odd[..5]);
        assert!(asked <= 50, "each name at most once");
        assert_eq!(q.count().unwrap(), 50);
        let _ = fs::remove_dir_all(&data);
    }

    /// A group is one file of all its events (counted by name), read back in order; a single
    /// event stays a JSON object; a refused group becomes one dead letter per event.
    #[test]
    fn a_group_is_one_file_counted_by_name_and_dead_lettered_per_event() {
        let (data, q) = temp_queue("group");
        let ev = || Event::new("t", "i", MessageId::random().unwrap(), QueueKind::Queue);
        let group: Vec<Event> = (0..3).map(|_| ev()).collect();
        let single = ev();
        q.record(&group).unwrap();
        q.record(std::slice::from_ref(&single)).unwrap();
        let group_name = format!("{}-x3", group[0].id);
        let mut names = q.oldest(10, |_| true).unwrap();
        names.sort();
        let mut want = vec![group_name.clone(), single.id.clone()];
        want.sort();
        assert_eq!(names, want);
        assert_eq!(events_in(&group_name), 3);
        assert_eq!(events_in(&single.id), 1);
        assert_eq!(q.count().unwrap(), 4);
        assert_eq!(q.read(&group_name).unwrap(), group);
        assert_eq!(q.read(&single.id).unwrap(), vec![single.clone()]);
        let raw = fs::read(data.join("events").join(format!("{}.json", single.id))).unwrap();
        assert_eq!(raw.first(), Some(&b'{'));

        let note = DeadNote {
            endpoint: "e".into(),
            reason: "HTTP 400".into(),
            at: None,
        };
        q.mark_dead(std::slice::from_ref(&group_name), "k", &note)
            .unwrap();
        assert!(q.is_done(&group_name, "k"));
        let dead: Vec<String> = q
            .dead_letters()
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        let mut ids: Vec<String> = group.iter().map(|e| e.id.clone()).collect();
        ids.sort();
        assert_eq!(dead, ids);

        // A large transfer's events are split into files of at most MAX_PER_FILE.
        let big: Vec<Event> = (0..2 * MAX_PER_FILE + 50).map(|_| ev()).collect();
        q.record(&big).unwrap();
        let sizes: Vec<usize> = q
            .oldest(10, |n| n.contains("-x") && n != group_name)
            .unwrap()
            .iter()
            .map(|n| events_in(n))
            .collect();
        assert_eq!(sizes, [MAX_PER_FILE, MAX_PER_FILE, 50]);
        assert_eq!(q.count().unwrap(), 4 + big.len());
        let _ = fs::remove_dir_all(&data);
    }
}
