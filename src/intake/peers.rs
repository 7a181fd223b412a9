//! Connections open per peer address: at most `max_connections_per_peer` from one address, so
//! one peer (however slow or stalled its connections) cannot take every connection the server
//! can hold. A connection over the limit is closed at accept, counted in the metrics and logged
//! at WARN, at most once per [`WARN_EVERY`] (with how many were closed meanwhile), so a flood
//! cannot flood the log too.
//!
//! Peers in `http_trusted_proxy_ips` are exempt: a balancer's connections carry many senders.
//! Owned by `request::State`; `listener` asks [`Peers::admit`] for each accepted connection
//! and keeps the [`PeerSlot`] for as long as the connection lives.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::access::NetList;
use super::metrics::Metrics;

/// At most one "too many connections" line per this interval.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Open connections by peer address.
pub(crate) struct Peers {
    max: usize,
    exempt: NetList,
    open: Mutex<HashMap<IpAddr, usize>>,
    /// When the last WARN was logged, and how many refusals went unlogged since.
    warned: Mutex<(Option<Instant>, u64)>,
    metrics: Arc<Metrics>,
}

/// One admitted connection; its peer's count goes down when it is dropped.
pub(crate) struct PeerSlot {
    peers: Arc<Peers>,
    ip: Option<IpAddr>,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut open = self.peers.lock();
        if let Some(n) = open.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }
}

impl Peers {
    pub fn new(max: usize, exempt: NetList, metrics: Arc<Metrics>) -> Peers {
        Peers {
            max: max.max(1),
            exempt,
            open: Mutex::default(),
            warned: Mutex::new((None, 0)),
            metrics,
        }
    }

    /// A poisoned lock still holds consistent counts: every update is a single step.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new connection from `ip`, or `None` when `ip` already has the most allowed
    /// (counted and logged here; the caller closes the connection).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        if self.exempt.contains(ip) {
            return Some(PeerSlot {
                peers: self.clone(),
                ip: None,
            });
        }
        let mut open = self.lock();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            drop(open);
            self.metrics.over_peer_limit();
            self.warn(ip);
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip: Some(ip),
        })
    }

    fn warn(&self, ip: IpAddr) {
        let mut w = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if w.0.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            w.1 += 1;
            return;
        }
        let unlogged = std::mem::take(&mut w.1);
        w.0 = Some(now);
        drop(w);
        tracing::warn!(
            peer = %ip,
            max = self.max,
            unlogged,
            "closed a connection from {ip}: it already has {} open (max_connections_per_peer); \
             {unlogged} more closed for this reason since the last such warning",
            self.max
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_per_address_and_proxies_are_exempt() {
        let metrics = Arc::new(Metrics::new(
            Arc::default(),
            Arc::default(),
            crate::events::EventQueue::read_only(std::path::Path::new("/nonexistent")),
        ));
        let peers = Arc::new(Peers::new(2, "10.0.0.9".parse().unwrap(), metrics.clone()));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = peers.admit(a).unwrap();
        let _a2 = peers.admit(a).unwrap();
        assert!(peers.admit(a).is_none());
        assert!(peers.admit(b).is_some());
        drop(a1);
        assert!(peers.admit(a).is_some());
        let proxy = "10.0.0.9".parse().unwrap();
        let held: Vec<_> = (0..5).map(|_| peers.admit(proxy).unwrap()).collect();
        assert_eq!(held.len(), 5);
        assert!(
            metrics
                .render()
                .contains("drain_intake_connections_over_peer_limit_total 1\n")
        );
    }
}
