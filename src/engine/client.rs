//! Talking to the destinations: a pooled HTTPS client and the classification of every way a
//! request can end, which exactly-once depends on:
//!
//! - [`Delivery::NotDelivered`]: the request certainly did not reach the destination's
//!   storage (connection or TLS refused before sending, 503): the messages may go elsewhere.
//! - [`Delivery::Refused`]: the destination answered for the whole request (403, 413, 400...).
//! - [`Delivery::HandshakeRefused`]: its TLS layer refused our client certificate (or its
//!   absence): like a 403, permanent for this destination, and nothing reached its storage.
//!   Recognised by the typed rustls alert in the error's source chain (`tls::handshake_refusal`),
//!   also when, with TLS 1.3, the alert arrives on the first read after the handshake.
//! - [`Delivery::Answered`]: per-message outcomes, and the instance that gave them (its
//!   `Drain-Instance`, journaled with each `acked` so that a resumed run knows it).
//! - [`Delivery::Ambiguous`]: it may have stored some (timeout, dropped connection, other 5xx,
//!   unreadable answer): the messages stay pinned to it until it answers a query.
//!
//! - [`Delivery::Misdirected`]: a `421`: the request reached another instance than the one it
//!   named (behind a load balancer); nothing stored, definitively.
//! - [`Delivery::Parked`]: another instance than the one named parked them; nothing stored
//!   until [`Client::commit`] at that instance.
//!
//! Instances: every answer's `Drain-Instance` header is remembered per destination
//! ([`Instances`]); [`Client::target`] picks the instance the next transfer to a destination is
//! addressed to (learning one with `GET /v1/health` if none is known yet). Queries
//! ([`Client::query`]) answer which messages a destination (and the named instance) holds
//! ([`QueryError`] when it cannot say); [`Client::finish`] reaches every instance seen. Never touches the journal. Uses no other engine module; called by `deliver`
//! (transfers), `settle` and `resume` (queries) and `lifecycle` (the run finished).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use reqwest::StatusCode;

use super::failure::{Failure, FailureKind};
use crate::base::{ContentHash, Destination};
use crate::tls::{ClientIdentity, HandshakeRefusal};
use crate::wire::{self, ItemResult, QueryRequest, QueryResponse, TransferResponse};

/// How long a destination may send nothing while we wait for its answer before the request is
/// given up as stalled (in doubt if it was sent: settled by query later).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a query got no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Try again later: unreachable, timed out, busy, server error.
    #[error("{0}")]
    Unavailable(Failure),
    /// The destination refuses this sender altogether (403, or our client certificate at the
    /// handshake): it holds nothing of ours.
    #[error("{0}")]
    Refused(Failure),
    /// Another instance than the one named answered (`421`): ask again; never "not held".
    #[error("{0}")]
    Misdirected(Failure),
}

/// How a transfer request ended.
#[derive(Debug)]
pub enum Delivery {
    Answered {
        results: Vec<ItemResult>,
        /// The `Drain-Instance` of the answer, if it named a valid one.
        instance: Option<String>,
    },
    NotDelivered(Failure),
    Refused {
        status: u16,
        permanent: bool,
        reason: Failure,
    },
    HandshakeRefused(HandshakeRefusal),
    Ambiguous(Failure),
    /// `421`: another instance than the target answered; nothing stored.
    Misdirected(Failure),
    /// Another instance than the target parked some (outcome `parked`; the others answered as
    /// usual): nothing is stored until a commit at `instance` stores it.
    Parked {
        instance: String,
        results: Vec<ItemResult>,
    },
}

/// The instances seen behind each destination (by `Drain-Instance`), in this invocation and
/// (remembered by `resume`) in earlier ones of the run.
#[derive(Default)]
pub struct Instances(Mutex<BTreeMap<String, BTreeSet<String>>>);

impl Instances {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeSet<String>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers that `instance` answers behind `dest`.
    pub fn seen(&self, dest: &str, instance: &str) {
        if !wire::valid_token(instance) {
            return;
        }
        let mut m = self.lock();
        let set = m.entry(dest.to_string()).or_default();
        if set.insert(instance.to_ascii_lowercase()) {
            tracing::debug!(dest, instance, "instance seen behind {dest}");
        }
    }

    /// `instance` behind `dest` is given up on (`--reassign-after`): no longer picked as a
    /// target (seen again if it answers again).
    pub fn forget(&self, dest: &str, instance: &str) {
        if let Some(set) = self.lock().get_mut(dest) {
            set.remove(&instance.to_ascii_lowercase());
        }
    }

