//! After a transfer's copies are staged: commit their dedupe keys, publish the copies, hold
//! back what cannot be published yet, and drop keys (a run's finish, the retention's expiry)
//! only when no copy still needs them.
//!
//! Invariant: a staged copy is published again after a crash only if its key is durable, so
//! a key is never dropped while its copy is held back (unpublished) or while the rename that
//! published it may still be undone by a power cut. Part of `store`; called by its transfer
//! path and by the handler (finish) and serve (expiry).

use super::{Store, StoreError, Write, lock};
use crate::base::Timestamp;
use crate::intake::staging::{self, Staging};

impl Store {
    /// Forgets the dedupe keys of a finished run. Refused while copies of that run wait to be
    /// published: their keys are what publishes them at the next start, so they stay.
    pub async fn forget_run(&self, sender: &str, run: &str) -> Result<(), StoreError> {
        self.retry_unpublished().await;
        let waiting: usize = lock(&self.unpublished)
            .iter()
            .flat_map(|s| &s.entries)
            .filter(|e| e.sender == sender && e.run == run)
            .count();
        if waiting > 0 {
            return Err(StoreError::Unpublished(waiting));
        }
        self.sync_published().await?;
        self.committer
            .submit(Write::ForgetRun {
                sender: sender.to_string(),
                run: run.to_string(),
            })
            .await
            .map_err(|e| self.db_err(e))
    }

    /// Drops dedupe keys older than `retention`.
    pub async fn expire(&self, retention: std::time::Duration) -> Result<(), StoreError> {
        // Checked: a retention reaching before year -9999 keeps everything, never panics.
        let cutoff = time::OffsetDateTime::now_utc()
            .checked_sub(time::Duration::try_from(retention).unwrap_or(time::Duration::MAX))
            .unwrap_or(time::PrimitiveDateTime::MIN.assume_utc());
        self.sync_published().await?;
        self.committer
            .submit(Write::ExpireBefore(Timestamp(cutoff)))
            .await
            .map_err(|e| self.db_err(e))
    }

    /// Commits a transfer's dedupe records (group commit), then records its events and
    /// publishes its copies (see `staging`). A copy found held without its record gets an
    /// event too (its own may have been lost with the record: at least one per message).
    /// If the commit fails, the copies stay staged without records (the next start removes
    /// them); if publishing fails, they wait in `unpublished`, their ids still claimed.
    pub(super) async fn commit_then_publish(&self, staging: Staging) -> Result<(), StoreError> {
        if staging.entries.is_empty() {
            return Ok(());
        }
        self.committer
            .submit(Write::Insert(staging.entries.clone()))
            .await
            .map_err(|e| self.db_err(e))?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let done = staging::publish(
                &this.spool,
                &this.events,
                &this.instance,
                &staging.entries,
                &staging.staged,
            );
            if done.is_err() {
                lock(&this.unpublished).push(staging);
            }
            done
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    /// Makes every publishing rename so far durable (one fsync per queue directory). A key is
    /// what publishes its staged copy again after a crash, so no key is dropped (a finish, an
    /// expiry) before the rename it stands for is on disk: a finish follows its run's last
    /// answers at once, before any later transfer's sync could carry their renames.
    async fn sync_published(&self) -> Result<(), StoreError> {
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || spool.sync_queue_dirs())
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))?
            .map_err(StoreError::from)
    }

    /// Publishes what an earlier failure left unpublished, if anything; what fails again
    /// waits for the next request (or the next start).
    pub(super) async fn retry_unpublished(&self) {
        let waiting = std::mem::take(&mut *lock(&self.unpublished));
        if waiting.is_empty() {
            return;
        }
        let this = self.clone();
        let retried = tokio::task::spawn_blocking(move || {
            for staging in waiting {
                let (entries, staged) = (&staging.entries, &staging.staged);
                match staging::publish(&this.spool, &this.events, &this.instance, entries, staged) {
                    Ok(()) => tracing::info!("published {} copies held back", staged.len()),
                    Err(e) => {
                        tracing::warn!("copies held back still cannot be published: {e}");
                        lock(&this.unpublished).push(staging);
                    }
                }
            }
        })
        .await;
        if let Err(e) = retried {
            tracing::warn!("publishing copies held back failed: {e}");
        }
    }
}
