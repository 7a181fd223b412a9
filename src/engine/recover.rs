//! `drain recover`: settles an unfinished run whose journal was lost or damaged.
//!
//! The run's marker (`journal::RunMarker`) names the sender, the run and its destinations.
//! Recovery asks every one of those destinations, under that run's identity, about every
//! message still in the spool (by id and hash), removes the local copies any of them holds,
//! and clears the marker; what no destination holds stays in the spool for the next drain.
//! Behind a balancer no instance is known without the journal, so each destination is asked
//! on fresh connections until its answers come only from instances already heard from.
//! A damaged journal is kept aside (`journal.redb.damaged-<unix time>`), never deleted.
//!
//! Invariant: the marker is cleared only after every destination has answered for every
//! message; if one cannot be asked, nothing more is decided and the command can be run again
//! (removing a copy a destination holds is idempotent). Holds the instance lock throughout.
//! Uses `client` and `failure`; called by the CLI (`drain recover`).

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use super::client::{Client, QueryError};
use crate::base::{ContentHash, Destination, backoff};
use crate::instance::Instance;
use crate::journal::{self, MarkedRun, RunMarker};
use crate::spool::{Entry, Spool};

/// Queries per destination before recovery gives up on it for this invocation.
const ATTEMPTS: u32 = 6;

/// What `drain recover` needs besides the data directory.
#[derive(Clone, Debug, Default)]
pub struct RecoverOptions {
    pub data_dir: PathBuf,
    pub ca_cert: Option<PathBuf>,
    pub bind_ip: Option<IpAddr>,
    /// The client certificate the run used (destinations with `--client-ca` need it).
    pub client_identity: Option<crate::tls::ClientIdentity>,
}

/// What recovery did (printed as text, or JSON with `--json`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Recovered {
    pub exit_code: i32,
    pub outcome: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub run_id: String,
    pub destinations: Vec<String>,
    /// Messages in the spool that were asked about.
    pub asked: u64,
    /// Of those, held by each destination (local copies removed).
    pub held: BTreeMap<String, u64>,
    pub removed: u64,
    /// Held by no destination: still in the spool, for the next drain.
    pub remaining: u64,
    /// Files that could not be read (asked about by nobody; left in place).
    pub unreadable: Vec<String>,
    /// Where a damaged journal was moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal_kept_as: Option<String>,
}

impl Recovered {
    pub fn render(&self, json: bool) -> Result<String, serde_json::Error> {
        if json {
            return Ok(format!("{}\n", serde_json::to_string(self)?));
        }
        let mut s = format!(
            "drain recover: {} (exit {})\n",
            self.outcome, self.exit_code
        );
        if self.run_id.is_empty() {
            return Ok(s);
        }
        s += &format!(
            "  run {}: asked {} about {} messages\n",
            self.run_id,
            self.destinations.join(", "),
            self.asked
        );
        for (d, n) in &self.held {
            s += &format!("  {d} already holds {n}: local copies removed\n");
        }
        s += &format!(
            "  {} messages are held by no destination and stay in the spool: drain them again\n",
            self.remaining
        );
        for u in &self.unreadable {
            s += &format!("  could not be read (left in place): {u}\n");
        }
        if let Some(j) = &self.journal_kept_as {
            s += &format!("  the damaged journal is kept as {j}\n");
        }
        Ok(s)
    }
}

