//! The event processor: POSTs pending events, in batches, as a JSON array to every configured
//! endpoint, retrying with backoff until a 2xx, and removes an event once every endpoint is
//! done with it (see the module above for the on-disk markers that make this crash-safe, and
//! for the dead-letter directory).
//!
//! Each endpoint has its own task, its own backoff and its own request timeout
//! (`--event-timeout`), so a slow or failing endpoint never holds up the others. A task goes
//! through the queue in name order, a window of the oldest names at a time ([`Cursor`]), so a
//! backlog of a million events costs it neither memory nor a listing per batch. Answers: a 2xx
//! delivers the batch; a 4xx other than 408/429 is a permanent failure for that batch (logged
//! with the status, counted, dead-lettered for that endpoint); anything else (3xx, 408, 429,
//! 5xx, no answer) is retried with backoff.
//!
//! Run as a task by `drain serve` (`intake`), which also reads its [`Stats`] for the metrics.
//! Invariants: an event's delivery to an endpoint is recorded (marker, fsync) only after a 2xx,
//! so a crash can repeat a delivery but never lose one; an event is never deleted unless every
//! endpoint took it or it is kept in the dead-letter directory.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use super::{DeadNote, Event, EventQueue};
use crate::base::Timestamp;

/// Most events in one POST: as many as one file may hold, so a file always fits.
const BATCH: usize = super::MAX_PER_FILE;

/// How long one POST may take when `--event-timeout` does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One configured endpoint.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub url: String,
    /// Short stable key naming its ack markers.
    pub key: String,
}

impl Endpoint {
    pub fn new(url: &str) -> Result<Endpoint, String> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| format!("invalid event endpoint {url:?}: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "invalid event endpoint {url:?}: expected http:// or https://"
            ));
        }
        let key = blake3::hash(url.as_bytes()).to_hex()[..16].to_string();
        Ok(Endpoint {
            url: url.to_string(),
            key,
        })
    }
}

/// Counters for the metrics (`drain_events_delivered_total`,
/// `drain_event_delivery_failures_total`, `drain_event_permanent_failures_total`); shared with
/// `intake::metrics`, which reads them.
#[derive(Default, Debug)]
pub struct Stats {
    pub delivered: Counter,
    pub failures: Counter,
    /// Events an endpoint refused for good (dead-lettered), once per endpoint.
    pub permanent: Counter,
}

/// How one POST ended.
enum Outcome {
    Delivered,
    /// A 4xx other than 408/429: this batch will never be taken by this endpoint.
    Refused(String),
    Retry(String),
}

/// Delivers events until the task is dropped: one task per endpoint.
pub async fn run(
    queue: EventQueue,
    endpoints: Vec<Endpoint>,
    stats: Arc<Stats>,
    timeout: Duration,
) {
    if endpoints.is_empty() {
        return;
    }
    crate::tls::install_provider();
    let client = match reqwest::Client::builder()
        .no_proxy()
        // A followed 301/302/303 turns the POST into a GET without the events: never follow,
        // an event is removed only after a 2xx to the POST that carried it.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("event processor: cannot build the HTTP client: {e}");
            return;
        }
    };
    let keys: Arc<Vec<String>> = Arc::new(endpoints.iter().map(|e| e.key.clone()).collect());
    // Events every endpoint is done with but a crash left behind are removed once, at start
    // (streaming: a large queue is not held in memory).
    let swept = queue.for_each_pending(|n| {
        if keys.iter().all(|k| queue.is_done(n, k))
            && let Err(e) = queue.remove(n, &keys)
        {
            tracing::error!("event processor: cannot remove delivered event {n}: {e}");
        }
    });
    if let Err(e) = swept {
        tracing::error!("event processor: cannot list events: {e}");
    }
    let mut tasks = tokio::task::JoinSet::new();
    for ep in endpoints {
        let w = Worker {
            queue: queue.clone(),
            ep,
            keys: keys.clone(),
            client: client.clone(),
            stats: stats.clone(),
        };
        tasks.spawn(w.run());
    }
    // Dropping the set (the task aborted) aborts every endpoint's task.
    while tasks.join_next().await.is_some() {}
}

/// One endpoint's delivery loop.
struct Worker {
    queue: EventQueue,
    ep: Endpoint,
    keys: Arc<Vec<String>>,
    client: reqwest::Client,
    stats: Arc<Stats>,
}