    /// Every instance seen behind `dest`.
    pub fn of(&self, dest: &str) -> Vec<String> {
        self.lock()
            .get(dest)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// One of the instances seen behind `dest`, picked at random (so a sender never falls into
    /// lockstep with a round-robin balancer, always naming the instance it just left).
    fn pick(&self, dest: &str) -> Option<String> {
        let all = self.of(dest);
        if all.is_empty() {
            return None;
        }
        let r = getrandom::u32().unwrap_or(0) as usize;
        all.get(r % all.len()).cloned()
    }
}

/// HTTPS client shared by every destination of a run (connections are pooled and reused).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    sender: String,
    run: String,
    /// A client certificate is presented (how a handshake refusal is worded).
    presents_cert: bool,
    /// The instances seen behind each destination.
    pub instances: Arc<Instances>,
    /// When a `GET /v1/health` to learn a destination's instance last failed: within
    /// [`PROBE_COOL_DOWN`] the destination is skipped without asking again, so a stalled one
    /// costs one probe, not one per batch.
    probe_failed: Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>>,
}

/// How long a destination whose instance probe failed is skipped.
pub const PROBE_COOL_DOWN: Duration = Duration::from_secs(10);

impl Client {
    pub fn new(
        bind_ip: Option<IpAddr>,
        ca_cert: Option<&Path>,
        identity: Option<&ClientIdentity>,
        sender: &str,
        run: &str,
        pool_per_host: usize,
    ) -> anyhow::Result<Client> {
        crate::tls::install_provider();
        let mut b = reqwest::Client::builder()
            .http1_only()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            // A peer that stops sending bytes (stopped, hung, a black hole) is noticed within
            // this time, whatever the request's overall timeout.
            .read_timeout(STALL_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(pool_per_host)
            .tcp_nodelay(true)
            .user_agent(concat!("drain/", env!("CARGO_PKG_VERSION")));
        if let Some(ip) = bind_ip {
            b = b.local_address(ip);
        }
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read --ca-cert {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!("--ca-cert {}: not a PEM certificate bundle", path.display())
            })?;
            if certs.is_empty() {
                anyhow::bail!("--ca-cert {}: no certificate found", path.display());
            }
            b = b.tls_certs_only(certs);
        }
        if let Some(id) = identity {
            let pem = id.load_pem().context("--client-cert/--client-key")?;
            let identity = reqwest::Identity::from_pem(&pem).with_context(|| {
                format!(
                    "--client-cert {} / --client-key {}",
                    id.cert.display(),
                    id.key.display()
                )
            })?;
            b = b.identity(identity);
            if let Some(w) = crate::tls::key_exposure_warning(&id.key, "--client-key") {
                tracing::warn!("{w}");
            }
        }
        Ok(Client {
            http: b.build().context("cannot build the HTTPS client")?,
            sender: sender.to_string(),
            run: run.to_string(),
            presents_cert: identity.is_some(),
            instances: Arc::default(),
            probe_failed: Default::default(),
        })
    }

    /// The destination's TLS layer refused us for our client certificate, if that is what
    /// ended `e`.
    fn refusal(&self, e: &reqwest::Error) -> Option<HandshakeRefusal> {
        crate::tls::handshake_refusal(e, self.presents_cert)
    }

    /// Remembers the instance that answered `resp`, if it names one.
    fn learn(&self, dest: &Destination, resp: &reqwest::Response) {
        if let Some(i) = resp
            .headers()
            .get(wire::HDR_INSTANCE)
            .and_then(|v| v.to_str().ok())
        {
            self.instances.seen(&dest.to_string(), i.trim());
        }
    }

    /// A `POST` to `path` at `dest` with our identity headers and, if given, the target instance.
    fn post(
        &self,
        dest: &Destination,
        path: &str,
        target: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut b = self
            .http
            .post(dest.url(path))
            .header(wire::HDR_SENDER, &self.sender)
            .header(wire::HDR_RUN, &self.run);
        if let Some(t) = target {
            b = b.header(wire::HDR_TARGET_INSTANCE, t);
        }
        b
    }

    /// The instance the next transfer to `dest` is addressed to: one seen behind it (asking
    /// `GET /v1/health` first if none is known yet). None: `dest` does not name its instances
    /// (an older server) or cannot be reached; the transfer then goes without a target.
    /// A probe that failed less than [`PROBE_COOL_DOWN`] ago is not repeated: the transfer
    /// goes without a target and its own outcome (not delivered, or in doubt) decides.
    pub async fn target(&self, dest: &Destination) -> Option<String> {
        let name = dest.to_string();
        if let Some(t) = self.instances.pick(&name) {
            return Some(t);
        }
        let lock = || self.probe_failed.lock().unwrap_or_else(|p| p.into_inner());
        if lock()
            .get(&name)
            .is_some_and(|at| at.elapsed() < PROBE_COOL_DOWN)
        {
            return None;
        }
        let resp = self
            .http
            .get(dest.url(wire::HEALTH_PATH))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match resp {
            Ok(r) => {
                self.learn(dest, &r);
                lock().remove(&name);
                self.instances.pick(&name)
            }
            Err(_) => {
                lock().insert(name, std::time::Instant::now());
                None
            }
        }
    }

    /// Sends one transfer request (a wire batch), addressed to `target` if given, and
    /// classifies how it ended. A targeted transfer lets another instance park it (`wire`,
    /// "Parking"): then the answer is [`Delivery::Parked`].
    pub async fn transfer(
        &self,
        dest: &Destination,
        target: Option<&str>,
        body: Bytes,
        frames: usize,
    ) -> Delivery {
        // Generous: 60 s plus 1 s per MB, so slow links are not mistaken for dead ones.
        let timeout = Duration::from_secs(60 + body.len() as u64 / 1_000_000);
        let mut req = self
            .post(dest, wire::TRANSFER_PATH, target)
            .header(reqwest::header::CONTENT_TYPE, wire::BATCH_CONTENT_TYPE);
        if target.is_some() {
            req = req.header(wire::HDR_PARK, "1");
        }
        let resp = req.timeout(timeout).body(body).send().await;
        self.classify(dest, resp, frames).await
    }

    /// Commits at `instance` behind `dest` the messages a transfer parked there (`wire`,
    /// `POST /v1/commit`); classified as a transfer (a `421` is another instance answering).
    pub async fn commit(
        &self,
        dest: &Destination,
        instance: &str,
        items: &[(crate::base::MessageId, ContentHash)],
    ) -> Delivery {
        let body = match serde_json::to_vec(&query_body(items)) {
            Ok(b) => b,
            Err(e) => {
                return Delivery::NotDelivered(Failure::new(FailureKind::Other, e.to_string()));
            }
        };
        let resp = self
            .post(dest, wire::COMMIT_PATH, Some(instance))
            // Through a TCP balancer a kept-alive connection reaches the same instance every
            // time: a fresh one lets the next try reach another.
            .header(reqwest::header::CONNECTION, "close")
            .header(reqwest::header::CONTENT_TYPE, wire::QUERY_CONTENT_TYPE)
            .timeout(Duration::from_secs(60))
            .body(body)
            .send()
            .await;
        match self.classify(dest, resp, items.len()).await {
            // A commit parks nothing: such an answer is not one we can trust.
            Delivery::Parked { .. } => Delivery::Ambiguous(Failure::new(
                FailureKind::BadAnswer,
                "a commit answered \"parked\"",
            )),
            d => d,
        }
    }

    /// How a transfer or commit request ended, from its answer (or the error instead).
    async fn classify(
        &self,
        dest: &Destination,
        resp: Result<reqwest::Response, reqwest::Error>,
        frames: usize,
    ) -> Delivery {
        let resp = match resp {
            Ok(r) => r,
            Err(e) if let Some(r) = self.refusal(&e) => return Delivery::HandshakeRefused(r),
            // Never left: the connection was not made, or the request could not even be built.
            Err(e) if e.is_connect() || e.is_builder() => {
                return Delivery::NotDelivered(Failure::from_http(&e));
            }
            Err(e) => return Delivery::Ambiguous(Failure::from_http(&e)),
        };
        self.learn(dest, &resp);
        let status = resp.status();
        if status == StatusCode::OK {
            let answering = instance_of(&resp);
            return match resp.bytes().await {
                Err(e) => Delivery::Ambiguous(Failure::from_http(&e)),
                Ok(b) => answered(&b, frames, answering),
            };
        }
        let reason = error_text(status, resp).await;
        // 421: another instance behind the same address answered, before reading the body.
        if status == StatusCode::MISDIRECTED_REQUEST {
            return Delivery::Misdirected(reason);
        }
        // 503 (not accepting) and 507 (its disk is full) mean: nothing was stored. Definitive,
        // so never in doubt.
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::INSUFFICIENT_STORAGE
        ) {
            Delivery::NotDelivered(reason)
        } else if status.is_server_error() {
            Delivery::Ambiguous(reason)
        } else {
            Delivery::Refused {
                status: status.as_u16(),
                permanent: status != StatusCode::TOO_MANY_REQUESTS
                    && status != StatusCode::REQUEST_TIMEOUT,
                reason,
            }
        }
    }

    /// Asks which of `hashes` the destination (the `target` instance behind it, if given)
    /// holds for this run.
    pub async fn query(
        &self,
        dest: &Destination,
        target: Option<&str>,
        items: &[(crate::base::MessageId, ContentHash)],
    ) -> Result<Vec<ContentHash>, QueryError> {
        self.query_on(dest, target, target.is_some(), items).await
    }

    /// As [`Client::query`] without a target, on a fresh connection, so that through a
    /// balancer each ask may reach another instance (what answered is learned in
    /// [`Client::instances`]).
    pub async fn query_fresh(
        &self,
        dest: &Destination,
        items: &[(crate::base::MessageId, ContentHash)],
    ) -> Result<Vec<ContentHash>, QueryError> {
        self.query_on(dest, None, true, items).await
    }

    async fn query_on(
        &self,
        dest: &Destination,
        target: Option<&str>,
        fresh: bool,
        items: &[(crate::base::MessageId, ContentHash)],
    ) -> Result<Vec<ContentHash>, QueryError> {
        use QueryError::Unavailable;
        let mut held = Vec::new();
        for chunk in items.chunks(wire::MAX_QUERY) {
            let mut req = self.post(dest, wire::QUERY_PATH, target);
            if fresh {
                // A kept-alive connection through a TCP balancer always reaches the same
                // instance: a fresh one per targeted query lets the next ask reach another.
                req = req.header(reqwest::header::CONNECTION, "close");
            }
            let resp =
                req.timeout(Duration::from_secs(60))
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(serde_json::to_vec(&query_body(chunk)).map_err(|e| {
                        Unavailable(Failure::new(FailureKind::Other, e.to_string()))
                    })?)
                    .send()
                    .await
                    .map_err(|e| match self.refusal(&e) {
                        Some(r) => QueryError::Refused(refused(&r)),
                        None => Unavailable(Failure::from_http(&e)),
                    })?;
            self.learn(dest, &resp);
            let status = resp.status();
            if status != StatusCode::OK {
                let text = error_text(status, resp).await;
                if status == StatusCode::MISDIRECTED_REQUEST {
                    return Err(QueryError::Misdirected(text));
                }
                // Refused outright (not allowed, not a drain endpoint): the same check guards
                // storing, so it cannot hold messages of ours. Anything else: ask again later.
                return Err(match status.as_u16() {
                    403..=405 => QueryError::Refused(text),
                    _ => Unavailable(text),
                });
            }
            let body = resp
                .bytes()
                .await
                .map_err(|e| Unavailable(Failure::from_http(&e)))?;
            let q: QueryResponse = serde_json::from_slice(&body)
                .map_err(|e| Unavailable(Failure::new(FailureKind::BadAnswer, e.to_string())))?;
            held.extend(q.held);
        }
        Ok(held)
    }
}

