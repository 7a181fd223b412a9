//! The event processor: POSTs pending events, in batches, as a JSON array to every configured
//! endpoint, retrying with backoff until a 2xx, and removes an event once every endpoint took
//! it (see the module above for the on-disk markers that make this crash-safe).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// Counters for status and metrics.
#[derive(Default, Debug)]
pub struct Stats {
    pub delivered: AtomicU64,
    pub failures: AtomicU64,
}

struct Backoff {
    next: Instant,
    fails: u32,
}

/// Delivers events until the task is dropped.
pub async fn run(queue: EventQueue, endpoints: Vec<Endpoint>, stats: Arc<Stats>) {
    if endpoints.is_empty() {
        return;
    }
    crate::tls::install_provider();
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("event processor: cannot build the HTTP client: {e}");
            return;
        }
    };
    let keys: Vec<String> = endpoints.iter().map(|e| e.key.clone()).collect();
    let mut backoff: HashMap<String, Backoff> = HashMap::new();
    // Events every endpoint took but a crash left behind are removed once, at start; after
    // that only the events just acknowledged are checked.
    let mut cleanup: Vec<String> = queue.pending().unwrap_or_default();
    loop {
        remove_delivered(&queue, &keys, &cleanup);
        cleanup.clear();
        let mut busy = false;
        let names = match queue.pending() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("event processor: cannot list events: {e}");
                Vec::new()
            }
        };
        for ep in &endpoints {
            if backoff
                .get(&ep.key)
                .is_some_and(|b| Instant::now() < b.next)
            {
                continue;
            }
            let todo: Vec<String> = names
                .iter()
                .filter(|n| !queue.is_acked(n, &ep.key))
                .take(BATCH)
                .cloned()
                .collect();
            if todo.is_empty() {
                continue;
            }
            let mut events: Vec<Event> = Vec::with_capacity(todo.len());
            let mut sent: Vec<String> = Vec::with_capacity(todo.len());
            for n in &todo {
                match queue.read(n) {
                    Ok(e) => {
                        events.push(e);
                        sent.push(n.clone());
                    }
                    Err(e) => quarantine(&queue, n, &e.to_string()),
                }
            }
            if events.is_empty() {
                continue;
            }
            busy = true;
            match client.post(&ep.url).json(&events).send().await {
                Ok(r) if r.status().is_success() => {
                    if let Err(e) = queue.mark_acked(&sent, &ep.key) {
                        tracing::error!(
                            "event processor: cannot record delivery to {}: {e}",
                            ep.url
                        );
                        continue;
                    }
                    stats
                        .delivered
                        .fetch_add(sent.len() as u64, Ordering::Relaxed);
                    cleanup.extend(sent.iter().cloned());
                    backoff.remove(&ep.key);
                    tracing::debug!(endpoint = %ep.url, events = sent.len(), "events delivered");
                }
                other => {
                    let why = match other {
                        Ok(r) => format!("HTTP {}", r.status().as_u16()),
                        Err(e) => crate::base::error_chain(&e),
                    };
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    let b = backoff.entry(ep.key.clone()).or_insert(Backoff {
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
        }
        if !busy {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
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