impl Worker {
    async fn run(self) {
        let mut fails = 0u32;
        let mut cursor = Cursor::new();
        loop {
            match cursor.fill(&self.queue, &self.ep.key) {
                Ok(true) => {}
                Ok(false) => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!("event processor: cannot list events: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            }
            let (events, sent, used) = self.next_batch(&cursor.window);
            if events.is_empty() {
                // Every name looked at was done already or moved aside.
                cursor.advance(used);
                continue;
            }
            match self.post(&events).await {
                Outcome::Delivered => {
                    fails = 0;
                    if let Err(e) = self.queue.mark_acked(&sent, &self.ep.key) {
                        tracing::error!(
                            "event processor: cannot record delivery to {}: {e}",
                            self.ep.url
                        );
                        // The disk refuses: do not re-send in a tight loop.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    cursor.advance(used);
                    self.stats.delivered.inc_by(events.len() as u64);
                    trace_done(&self.ep, &sent);
                    let n = events.len();
                    tracing::debug!(endpoint = %self.ep.url, events = n, "events delivered");
                    remove_done(&self.queue, &self.keys, &sent);
                }
                Outcome::Refused(why) => {
                    fails = 0;
                    if self.dead_letter(&sent, events.len(), why) {
                        cursor.advance(used);
                    } else {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Outcome::Retry(why) => {
                    self.stats.failures.inc();
                    fails += 1;
                    let wait = crate::base::backoff(fails);
                    tracing::warn!(
                        endpoint = %self.ep.url,
                        "delivering {} events to {} failed ({why}); retrying in {wait:?}",
                        events.len(),
                        self.ep.url
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The next events of the window this endpoint is not done with, read, whole files only:
    /// at most [`BATCH`] events (a file never holds more). Unreadable files are
    /// quarantined. Also returns how many names of the window it used up.
    fn next_batch(&self, window: &VecDeque<String>) -> (Vec<Event>, Vec<String>, usize) {
        let mut events: Vec<Event> = Vec::new();
        let mut sent: Vec<String> = Vec::new();
        let mut used = 0;
        for n in window {
            if self.queue.is_done(n, &self.ep.key) {
                used += 1;
                continue;
            }
            if !events.is_empty() && events.len() + super::events_in(n) > BATCH {
                break;
            }
            used += 1;
            match self.queue.read(n) {
                Ok(file) => {
                    events.extend(file);
                    sent.push(n.clone());
                }
                Err(e) => quarantine(&self.queue, n, &e.to_string()),
            }
        }
        (events, sent, used)
    }

    /// POSTs one batch and classifies the answer.
    async fn post(&self, events: &[Event]) -> Outcome {
        let r = match self.client.post(&self.ep.url).json(events).send().await {
            Ok(r) => r,
            Err(e) => return Outcome::Retry(crate::base::error_chain(&e)),
        };
        let status = r.status();
        if status.is_success() {
            return Outcome::Delivered;
        }
        if status.is_redirection() {
            return Outcome::Retry(format!(
                "HTTP {} redirecting to {:?}, not followed: point --event-endpoint at the final URL",
                status.as_u16(),
                r.headers()
                    .get(reqwest::header::LOCATION)
                    .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
                    .unwrap_or_default()
            ));
        }
        let code = status.as_u16();
        if status.is_client_error() && code != 408 && code != 429 {
            let body = r.text().await.unwrap_or_default();
            let said: String = body.trim().chars().take(200).collect();
            return Outcome::Refused(if said.is_empty() {
                format!("HTTP {code}")
            } else {
                format!("HTTP {code}: {said}")
            });
        }
        Outcome::Retry(format!("HTTP {code}"))
    }

    /// A permanent failure: the batch goes to the dead-letter directory for this endpoint.
    /// False when that could not be recorded (the batch is tried again).
    fn dead_letter(&self, sent: &[String], events: usize, why: String) -> bool {
        let note = DeadNote {
            endpoint: self.ep.url.clone(),
            reason: why,
            at: Some(Timestamp::now()),
        };
        if let Err(e) = self.queue.mark_dead(sent, &self.ep.key, &note) {
            tracing::error!(
                "event processor: {} refused {} events for good ({}), and keeping them in the \
                 dead-letter directory failed: {e}; retrying",
                self.ep.url,
                events,
                note.reason
            );
            return false;
        }
        self.stats.permanent.inc_by(events as u64);
        trace_done(&self.ep, sent);
        tracing::error!(
            endpoint = %self.ep.url,
            "{} refused {} events for good ({}); they are kept in {} and not sent to it again",
            self.ep.url,
            events,
            note.reason,
            self.queue.dead_letter_dir().display()
        );
        remove_done(&self.queue, &self.keys, sent);
        true
    }
}

/// Oldest events an endpoint's task lists at a time (its memory: this many names).
const WINDOW: usize = 4096;

/// Events named up to this long before the last one a task finished with are still looked
/// at: an event is named when it is created, a moment before its file appears.
const LATE: Duration = Duration::from_secs(10);

/// How often a task looks through the whole queue again (an event moved back from the
/// dead-letter directory keeps its old name).
const FULL_PASS: Duration = Duration::from_secs(60);

/// Where an endpoint's task is in the queue. Events go out in name order, so those named well
/// before the last one it finished with are neither listed again nor their markers checked
/// until the next full pass: each listing is one streaming pass over the directory, and a
/// backlog costs neither memory nor a sort of all of it (as listing everything per batch did).
struct Cursor {
    /// The last name this task finished with (delivered, found done, or moved aside).
    done_to: Option<String>,
    /// The oldest names after it, not done for this endpoint when listed.
    window: VecDeque<String>,
    full_pass_at: Instant,
}

impl Cursor {
    fn new() -> Cursor {
        Cursor {
            done_to: None,
            window: VecDeque::new(),
            full_pass_at: Instant::now() + FULL_PASS,
        }
    }

    /// Lists the next window if the current one is used up; false when nothing is pending.
    fn fill(&mut self, queue: &EventQueue, key: &str) -> Result<bool, super::FileError> {
        if !self.window.is_empty() {
            return Ok(true);
        }
        if Instant::now() >= self.full_pass_at {
            self.done_to = None;
            self.full_pass_at = Instant::now() + FULL_PASS;
        }
        let low = self.done_to.as_deref().map(earlier_by_late);
        let names = queue.oldest(WINDOW, |n| {
            low.as_deref().is_none_or(|low| n > low) && !queue.is_done(n, key)
        })?;
        self.window = names.into();
        Ok(!self.window.is_empty())
    }

    /// The first `used` names of the window are finished with.
    fn advance(&mut self, used: usize) {
        for _ in 0..used {
            if let Some(n) = self.window.pop_front() {
                self.done_to = Some(n);
            }
        }
    }
}

/// The name an event created [`LATE`] before `name`'s would have (`<20-digit unix
/// nanoseconds>-...`); `name` itself if it does not have that form.
fn earlier_by_late(name: &str) -> String {
    match name.get(..20).and_then(|d| d.parse::<u128>().ok()) {
        Some(ns) => format!("{:020}", ns.saturating_sub(LATE.as_nanos())),
        None => name.to_string(),
    }
}

/// One line per event file the endpoint is now done with (its marker durable), for tracing
/// (`RUST_LOG=drain::events::processor=trace`; the power-loss harness checks that none is sent
/// to that endpoint again).
fn trace_done(ep: &Endpoint, names: &[String]) {
    for n in names {
        tracing::trace!(endpoint = %ep.url, event = %n, "event done");
    }
}

/// Removes those of `names` every endpoint is done with (took, or dead-lettered).
fn remove_done(queue: &EventQueue, keys: &[String], names: &[String]) {
    for n in names {
        if keys.iter().all(|k| queue.is_done(n, k))
            && let Err(e) = queue.remove(n, keys)
        {
            tracing::error!("event processor: cannot remove delivered event {n}: {e}");
        }
    }
}

/// Moves an unreadable event aside (`<name>.corrupt`) so it neither blocks delivery nor counts
/// as pending, and says so.
fn quarantine(queue: &EventQueue, name: &str, why: &str) {
    let from = queue.dir().join(format!("{name}.json"));
    let to = queue.dir().join(format!("{name}.corrupt"));
    tracing::error!(
        "event {}: {why}; moved aside to {}",
        from.display(),
        to.display()
    );
    let _ = std::fs::rename(&from, &to);
}

#[cfg(test)]
mod tests {
    #[test]
    fn earlier_by_late_moves_the_time_prefix_back_by_late() {
        let name = "00000000020000000000-00000000000000ab";
        assert_eq!(super::earlier_by_late(name), "00000000010000000000");
        assert!(super::earlier_by_late(name).as_str() < name);
        assert_eq!(
            super::earlier_by_late("00000000000000000005-x"),
            "00000000000000000000"
        );
        assert_eq!(super::earlier_by_late("not-a-time"), "not-a-time");
    }
}
