//! `drain spool add|ls|cat`: put a message into the spool, list it, print one back.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use anyhow::Context;

use super::args::{SpoolAddArgs, SpoolCommand};
use crate::base::{MessageId, QueueKind, Timestamp};
use crate::spool::{Header, Spool};

pub fn run(data_dir: &Path, cmd: SpoolCommand) -> anyhow::Result<i32> {
    let spool = Spool::open(data_dir)?;
    match cmd {
        SpoolCommand::Add(a) => add(&spool, data_dir, a),
        SpoolCommand::Ls(a) => ls(&spool, a.json, a.due),
        SpoolCommand::Cat { id } => {
            let id: MessageId = id.parse()?;
            let msg = spool.get(id)?;
            let mut out = std::io::stdout().lock();
            out.write_all(msg.body())?;
            out.flush()?;
            Ok(0)
        }
    }
}

fn add(spool: &Spool, data_dir: &Path, a: SpoolAddArgs) -> anyhow::Result<i32> {
    let queue: QueueKind = a.queue.parse().map_err(anyhow::Error::msg)?;
    let next_retry_at = a
        .next_retry
        .as_deref()
        .map(Timestamp::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--next-retry: {e}"))?;
    let mut properties = BTreeMap::new();
    for p in &a.properties {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("--property {p:?}: expected KEY=VALUE"))?;
        properties.insert(k.to_string(), v.to_string());
    }
    if !a.from.is_empty() {
        check_address("--from", &a.from)?;
    }
    for to in &a.to {
        check_address("--to", to)?;
    }
    let body = match &a.file {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => {
            if std::io::stdin().is_terminal() {
                anyhow::bail!(
                    "no message file given and standard input is a terminal: \
                     name the file (drain spool add ... message.eml) or pipe the message in"
                );
            }
            let mut b = Vec::new();
            std::io::stdin()
                .read_to_end(&mut b)
                .context("cannot read the body from standard input")?;
            b
        }
    };
    let header = Header {
        id: MessageId::random()?,
        queue,
        from: a.from,
        to: a.to,
        attempts: a.attempts,
        next_retry_at,
        created_at: Timestamp::now(),
        properties,
        body_len: body.len() as u64,
    };
    let msg = spool.add(&header, &body)?;
    let inst = crate::instance::Instance::open(data_dir)?;
    let event =
        crate::events::Event::new("message.spooled", &inst.id, msg.header.id, msg.header.queue);
    crate::events::EventQueue::open(data_dir)?.record(&[event])?;
    println!("{}", msg.header.id);
    Ok(0)
}

/// An envelope address as a spool header may carry it: `local@domain`, no spaces, angle
/// brackets or control characters (they would make the header ambiguous for the MTA reading it).
fn check_address(flag: &str, addr: &str) -> anyhow::Result<()> {
    let bad_char = addr
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>'));
    if let Some(c) = bad_char {
        anyhow::bail!("{flag} {addr:?}: an address may not contain {c:?}");
    }
    match addr.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => Ok(()),
        _ => anyhow::bail!(
            "{flag} {addr:?} is not an address (expected local@domain; repeat {flag} for each one)"
        ),
    }
}

/// One line per message; files that cannot be read are reported on stderr (exit 1 at the end).
/// With `due`, only messages due now, sorted by next retry time (never attempted first); the
/// due lines are held in memory to sort them.
fn ls(spool: &Spool, json: bool, due: bool) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    let mut bad = 0;
    let now = Timestamp::now();
    let mut due_lines: Vec<(Option<Timestamp>, String)> = Vec::new();
    for entry in spool.scan() {
        let msg = entry.and_then(|e| spool.read(&e));
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                eprintln!("drain: {e}");
                bad += 1;
                continue;
            }
        };
        let h = &msg.header;
        if due && h.next_retry_at.is_some_and(|t| t > now) {
            continue;
        }
        let line = if json {
            let v = serde_json::json!({
                "id": h.id,
                "queue": h.queue,
                "hash": msg.hash.to_string(),
                "size": msg.bytes.len(),
                "body_size": h.body_len,
                "next_retry_at": h.next_retry_at,
                "attempts": h.attempts,
                "from": h.from,
                "to": h.to,
                "created_at": h.created_at,
                "properties": h.properties,
            });
            v.to_string()
        } else {
            format!(
                "{} {:<11} {:>9} attempts={} next_retry={} hash={}",
                h.id,
                h.queue.as_str(),
                msg.bytes.len(),
                h.attempts,
                h.next_retry_at
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "-".into()),
                msg.hash
            )
        };
        if due {
            due_lines.push((h.next_retry_at, line));
        } else {
            writeln!(out, "{line}")?;
        }
    }
    due_lines.sort_by_key(|l| l.0);
    for (_, line) in due_lines {
        writeln!(out, "{line}")?;
    }
    Ok(if bad > 0 { 1 } else { 0 })
}
