//! Messages in doubt never hold up the others (issue 9, point 5): a destination that took a
//! request and then went dark pins that request's messages, and everything else keeps flowing
//! to the healthy destination, even with a single worker.

mod common;

use std::time::{Duration, Instant};

use common::proxy::{AnswerDropProxy, Verdict};
use common::*;

#[test]
fn a_dark_destination_pins_only_its_messages_and_the_rest_flows_elsewhere() {
    let tmp = TempDir::new("beside");
    let a = Server::start_with_names(
        &tmp,
        "a",
        ServeConfig::on("127.0.0.75"),
        &["127.0.0.75", "127.0.0.76"],
    );
    let b = Server::start(&tmp, "b", ServeConfig::on("127.0.0.77"));
    // The first transfer through the proxy reaches A, then the proxy goes dark: A holds those
    // messages but can never be asked.
    let proxy = AnswerDropProxy::start("127.0.0.76", &a, |_| Verdict::CutAndGoDark);
    let src = tmp.sub("src");
    let originals = fill(&src, 60);
    let ca = ca_bundle(&tmp, &[&a, &b]);
    // One worker (4 in flight, 4 per request): before, it settled in place and stopped all.
    let args = [
        "--ca-cert",
        ca.to_str().unwrap(),
        "--concurrency",
        "4",
        "--batch-size",
        "4",
        "--json",
        &proxy.dest(),
        &b.dest(),
    ];
    let (child, lines) = spawn_watched(&src, &args);
    let deadline = Instant::now() + Duration::from_secs(120);
    // The cut request carries what the scan had ready when it was taken: up to 4 messages.
    let mut pinned_n;
    loop {
        let on_b = b.ls().len();
        pinned_n = proxy.stored_but_unanswered().len();
        if proxy.is_dark() && pinned_n > 0 && on_b + pinned_n == originals.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B has {on_b} of {}: the rest stalled",
            originals.len() - pinned_n
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let seen: Vec<String> = lines.try_iter().collect();
    assert_eq!(out.status.code(), Some(42), "{seen:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["in_doubt"], pinned_n, "{report}");
    // The pinned ones are on A and still in the spool (in doubt, for `drain resume`).
    let pinned: Vec<String> = spool_ls(&src).into_iter().map(|e| e.id).collect();
    assert_eq!(pinned.len(), pinned_n);
    let on_a: Vec<String> = a.ls().into_iter().map(|e| e.id).collect();
    assert_eq!(on_a, pinned);
    let all = census(&[&a, &b]);
    for (id, (_, hash)) in &originals {
        assert_eq!(&all[id].1.hash, hash, "{id}");
    }
}
