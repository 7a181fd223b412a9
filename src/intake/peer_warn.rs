//! Rate limiting of the warnings about one peer (failed TLS handshakes, refused PROXY
//! headers): a scanner or a misconfigured balancer reconnecting in a loop must not flood the
//! log, yet the first failure of each peer is always logged at once.
//!
//! Invariant: at most one line per peer per interval; the lines held back are counted and the
//! next line of that peer says how many. Memory is bounded ([`MAX_PEERS`]). Used by
//! `listener`; the metrics count every failure, logged or not.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Peers remembered at once; beyond, the entries older than the interval are forgotten (and,
/// under a flood of distinct addresses, all of them).
pub const MAX_PEERS: usize = 4096;

/// One line per peer per `interval`.
#[derive(Debug)]
pub struct PeerWarn {
    interval: Duration,
    peers: Mutex<HashMap<IpAddr, Seen>>,
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    logged: Instant,
    held_back: u64,
}

impl PeerWarn {
    pub fn new(interval: Duration) -> PeerWarn {
        PeerWarn {
            interval,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a line about `peer` may be logged at `now`: `Some(n)` with the number of lines
    /// held back since the last one, or `None` to stay silent.
    pub fn admit(&self, peer: IpAddr, now: Instant) -> Option<u64> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if peers.len() >= MAX_PEERS && !peers.contains_key(&peer) {
            peers.retain(|_, s| now.saturating_duration_since(s.logged) < self.interval);
            if peers.len() >= MAX_PEERS {
                peers.clear();
            }
        }
        match peers.get_mut(&peer) {
            Some(s) if now.saturating_duration_since(s.logged) < self.interval => {
                s.held_back += 1;
                None
            }
            Some(s) => {
                let n = s.held_back;
                *s = Seen {
                    logged: now,
                    held_back: 0,
                };
                Some(n)
            }
            None => {
                peers.insert(
                    peer,
                    Seen {
                        logged: now,
                        held_back: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

/// The suffix of a line that follows held-back ones.
pub fn held_back_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more from this peer not logged since the last line)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_peer_per_interval_counting_the_rest() {
        let w = PeerWarn::new(Duration::from_secs(60));
        let t = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(w.admit(a, t), Some(0));
        assert_eq!(w.admit(a, t + Duration::from_secs(1)), None);
        assert_eq!(w.admit(a, t + Duration::from_secs(59)), None);
        assert_eq!(w.admit(b, t + Duration::from_secs(2)), Some(0));
        assert_eq!(w.admit(a, t + Duration::from_secs(60)), Some(2));
        assert_eq!(w.admit(a, t + Duration::from_secs(61)), None);
        assert_eq!(
            held_back_note(2),
            " (2 more from this peer not logged since the last line)"
        );
        assert_eq!(held_back_note(0), "");
    }

    #[test]
    fn memory_stays_bounded_under_many_peers() {
        let w = PeerWarn::new(Duration::from_secs(60));
        let t = Instant::now();
        for i in 0..(MAX_PEERS as u32 + 10) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(w.admit(ip, t), Some(0));
        }
        assert!(w.peers.lock().unwrap().len() <= MAX_PEERS);
    }
}