/// How many times a finish is sent again to reach an instance behind a balancer (`421`): the
/// later ones 100 ms apart, so about 5 s in all, longer than a balancer keeps a backend out
/// after a few failed requests (nginx's `fail_timeout`, HAProxy's health checks).
const FINISH_TRIES: usize = 60;

/// How long one finish may take.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    /// Tells the destination this run has finished, so it may drop its dedupe keys: first a
    /// few untargeted finishes that find instances not seen yet, then every instance seen
    /// behind it (each named as the target, sent again on `421` a bounded number of times),
    /// or just the address if none is known.
    pub async fn finish(&self, dest: &Destination) -> Result<(), Failure> {
        let known = self.instances.of(&dest.to_string());
        if known.is_empty() {
            return self.finish_one(dest, None, false, FINISH_TIMEOUT).await;
        }
        // A resumed invocation knows only the instances its journal names as targets and those
        // that answered it; the run may have reached others. Untargeted finishes, each on a new
        // connection, are answered by whichever instance the balancer picks (a round-robin
        // one reaches them in turn): each is told, and learned for the round below.
        // Short, and ended by the first failure: a destination that stalls should not hold
        // the run's end for long (the targeted round below has its own tries).
        for _ in 0..=known.len() {
            let probe = self.finish_one(dest, None, true, Duration::from_secs(2));
            if probe.await.is_err() {
                break;
            }
        }
        let instances = self.instances.of(&dest.to_string());
        let mut result = Ok(());
        for i in &instances {
            let mut last = Ok(());
            for attempt in 0..FINISH_TRIES {
                last = self.finish_one(dest, Some(i), true, FINISH_TIMEOUT).await;
                match &last {
                    Ok(()) => break,
                    // Another instance answered: ask again, at once at first, then with a
                    // pause (the balancer may have taken ours out for a moment).
                    Err(f) if matches!(f.kind, FailureKind::Status(421, _)) => {
                        if attempt >= 10 {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    // A balancer's 503, a reset, a timeout: a short pause, then again (the
                    // first tries only: a destination that is gone should not hold the run).
                    Err(_) if attempt < 3 => tokio::time::sleep(Duration::from_millis(200)).await,
                    Err(_) => break,
                }
            }
            if let Err(e) = last {
                tracing::info!(dest = %dest, instance = %i, "could not tell instance {i} behind {dest} the run finished: {e}");
                result = Err(e);
            }
        }
        result
    }

    /// One finish; `fresh`: on a new connection (behind a balancer, each may reach another
    /// instance).
    async fn finish_one(
        &self,
        dest: &Destination,
        target: Option<&str>,
        fresh: bool,
        timeout: Duration,
    ) -> Result<(), Failure> {
        let mut req = self.post(dest, wire::FINISH_PATH, target);
        if fresh {
            req = req.header(reqwest::header::CONNECTION, "close");
        }
        let resp = req
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| match self.refusal(&e) {
                Some(r) => refused(&r),
                None => Failure::from_http(&e),
            })?;
        self.learn(dest, &resp);
        let status = resp.status();
        if status != StatusCode::OK {
            return Err(error_text(status, resp).await);
        }
        Ok(())
    }
}

