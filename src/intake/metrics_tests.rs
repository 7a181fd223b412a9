//! Tests of the metrics: the exact exposition, labels and counters.

use super::*;

fn result(outcome: Outcome, code: Option<RejectCode>) -> ItemResult {
    ItemResult {
        hash: crate::base::ContentHash([0; 32]),
        id: None,
        outcome,
        code,
        reason: code.map(|c| format!("{}: x", c.as_str())),
    }
}

#[test]
fn renders_counts_reasons_and_a_cumulative_histogram() {
    let m = Metrics::new(
        Arc::new(AtomicBool::new(true)),
        Arc::default(),
        crate::events::EventQueue::read_only(std::path::Path::new("/nonexistent")),
    );
    m.transfer_results(
        &[
            result(Outcome::Stored, None),
            result(Outcome::Stored, None),
            result(Outcome::AlreadyHeld, None),
            result(Outcome::RejectedPermanent, Some(RejectCode::HashMismatch)),
            result(Outcome::RejectedTransient, Some(RejectCode::Transient)),
            result(Outcome::Parked, None),
        ],
        &[10, 20, 30, 40, 50, 60],
    );
    m.answered(StatusCode::FORBIDDEN);
    m.answered(StatusCode::OK);
    m.transfer_took(Duration::from_millis(3));
    m.transfer_took(Duration::from_millis(700));
    let text = m.render();
    for line in [
        "drain_intake_messages_stored_total 2",
        "drain_intake_bytes_stored_total 30",
        "drain_intake_messages_already_held_total 1",
        "drain_intake_messages_parked_total 1",
        "drain_intake_refusals_total{reason=\"forbidden\"} 1",
        "drain_intake_refusals_total{reason=\"hash_mismatch\"} 1",
        "drain_intake_refusals_total{reason=\"transient\"} 1",
        "drain_intake_refusals_total{reason=\"too_large\"} 0",
        "drain_intake_accepting 1",
        "drain_events_pending NaN",
        "drain_intake_transfer_duration_seconds_bucket{le=\"0.005\"} 1",
        "drain_intake_transfer_duration_seconds_bucket{le=\"0.5\"} 1",
        "drain_intake_transfer_duration_seconds_bucket{le=\"1\"} 2",
        "drain_intake_transfer_duration_seconds_bucket{le=\"+Inf\"} 2",
        "drain_intake_transfer_duration_seconds_count 2",
        "drain_intake_transfer_duration_seconds_sum 0.703",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
    }
}

/// The whole exposition of a fresh serve, byte for byte: names, help, types, order.
#[test]
fn a_fresh_exposition_is_exactly_this() {
    let m = Metrics::new(
        Arc::new(AtomicBool::new(false)),
        Arc::default(),
        crate::events::EventQueue::read_only(std::path::Path::new("/nonexistent")),
    );
    let mut want = String::from(
        "# HELP drain_intake_messages_stored_total Messages taken in and stored durably.\n\
         # TYPE drain_intake_messages_stored_total counter\n\
         drain_intake_messages_stored_total 0\n\
         # HELP drain_intake_bytes_stored_total Bytes of the messages stored (spool file sizes).\n\
         # TYPE drain_intake_bytes_stored_total counter\n\
         drain_intake_bytes_stored_total 0\n\
         # HELP drain_intake_messages_already_held_total Dedupe hits: messages acknowledged again without storing them twice.\n\
         # TYPE drain_intake_messages_already_held_total counter\n\
         drain_intake_messages_already_held_total 0\n\
         # HELP drain_intake_messages_parked_total Messages parked for another instance's commit (behind a balancer).\n\
         # TYPE drain_intake_messages_parked_total counter\n\
         drain_intake_messages_parked_total 0\n\
         # HELP drain_intake_transfer_duration_seconds Time to answer a transfer request.\n\
         # TYPE drain_intake_transfer_duration_seconds histogram\n",
    );
    for le in [
        "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60",
        "+Inf",
    ] {
        want += &format!("drain_intake_transfer_duration_seconds_bucket{{le=\"{le}\"}} 0\n");
    }
    // A float, as the crate writes it ("0.0"; the hand-written encoder wrote "0").
    want += "drain_intake_transfer_duration_seconds_sum 0.0\n\
             drain_intake_transfer_duration_seconds_count 0\n\
             # HELP drain_intake_connections_over_peer_limit_total Connections closed at accept: their peer address had max_connections_per_peer open.\n\
             # TYPE drain_intake_connections_over_peer_limit_total counter\n\
             drain_intake_connections_over_peer_limit_total 0\n\
             # HELP drain_intake_header_timeouts_total Connections closed: a request header did not arrive within header_read_timeout.\n\
             # TYPE drain_intake_header_timeouts_total counter\n\
             drain_intake_header_timeouts_total 0\n\
             # HELP drain_intake_accepting 1 while intake takes messages, 0 while draining or stopping.\n\
             # TYPE drain_intake_accepting gauge\n\
             drain_intake_accepting 0\n\
             # HELP drain_events_pending Events not yet delivered to every endpoint.\n\
             # TYPE drain_events_pending gauge\n\
             drain_events_pending NaN\n\
             # HELP drain_events_delivered_total Events delivered, once per endpoint that took them.\n\
             # TYPE drain_events_delivered_total counter\n\
             drain_events_delivered_total 0\n\
             # HELP drain_event_delivery_failures_total Failed POSTs to an event endpoint (retried).\n\
             # TYPE drain_event_delivery_failures_total counter\n\
             drain_event_delivery_failures_total 0\n\
             # HELP drain_event_permanent_failures_total Events an endpoint refused for good (kept in the dead-letter directory).\n\
             # TYPE drain_event_permanent_failures_total counter\n\
             drain_event_permanent_failures_total 0\n\
             # HELP drain_intake_refusals_total Refused requests and rejected messages, by reason.\n\
             # TYPE drain_intake_refusals_total counter\n";
    for r in Refusal::ALL {
        want += &format!(
            "drain_intake_refusals_total{{reason=\"{}\"}} 0\n",
            r.label()
        );
    }
    want += "# HELP drain_intake_connections_refused_total Connections closed before any request (TLS handshake, PROXY header), by reason.\n\
             # TYPE drain_intake_connections_refused_total counter\n";
    for r in ConnRefusal::ALL {
        want += &format!(
            "drain_intake_connections_refused_total{{reason=\"{}\"}} 0\n",
            r.label()
        );
    }
    assert_eq!(m.render(), want);
}
