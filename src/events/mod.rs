//! The instance's event queue: delivery results and intake records waiting to be POSTed to the
//! configured HTTP endpoints by the event processor (`processor`, run by `drain serve`).
//!
//! Layout: one file per event, `<data-dir>/events/<name>.json`, written atomically (temp file,
//! fsync, rename, directory fsync) by any process (`drain serve`'s intake, `drain spool add`).
//! `<name>` is `<20-digit unix nanoseconds>-<16 hex digits>`, so listing in name order is
//! (roughly) time order. Per-endpoint delivery is recorded by an empty marker file
//! `<name>.<endpoint-key>.ack`, created durably after the endpoint answered 2xx; an event is
//! removed once every configured endpoint has its marker. So an acknowledged event is never
//! sent again to that endpoint, and no event is removed before every endpoint took it.
//!
//! Event JSON (one object; the processor POSTs a JSON array of them):
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
//! the `processor` and by the metrics (`drain_events_pending`); a drain waits for it to be
//! empty (`control::prepare`).

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
        if !dir.is_dir() {
            durable::create_private_dir_all(&dir)?;
            sync_dir(data_dir)?;
        }
        Ok(EventQueue { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records events durably (one directory fsync for all of them).
    pub fn record(&self, events: &[Event]) -> Result<(), FileError> {
        if events.is_empty() {
            return Ok(());
        }
        for e in events {
            let path = self.dir.join(format!("{}.json", e.id));
            let tmp = self.dir.join(format!(".{}.tmp", e.id));
            let bytes = serde_json::to_vec(e).map_err(|err| FileError::new(&path, err.into()))?;
            durable::write_then_rename(&tmp, &path, &bytes)?;
        }
        sync_dir(&self.dir)
    }

    /// Names of all pending events, in name order. (Memory: one short string per event.)
    pub fn pending(&self) -> Result<Vec<String>, FileError> {
        let mut names = Vec::new();
        for de in fs::read_dir(&self.dir).map_err(|e| FileError::new(&self.dir, e))? {
            let de = de.map_err(|e| FileError::new(&self.dir, e))?;
            if let Some(name) = de
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|n| !n.starts_with('.'))
            {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// How many events are waiting.
    pub fn count(&self) -> Result<usize, FileError> {
        Ok(self.pending()?.len())
    }

    /// Reads one event.
    pub fn read(&self, name: &str) -> Result<Event, FileError> {
        let path = self.dir.join(format!("{name}.json"));
        let bytes = fs::read(&path).map_err(|e| FileError::new(&path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            FileError::new(&path, std::io::Error::other(format!("corrupt event: {e}")))
        })
    }

    fn marker(&self, name: &str, key: &str) -> PathBuf {
        self.dir.join(format!("{name}.{key}.ack"))
    }

    pub fn is_acked(&self, name: &str, key: &str) -> bool {
        self.marker(name, key).exists()
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
        }
        Ok(())
    }
}
