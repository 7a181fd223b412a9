//! The text rendering of `drain inspect`: the runs, the detail of one run and its anomalies
//! (each list cut to `--limit` items with "... and N more"), and one message's history.

use std::fmt::Write as _;

use super::Summary;
use super::history::{MessageHistory, Step};
use super::summary::{AckedNotRemoved, Listing, NotDelivered, ReasonGroup, RunDetail};
use crate::base::units::{Count, human_bytes};
use crate::journal::RunStatus;

fn status(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Running => "running",
        RunStatus::Interrupted => "interrupted",
        RunStatus::Finished => "finished",
    }
}

fn count(c: &Count) -> String {
    format!("{} ({})", c.messages, human_bytes(c.bytes))
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The default view.
pub fn summary(s: &Summary, limit: usize) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "journal {}: {} run{}",
        s.journal,
        s.runs.len(),
        if s.runs.len() == 1 { "" } else { "s" }
    );
    for r in &s.runs {
        let _ = writeln!(
            o,
            "  #{:<4} {:<11} exit {:<4} resumed {:<3} started {}  ended {}  id {}",
            r.seq,
            status(r.status),
            opt(&r.exit_code),
            r.resumed,
            r.started_at,
            opt(&r.ended_at),
            r.id
        );
        let _ = writeln!(o, "        destinations: {}", r.destinations.join(", "));
    }
    for c in &s.corrupt_runs {
        let _ = writeln!(o, "  corrupt record {}: {}", c.key, c.reason);
    }
    match &s.run {
        None => {
            let _ = writeln!(o, "no run to detail");
        }
        Some(d) => run_detail(&mut o, d, s.unclean, limit),
    }
    events(&mut o, &s.events);
    o
}

/// The instance's events: pending ones and dead letters, never left unsaid.
pub fn events(o: &mut String, e: &super::Events) {
    let _ = writeln!(
        o,
        "\nevents ({}): {} pending (not delivered to every endpoint), {} in the dead-letter \
         directory",
        e.dir, e.pending, e.dead_letter.count
    );
    for d in &e.dead_letter.items {
        let why: Vec<String> = d
            .notes
            .iter()
            .map(|n| format!("{}: {}", n.endpoint, n.reason))
            .collect();
        let _ = writeln!(o, "  dead letter {}: refused by {}", d.id, why.join("; "));
    }
    if e.dead_letter.truncated > 0 {
        let _ = writeln!(o, "  ... and {} more", e.dead_letter.truncated);
    }
}

/// Whether the run is `running` with no process holding the journal: its drain is gone.
fn abandoned(d: &RunDetail, unclean: bool) -> bool {
    d.status == RunStatus::Running && unclean
}

fn run_detail(o: &mut String, d: &RunDetail, unclean: bool, limit: usize) {
    let st = &d.by_state;
    let note = match d.status {
        RunStatus::Running if unclean => {
            " (but no process has the journal open: its drain was killed or crashed; \
             `drain resume` settles it)"
        }
        RunStatus::Running => {
            " (if a drain is at work, this is a snapshot and messages sent are in flight; \
             if none is, `drain resume` settles it)"
        }
        RunStatus::Interrupted => " (`drain resume` continues it)",
        RunStatus::Finished => "",
    };
    let _ = writeln!(o, "\nrun #{} ({}): {}{note}", d.seq, d.id, status(d.status));
    if let Some(at) = d.compacted_at {
        let _ = writeln!(
            o,
            "  message records compacted at {at}: this audit was kept then; single messages \
             can no longer be looked up"
        );
    }
    let _ = writeln!(
        o,
        "  {} messages journaled, {}: read {}, sent {}, acked {}, deleted {}",
        st.total.messages,
        human_bytes(st.total.bytes),
        st.read.messages,
        st.sent.messages,
        st.acked.messages,
        st.deleted.messages
    );
    let t = &d.throughput;
    let _ = writeln!(
        o,
        "  delivered {} in {:.1}s: {:.1} msg/s, {}/s",
        count(&st.delivered),
        t.elapsed_secs,
        t.messages_per_sec,
        human_bytes(t.bytes_per_sec as u64)
    );
    if !d.by_destination.is_empty() {
        let _ = writeln!(o, "  by destination:");
        for (dest, c) in &d.by_destination {
            let _ = writeln!(
                o,
                "    {dest}: delivered {}, removed locally {}, acked not removed {}, in doubt {}",
                count(&c.delivered),
                c.deleted.messages,
                c.acked.messages,
                c.sent.messages
            );
            for (i, ic) in &c.instances {
                let _ = writeln!(
                    o,
                    "      instance {i}: delivered {}, in doubt {}",
                    ic.delivered, ic.in_doubt
                );
            }
        }
    }
    if !d.by_queue.is_empty() {
        let _ = writeln!(o, "  by queue kind:");
        for (q, c) in &d.by_queue {
            let _ = writeln!(
                o,
                "    {q}: delivered {} of {} messages ({} of {})",
                c.delivered.messages,
                c.total.messages,
                human_bytes(c.delivered.bytes),
                human_bytes(c.total.bytes)
            );
        }
    }
    anomalies(o, d, unclean, limit);
}

