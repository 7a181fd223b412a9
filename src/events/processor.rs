//! The event processor: POSTs pending events, in batches, as a JSON array to every configured
//! endpoint, retrying with backoff until a 2xx, and removes an event once every endpoint took
//! it (see the module above for the on-disk markers that make this crash-safe).
//!
//! Run as a task by `drain serve` (`intake`), which also reads its [`Stats`] for the metrics.
//! Invariants: an event's delivery to an endpoint is recorded (marker, fsync) only after a 2xx,
//! so a crash can repeat a delivery but never lose one; an endpoint that fails is retried with
//! backoff without holding up the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use super::{Event, EventQueue};

/// Most events in one POST.
const BATCH: usize = 100;

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
/// `drain_event_delivery_failures_total`); shared with `intake::metrics`, which reads them.
#[derive(Default, Debug)]
pub struct Stats {
    pub delivered: Counter,
    pub failures: Counter,
}

/// An endpoint that failed: not tried again before `next`.
struct Backoff {
    next: Instant,
    fails: u32,
}

/// The processor's state between passes.
struct Processor {
    queue: EventQueue,
    endpoints: Vec<Endpoint>,
    /// The endpoints' keys, naming their ack markers.
    keys: Vec<String>,
    client: reqwest::Client,
    stats: Arc<Stats>,
    backoff: HashMap<String, Backoff>,
    /// Events acknowledged in the last pass, to remove once every endpoint has them.
    cleanup: Vec<String>,
}

/// Delivers events until the task is dropped.
pub async fn run(queue: EventQueue, endpoints: Vec<Endpoint>, stats: Arc<Stats>) {
    if endpoints.is_empty() {
        return;
    }
    crate::tls::install_provider();
    let client = match reqwest::Client::builder()
        .no_proxy()
        // A followed 301/302/303 turns the POST into a GET without the events: never follow,
        // an event is removed only after a 2xx to the POST that carried it.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("event processor: cannot build the HTTP client: {e}");
            return;
        }
    };
    let mut p = Processor {
        keys: endpoints.iter().map(|e| e.key.clone()).collect(),
        // Events every endpoint took but a crash left behind are removed once, at start;
        // after that only the events just acknowledged are checked.
        cleanup: queue.pending().unwrap_or_default(),
        queue,
        endpoints,
        client,
        stats,
        backoff: HashMap::new(),
    };
    loop {
        if !p.pass().await {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Processor {
    /// One pass over the endpoints; false when there was nothing to send.
    async fn pass(&mut self) -> bool {
        remove_delivered(&self.queue, &self.keys, &self.cleanup);
        self.cleanup.clear();
        let names = match self.queue.pending() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("event processor: cannot list events: {e}");
                Vec::new()
            }
        };
        let mut busy = false;
        for i in 0..self.endpoints.len() {
            let ep = self.endpoints[i].clone();
            if self
                .backoff
                .get(&ep.key)
                .is_some_and(|b| Instant::now() < b.next)
            {
                continue;
            }
            let Some((events, sent)) = self.next_batch(&ep, &names) else {
                continue;
            };
            busy = true;
            self.deliver(&ep, &events, sent).await;
        }
        busy
    }

    /// The next events (at most [`BATCH`]) `ep` has not taken, read; unreadable ones are
    /// quarantined. `None` when there is nothing to send.
    fn next_batch(&self, ep: &Endpoint, names: &[String]) -> Option<(Vec<Event>, Vec<String>)> {
        let todo = names
            .iter()
            .filter(|n| !self.queue.is_acked(n, &ep.key))
            .take(BATCH);
        let mut events: Vec<Event> = Vec::new();
        let mut sent: Vec<String> = Vec::new();
        for n in todo {
            match self.queue.read(n) {
                Ok(e) => {
                    events.push(e);
                    sent.push(n.clone());
                }
                Err(e) => quarantine(&self.queue, n, &e.to_string()),
            }
        }
        (!events.is_empty()).then_some((events, sent))
    }

    /// POSTs one batch; on a 2xx records the delivery durably, otherwise backs off.
    async fn deliver(&mut self, ep: &Endpoint, events: &[Event], sent: Vec<String>) {
        let why = match self.client.post(&ep.url).json(events).send().await {
            Ok(r) if r.status().is_success() => {
                if let Err(e) = self.queue.mark_acked(&sent, &ep.key) {
                    tracing::error!("event processor: cannot record delivery to {}: {e}", ep.url);
                    return;
                }
                self.stats.delivered.inc_by(sent.len() as u64);
                tracing::debug!(endpoint = %ep.url, events = sent.len(), "events delivered");
                self.cleanup.extend(sent);
                self.backoff.remove(&ep.key);
                return;
            }
            Ok(r) if r.status().is_redirection() => format!(
                "HTTP {} redirecting to {:?}, not followed: point --event-endpoint at the final URL",
                r.status().as_u16(),
                r.headers()
                    .get(reqwest::header::LOCATION)
                    .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
                    .unwrap_or_default()
            ),
            Ok(r) => format!("HTTP {}", r.status().as_u16()),
            Err(e) => crate::base::error_chain(&e),
        };
        self.stats.failures.inc();
        let b = self.backoff.entry(ep.key.clone()).or_insert(Backoff {
            next: Instant::now(),
            fails: 0,
        });
        b.fails += 1;
        let wait = crate::base::backoff(b.fails);
        b.next = Instant::now() + wait;
        tracing::warn!(
            endpoint = %ep.url,
            "delivering {} events to {} failed ({why}); retrying in {wait:?}",
            sent.len(),
            ep.url
        );
    }
}

/// Removes those of `names` that every endpoint has acknowledged.
fn remove_delivered(queue: &EventQueue, keys: &[String], names: &[String]) {
    for n in names {
        if keys.iter().all(|k| queue.is_acked(n, k))
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