/// Runs `drain recover` to its end.
pub fn recover(opts: RecoverOptions) -> anyhow::Result<Recovered> {
    let inst = Instance::open(&opts.data_dir)?;
    let _lock = inst.try_lock("drain recover")?;
    let Some(marker) = journal::read_marker(&opts.data_dir)? else {
        return Ok(Recovered {
            outcome: format!(
                "nothing to recover: no unfinished drain run is marked in {}",
                opts.data_dir.display()
            ),
            ..Recovered::default()
        });
    };
    let journal_kept_as = match check_journal(&opts.data_dir, &marker)? {
        JournalState::Settled => {
            journal::clear_marker(&opts.data_dir)?;
            return Ok(Recovered {
                outcome: format!("nothing to recover: run {} is finished", marker.run_id),
                ..Recovered::default()
            });
        }
        JournalState::Lost(kept) => kept,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut out = rt.block_on(ask_all(&opts, &marker))?;
    out.journal_kept_as = journal_kept_as.map(|p| p.display().to_string());
    if out.exit_code == 0 {
        journal::clear_marker(&opts.data_dir)?;
    }
    Ok(out)
}

enum JournalState {
    /// The journal knows the run as finished: the marker is stale.
    Settled,
    /// The journal does not know the run (missing, replaced, or damaged and moved here).
    Lost(Option<PathBuf>),
}

fn check_journal(data_dir: &Path, m: &RunMarker) -> anyhow::Result<JournalState> {
    match journal::last_run_status(data_dir) {
        Ok(last) => match m.against(last.as_ref()) {
            MarkedRun::Finished => Ok(JournalState::Settled),
            MarkedRun::Unfinished => anyhow::bail!(
                "the journal knows drain run {} (#{}): nothing was lost; finish it with \
                 `drain --data-dir {} resume`",
                m.run_id,
                m.run_seq,
                data_dir.display()
            ),
            MarkedRun::Lost => Ok(JournalState::Lost(None)),
        },
        Err(e) => {
            let path = journal::file_path(data_dir);
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            let kept = path.with_file_name(format!("journal.redb.damaged-{secs}"));
            tracing::warn!(
                "the journal cannot be read ({e}); keeping it as {}",
                kept.display()
            );
            std::fs::rename(&path, &kept)
                .with_context(|| format!("cannot move {} aside", path.display()))?;
            crate::base::durable::sync_dir(data_dir)?;
            Ok(JournalState::Lost(Some(kept)))
        }
    }
}

/// Asks every destination of the marked run about every message in the spool.
async fn ask_all(opts: &RecoverOptions, m: &RunMarker) -> anyhow::Result<Recovered> {
    let dests: Vec<Destination> = m
        .destinations
        .iter()
        .map(|d| Destination::parse(d).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()
        .context("the destinations in the run marker")?;
    let client = Client::new(
        opts.bind_ip,
        opts.ca_cert.as_deref(),
        opts.client_identity.as_ref(),
        &m.sender,
        &m.run_id,
        4,
    )?;
    let spool = Spool::open(&opts.data_dir)?;
    let mut out = Recovered {
        run_id: m.run_id.clone(),
        destinations: m.destinations.clone(),
        ..Recovered::default()
    };
    let mut batch: Vec<(Entry, ContentHash)> = Vec::new();
    for entry in spool.scan() {
        let read = entry.and_then(|e| spool.read(&e).map(|msg| (e, msg.hash)));
        match read {
            Ok(item) => batch.push(item),
            Err(e) => out.unreadable.push(e.to_string()),
        }
        if batch.len() < crate::wire::MAX_QUERY {
            continue;
        }
        let full = std::mem::take(&mut batch);
        if let Err(why) = settle(&client, &dests, &spool, full, &mut out).await {
            return Ok(gave_up(out, why));
        }
    }
    if let Err(why) = settle(&client, &dests, &spool, batch, &mut out).await {
        return Ok(gave_up(out, why));
    }
    for d in &dests {
        // The run is over for the destinations too (best effort: their keys also expire).
        let _ = client.finish(d).await;
    }
    out.outcome = "recovered: the run is settled".to_string();
    Ok(out)
}

fn gave_up(mut out: Recovered, why: String) -> Recovered {
    out.exit_code = 12;
    out.outcome = format!(
        "{why}; nothing else was decided and the run stays marked: run `drain recover` again \
         when it answers"
    );
    out
}

/// One batch: every destination's answer, then the local copies that any of them holds are
/// removed. `Err` names a destination that could not be asked.
async fn settle(
    client: &Client,
    dests: &[Destination],
    spool: &Spool,
    batch: Vec<(Entry, ContentHash)>,
    out: &mut Recovered,
) -> Result<(), String> {
    if batch.is_empty() {
        return Ok(());
    }
    out.asked += batch.len() as u64;
    let asked: Vec<_> = batch.iter().map(|(e, h)| (e.id, *h)).collect();
    let mut held_by: Vec<Option<&Destination>> = vec![None; batch.len()];
    for d in dests {
        let held = ask(client, d, &asked).await?;
        for (i, (_, h)) in batch.iter().enumerate() {
            if held.contains(h) && held_by[i].is_none() {
                held_by[i] = Some(d);
            }
        }
    }
    let mut remove = Vec::new();
    for ((entry, _), by) in batch.into_iter().zip(held_by) {
        match by {
            Some(d) => {
                *out.held.entry(d.to_string()).or_default() += 1;
                remove.push(entry);
            }
            None => out.remaining += 1,
        }
    }
    for (entry, r) in remove.iter().zip(spool.remove_many(&remove)) {
        match r {
            Ok(()) => out.removed += 1,
            Err(e) => return Err(format!("cannot remove {}: {e}", entry.path.display())),
        }
    }
    Ok(())
}

/// Answers in a row from instances already seen before a destination counts as fully asked.
const QUIET_ASKS: u32 = 8;
/// Most asks of one destination for one batch.
const MAX_ASKS: u32 = 64;

/// What the instances behind `d` hold. No journal, so no instance is known: `d` may be a
/// balancer, and a "not held" is true only of the instance that answered. So `d` is asked
/// again on fresh connections (each may reach another instance) until [`QUIET_ASKS`] answers
/// in a row came from instances already seen (or one came from a server that names no
/// instance: a single one); the union of their answers counts.
async fn ask(
    client: &Client,
    d: &Destination,
    asked: &[(crate::base::MessageId, ContentHash)],
) -> Result<HashSet<ContentHash>, String> {
    let name = d.to_string();
    let mut held = HashSet::new();
    let mut quiet = 0;
    for _ in 0..MAX_ASKS {
        let before = client.instances.of(&name).len();
        held.extend(ask_once(client, d, asked).await?);
        let seen = client.instances.of(&name).len();
        if seen == 0 {
            break;
        }
        quiet = if seen > before { 0 } else { quiet + 1 };
        if quiet >= QUIET_ASKS {
            break;
        }
    }
    Ok(held)
}

/// One answer from `d`, with a few retries; a destination that refuses this sender
/// altogether holds nothing of the run.
async fn ask_once(
    client: &Client,
    d: &Destination,
    asked: &[(crate::base::MessageId, ContentHash)],
) -> Result<HashSet<ContentHash>, String> {
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        match client.query_fresh(d, asked).await {
            Ok(held) => return Ok(held.into_iter().collect()),
            Err(QueryError::Refused(f)) => {
                tracing::warn!(dest = %d, "{d} refuses this sender ({f}): it holds none of the run's messages");
                return Ok(HashSet::new());
            }
            Err(QueryError::Unavailable(f) | QueryError::Misdirected(f)) => {
                tracing::warn!(dest = %d, "cannot ask {d} (attempt {}): {f}", attempt + 1);
                last = f.to_string();
            }
        }
    }
    Err(format!("cannot ask {d}: {last}"))
}