fn anomalies(o: &mut String, d: &RunDetail, unclean: bool, limit: usize) {
    let a = &d.anomalies;
    if a.is_empty() {
        let _ = writeln!(o, "  anomalies: none");
        return;
    }
    let _ = writeln!(o, "  anomalies:");
    let in_doubt_title = if d.status == RunStatus::Running && !abandoned(d, unclean) {
        "sent, not confirmed (in flight if a drain is at work; else in doubt: run `drain resume`)"
    } else {
        "in doubt: sent, not confirmed (run `drain resume`)"
    };
    list(o, in_doubt_title, &a.in_doubt, limit, |x| {
        format!(
            "{} -> {} ({}, {}, since {})",
            x.id,
            opt(&x.dest),
            x.queue,
            human_bytes(x.size),
            opt(&x.since)
        )
    });
    list(
        o,
        "acked but the local copy is not removed (run `drain resume`)",
        &a.acked_not_removed,
        limit,
        acked_not_removed,
    );
    list(
        o,
        "possible duplicates (reassigned while a destination may hold them)",
        &a.possible_duplicates,
        limit,
        |x| {
            format!(
                "{} ({}, at {}; reassigned from {})",
                x.id,
                x.state.as_str(),
                opt(&x.dest),
                x.reassigned_from.join(", ")
            )
        },
    );
    list(
        o,
        "files that could not be read",
        &a.unreadable,
        limit,
        |x| format!("{} ({}): {}", x.path, x.kind, x.reason),
    );
    list(
        o,
        "corrupt journal records",
        &a.corrupt_records,
        limit,
        |x| format!("{}: {}", x.key, x.reason),
    );
    groups(o, "rejections", &a.rejections, limit);
    for (dest, n) in &a.client_certificate_refusals {
        let _ = writeln!(
            o,
            "    {n} messages refused by {dest} at the TLS handshake for our client certificate \
             (mutual TLS: see --client-cert/--client-key)"
        );
    }
    groups(
        o,
        "failovers (not delivered, sent elsewhere)",
        &a.failovers,
        limit,
    );
    list(
        o,
        "not delivered (still in the spool when the run ended)",
        &a.not_delivered,
        limit,
        not_delivered,
    );
}

fn acked_not_removed(x: &AckedNotRemoved) -> String {
    match &x.reason {
        Some(r) => format!("{} (held by {}): {r}", x.id, opt(&x.dest)),
        None => format!(
            "{} (held by {}): not tried before the run ended",
            x.id,
            opt(&x.dest)
        ),
    }
}

fn not_delivered(x: &NotDelivered) -> String {
    let mut s = format!("{} ({}, {})", x.id, x.queue, human_bytes(x.size));
    if !x.rejected_by.is_empty() {
        let by: Vec<String> = x
            .rejected_by
            .iter()
            .map(|r| format!("{}: {}", r.dest, r.reason))
            .collect();
        let _ = write!(s, " rejected by {}", by.join("; "));
    } else if let Some(n) = &x.last_note {
        let _ = write!(s, " last: {n}");
    }
    s
}

fn more(o: &mut String, n: u64) {
    if n > 0 {
        let _ = writeln!(
            o,
            "      ... and {n} more (`--json` lists up to {})",
            super::JSON_LIST_CAP
        );
    }
}

