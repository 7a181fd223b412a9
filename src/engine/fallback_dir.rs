//! The fallback data directory itself (`--fallback-path DIR`): opening and locking it, writing
//! copies into it durably, and looking a message up in it.
//!
//! Owns [`FallbackDir`] and the journal's pseudo-destination name `fallback:<DIR>`. Invariant:
//! the directory's instance lock is held for as long as this run may write to it. Uses no
//! other engine module; `run` holds one (when configured), `fallback` moves messages with it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::base::{ContentHash, MessageId};
use crate::instance::{Instance, InstanceLock};
use crate::spool::{Message, Spool, SpoolError};

/// Prefix of the journal's pseudo-destination for the fallback path.
pub const PREFIX: &str = "fallback:";

/// An open fallback data directory (locked while this run may write to it).
pub struct FallbackDir {
    pub dir: PathBuf,
    /// When the remaining messages go there instead of to the destinations.
    pub due: Instant,
    /// The pseudo-destination the journal records (`fallback:<DIR>`).
    pub name: String,
    spool: Spool,
    _lock: InstanceLock,
}

impl FallbackDir {
    /// Opens (creating) DIR as a data directory and takes its lock.
    pub fn open(dir: &Path, due: Instant) -> anyhow::Result<FallbackDir> {
        crate::base::durable::create_private_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("--fallback-path {e}"))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| anyhow::anyhow!("--fallback-path {}: {e}", dir.display()))?;
        let inst = Instance::open(&dir)?;
        let lock = inst.try_lock("drain, writing its fallback")?;
        Ok(FallbackDir {
            name: format!("{PREFIX}{}", dir.display()),
            spool: Spool::open(&dir)?,
            dir,
            due,
            _lock: lock,
        })
    }

    /// Writes copies durably (fsync) into the directory's spool, each with its own outcome
    /// (in `msgs`' order): a copy the directory refuses names its own file. The error is the
    /// copying task failing (the run ends).
    pub async fn store(&self, msgs: Vec<Message>) -> anyhow::Result<Vec<Result<(), SpoolError>>> {
        let spool = self.spool.clone();
        Ok(tokio::task::spawn_blocking(move || spool.store_each(&msgs)).await?)
    }

    /// True when `dir` names this directory (however it is spelled).
    pub fn is(&self, dir: &Path) -> bool {
        dir.canonicalize().is_ok_and(|d| d == self.dir)
    }

    /// True when the directory holds message `id` with content `hash`.
    pub fn holds(&self, id: MessageId, hash: &ContentHash) -> bool {
        self.spool
            .find(id)
            .and_then(|e| self.spool.read(&e).ok())
            .is_some_and(|m| m.hash == *hash)
    }
}
