//! Spools: filling them (through the binary or the same library code), listing them with
//! `drain spool ls --json`, and messages and transfer bodies built in memory.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{code, drain, show};

/// One line of `drain spool ls --json`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct LsEntry {
    pub id: String,
    pub queue: String,
    pub hash: String,
    pub size: u64,
    pub next_retry_at: Option<String>,
    pub attempts: u32,
}

pub fn spool_ls(dir: &Path) -> Vec<LsEntry> {
    let o = drain(dir, &["spool", "ls", "--json"]);
    let text = String::from_utf8_lossy(&o.stdout);
    text.lines()
        .map(|l| serde_json::from_str(l).expect("ls line is JSON"))
        .collect()
}

/// Adds a message through the real binary; returns its id.
pub fn spool_add(
    dir: &Path,
    queue: &str,
    attempts: u32,
    next_retry: Option<&str>,
    body: &[u8],
) -> String {
    let tmp = dir.join(".body");
    std::fs::write(&tmp, body).expect("write body");
    let mut args = vec![
        "spool",
        "add",
        "--queue",
        queue,
        "--from",
        "a@example.com",
        "--to",
        "b@example.net",
        "--to",
        "c@example.org",
    ];
    let attempts = attempts.to_string();
    args.extend(["--attempts", &attempts]);
    if let Some(t) = next_retry {
        args.extend(["--next-retry", t]);
    }
    let path = tmp.to_string_lossy().into_owned();
    args.push(&path);
    let o = drain(dir, &args);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let _ = std::fs::remove_file(&tmp);
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Fills a spool quickly through the library (the same code `spool add` uses).
pub fn fill(dir: &Path, n: usize) -> BTreeMap<String, (String, String)> {
    drain::demo::fill(dir, n)
        .expect("fill")
        .into_iter()
        .map(|(id, (q, h, _))| (id.to_string(), (q.to_string(), h.to_string())))
        .collect()
}

/// A spool file built in memory (for speaking the wire protocol directly).
pub fn message(queue: drain::base::QueueKind, attempts: u32, body: &[u8]) -> drain::spool::Message {
    use drain::base::{MessageId, Timestamp};
    use drain::spool::{Header, Message};
    let h = Header {
        id: MessageId::random().expect("id"),
        queue,
        from: "a@example.com".into(),
        to: vec!["b@example.net".into()],
        attempts,
        next_retry_at: Some(Timestamp::parse("2031-01-01T00:00:00Z").expect("time")),
        created_at: Timestamp::now(),
        properties: BTreeMap::new(),
        body_len: 0,
    };
    let bytes = drain::spool::format::encode(&h, body).expect("encode");
    Message::from_bytes(bytes.into()).expect("parse")
}

/// A transfer body of `(message, hash to claim)` frames.
pub fn batch(msgs: &[(&drain::spool::Message, drain::base::ContentHash)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (m, h) in msgs {
        drain::wire::put_frame_header(&mut b, h, m.bytes.len() as u64);
        b.extend_from_slice(&m.bytes);
    }
    b
}