fn list<T>(o: &mut String, title: &str, l: &Listing<T>, limit: usize, line: impl Fn(&T) -> String) {
    if l.count == 0 {
        return;
    }
    let _ = writeln!(o, "    {} {title}:", l.count);
    for x in l.items.iter().take(limit) {
        let _ = writeln!(o, "      {}", line(x));
    }
    more(o, l.count - l.items.len().min(limit) as u64);
}

fn groups(o: &mut String, title: &str, gs: &[ReasonGroup], limit: usize) {
    if gs.is_empty() {
        return;
    }
    let _ = writeln!(o, "    {title}, by reason:");
    for g in gs.iter().take(limit) {
        let _ = writeln!(
            o,
            "      {} messages, {} {}: {}",
            g.messages, g.kind, g.dest, g.reason
        );
        let shown: Vec<&str> = g
            .ids
            .iter()
            .take(limit.min(5))
            .map(String::as_str)
            .collect();
        let rest = g.messages - shown.len() as u64;
        let _ = writeln!(
            o,
            "        {}{}",
            shown.join(" "),
            if rest > 0 {
                format!(" ... and {rest} more")
            } else {
                String::new()
            }
        );
    }
    if gs.len() > limit {
        let _ = writeln!(o, "      ... and {} more reasons", gs.len() - limit);
    }
}

/// `--message ID`.
pub fn history(h: &MessageHistory) -> String {
    let mut o = String::new();
    if !h.compacted_runs.is_empty() {
        let runs: Vec<String> = h.compacted_runs.iter().map(|s| format!("#{s}")).collect();
        let _ = writeln!(
            o,
            "runs {} were compacted: their messages' records are gone and were not searched",
            runs.join(", ")
        );
    }
    if h.runs.is_empty() && h.corrupt_records.is_empty() {
        let _ = writeln!(
            o,
            "message {} is not in the journal {}",
            h.message, h.journal
        );
        return o;
    }
    for r in &h.runs {
        let _ = writeln!(
            o,
            "message {} in run #{} ({}, {}): {}{}",
            h.message,
            r.seq,
            r.run_id.as_deref().unwrap_or("corrupt run record"),
            r.run_status.map_or("?", status),
            r.state.as_str(),
            match (&r.dest, &r.instance) {
                (Some(d), Some(i)) => format!(" ({d}, instance {i})"),
                (Some(d), None) => format!(" ({d})"),
                _ => String::new(),
            }
        );
        let _ = writeln!(
            o,
            "  queue {}, {}, hash {}",
            r.queue,
            human_bytes(r.size),
            r.hash
        );
        if r.possible_duplicate {
            let _ = writeln!(o, "  flagged: possible duplicate");
        }
        if let Some(f) = &r.remove_failed {
            let _ = writeln!(o, "  removing the local copy failed: {f}");
        }
        for rj in &r.rejected_by {
            let _ = writeln!(o, "  rejected by {}: {}", rj.dest, rj.reason);
        }
        for s in &r.history {
            let _ = writeln!(o, "  {}  {}", s.at, step(s));
        }
    }
    for c in &h.corrupt_records {
        let _ = writeln!(o, "corrupt record {}: {}", c.key, c.reason);
    }
    o
}

/// One transition in words: what happened, where, why, and the state it left.
fn step(s: &Step) -> String {
    let dest = match (s.dest.as_deref(), s.instance.as_deref()) {
        (Some(d), Some(i)) => format!("{d} (instance {i})"),
        (d, _) => d.unwrap_or("?").to_string(),
    };
    let note = s.note.as_deref().unwrap_or("");
    match s.event {
        "read" => "read (journaled from the local spool)".to_string(),
        "sent" if note.is_empty() => format!("sent to {dest}"),
        "sent" => format!("sent to {dest} ({note})"),
        "acked" => format!("acked by {dest}: {note}"),
        "deleted" => "deleted (local copy removed)".to_string(),
        "remove_failed" => format!("remove_failed, still acked: {note}"),
        "not_delivered" => format!("not_delivered by {dest}, back to read: {note}"),
        "reassigned" => format!("reassigned away from {dest}, back to read: {note}"),
        "rejected" => format!(
            "rejected (permanent) by {dest}, back to read: {}",
            note.strip_prefix("rejected: ").unwrap_or(note)
        ),
        "refused" => format!(
            "refused (transient) by {dest}, back to read: {}",
            note.strip_prefix("refused (transient): ").unwrap_or(note)
        ),
        event => format!("{event} {dest}: {note}"),
    }
}