/// The body of a query or commit naming `items`.
fn query_body(items: &[(crate::base::MessageId, ContentHash)]) -> QueryRequest {
    QueryRequest {
        messages: items
            .iter()
            .map(|(id, hash)| wire::QueryItem {
                id: *id,
                hash: *hash,
            })
            .collect(),
    }
}

/// The `Drain-Instance` an answer names.
fn instance_of(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(wire::HDR_INSTANCE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| wire::valid_token(v))
}

/// A `200` answer's body: one result per frame, or in doubt. Parked results need the instance
/// that parked them; without one (never from a server that parks) the answer is in doubt.
fn answered(body: &[u8], frames: usize, answering: Option<String>) -> Delivery {
    let results = match serde_json::from_slice::<TransferResponse>(body) {
        Ok(r) if r.results.len() == frames => r.results,
        Ok(r) => {
            return Delivery::Ambiguous(Failure::new(
                FailureKind::BadAnswer,
                format!("{} results for {frames} messages", r.results.len()),
            ));
        }
        Err(e) => return Delivery::Ambiguous(Failure::new(FailureKind::BadAnswer, e.to_string())),
    };
    if !results.iter().any(|r| r.outcome == wire::Outcome::Parked) {
        return Delivery::Answered {
            results,
            instance: answering,
        };
    }
    match answering {
        Some(instance) => Delivery::Parked { instance, results },
        None => Delivery::Ambiguous(Failure::new(
            FailureKind::BadAnswer,
            "messages parked by an instance that did not name itself",
        )),
    }
}

/// A refusal of our client certificate as a failure of its own kind.
pub fn refused(r: &HandshakeRefusal) -> Failure {
    let label = match r {
        HandshakeRefusal::NeedsCertificate(_) => crate::tls::NEEDS_CERT,
        HandshakeRefusal::RefusedCertificate(_) => crate::tls::REFUSED_CERT,
    };
    Failure::new(FailureKind::ClientCertificate(label), r.to_string())
}

/// A non-200 answer as a failure: the status and the typed code if the body carries one
/// (kind), the peer's message (detail).
async fn error_text(status: StatusCode, resp: reqwest::Response) -> Failure {
    let body = resp.bytes().await.unwrap_or_default();
    let (code, msg) = match serde_json::from_slice::<wire::ErrorResponse>(&body) {
        Ok(e) => (e.code.map(|c| c.as_str()), e.error),
        Err(_) => (
            None,
            String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        ),
    };
    Failure::new(FailureKind::Status(status.as_u16(), code), msg.trim())
}
