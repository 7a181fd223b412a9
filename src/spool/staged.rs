//! Staged copies: messages a receiver has written durably but cannot answer for yet.
//!
//! ```text
//! spool/<queue-kind>/.<id>.<sender>.<run>.staged    a received copy, not yet a message
//! ```
//!
//! A mail server takes every `<id>.msg` it finds, so a received copy must not carry that name
//! before the receiver's dedupe record for it is durable: a transfer failing in between would
//! leave a copy that is delivered and then sent again (the record is what tells the sender it
//! was taken). The intake therefore stages each copy under this name (which no reader takes
//! and the scan skips), fsyncs it and its directory, commits the record, and only then renames
//! it to `<id>.msg`. The rename stays in one directory, so a power cut leaves one name or the
//! other, never both; the staged name alone is settled at the next start (`intake::staging`):
//! published if the record for (sender, run, content hash) is durable, removed if not (the
//! sender was never answered and sends it again).
//!
//! Called by the intake (stage, publish, settle) and, through the intake's settle, by a drain
//! starting on an instance whose `drain serve` stopped mid-transfer.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::{Message, Spool, SpoolError, sync_dir};
use crate::base::{MessageId, QueueKind};

const SUFFIX: &str = ".staged";

/// One staged copy, named by what settles it: the message and the (sender, run) that sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Staged {
    pub queue: QueueKind,
    pub id: MessageId,
    /// The sending instance's id (32 lowercase hex digits).
    pub sender: String,
    /// The sending run's id (32 lowercase hex digits).
    pub run: String,
    pub path: PathBuf,
}

/// Sender and run ids are 32 lowercase hex digits (as the wire admits them), so a staged
/// name splits back into its parts without ambiguity.
fn token(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The (id, sender, run) a staged file name carries, if it is one.
pub(super) fn parse_name(name: &str) -> Option<(MessageId, String, String)> {
    let inner = name.strip_prefix('.')?.strip_suffix(SUFFIX)?;
    let mut parts = inner.split('.');
    let (id, sender, run) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !token(sender) || !token(run) {
        return None;
    }
    Some((id.parse().ok()?, sender.to_string(), run.to_string()))
}

impl Spool {
    fn staged_path(&self, queue: QueueKind, id: MessageId, sender: &str, run: &str) -> PathBuf {
        self.queue_dir(queue)
            .join(format!(".{id}.{sender}.{run}{SUFFIX}"))
    }

    /// Writes each message durably under its staged name for (sender, run): temp file, fsync,
    /// rename, then one fsync per queue directory touched; or, in [`super::SyncMode::Filesystem`],
    /// temp file, rename, one `syncfs` for them all (a staged name durable before its content
    /// is torn, and settled as never answered). A staged copy of the same name (an earlier
    /// attempt) is replaced. One outcome per message, as [`Spool::store_each`].
    pub fn stage_each(
        &self,
        msgs: &[Message],
        sender: &str,
        run: &str,
    ) -> Vec<Result<Staged, SpoolError>> {
        if !token(sender) || !token(run) {
            let why = || io::Error::other(format!("sender {sender:?} / run {run:?}: not ids"));
            return msgs
                .iter()
                .map(|m| {
                    Err(SpoolError::io(
                        self.path_of(m.header.queue, m.header.id),
                        why(),
                    ))
                })
                .collect();
        }
        let path = |m: &Message| self.staged_path(m.header.queue, m.header.id, sender, run);
        self.write_each(msgs, path)
            .into_iter()
            .zip(msgs)
            .map(|(r, m)| {
                r.map(|path| Staged {
                    queue: m.header.queue,
                    id: m.header.id,
                    sender: sender.to_string(),
                    run: run.to_string(),
                    path,
                })
            })
            .collect()
    }

    /// Gives a staged copy its message name, `<id>.msg`, in the same directory. Not synced
    /// here: a power cut that loses the rename brings back the staged name, which the next
    /// start publishes again (its record is durable); the next fsync of the directory (the
    /// next transfer's, or [`Spool::sync_queue_dirs`]) makes it durable.
    ///
    /// Never over another message: under the intake's claims (or the instance lock, at a
    /// start) nothing else stores this id, so a message already named so is this same copy
    /// published earlier (the staged one is dropped) or a different message (an
    /// [`SpoolError::IdConflict`]; the staged copy stays). A staged copy already gone was
    /// published by an earlier call.
    pub fn publish(&self, staged: &Staged) -> Result<(), SpoolError> {
        if !staged.path.exists() {
            return Ok(());
        }
        let Some(existing) = self.find(staged.id) else {
            let dest = self.path_of(staged.queue, staged.id);
            return fs::rename(&staged.path, &dest).map_err(|e| SpoolError::io(&staged.path, e));
        };
        if self.read(&existing)?.hash == self.read_staged(staged)?.hash {
            return fs::remove_file(&staged.path).map_err(|e| SpoolError::io(&staged.path, e));
        }
        Err(SpoolError::IdConflict {
            path: staged.path.clone(),
            id: staged.id,
            other: existing.path,
        })
    }

    /// Removes staged copies nobody answered for, durably (each directory fsynced once).
    pub fn discard(&self, staged: &[Staged]) -> Result<(), SpoolError> {
        for s in staged {
            match fs::remove_file(&s.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SpoolError::io(&s.path, e)),
            }
        }
        for q in QueueKind::ALL {
            if staged.iter().any(|s| s.queue == q) {
                sync_dir(&self.queue_dir(q))?;
            }
        }
        Ok(())
    }

    /// Reads a staged copy (checked as a spool file; its name must match its header).
    pub fn read_staged(&self, staged: &Staged) -> Result<Message, SpoolError> {
        let entry = super::Entry {
            queue: staged.queue,
            id: staged.id,
            path: staged.path.clone(),
        };
        self.read(&entry)
    }

    /// Every staged copy in the spool. Reads each queue directory's names once.
    pub fn staged(&self) -> Result<Vec<Staged>, SpoolError> {
        let mut found = Vec::new();
        for queue in QueueKind::ALL {
            let dir = self.queue_dir(queue);
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SpoolError::io(dir, e)),
            };
            for de in rd {
                let de = de.map_err(|e| SpoolError::io(&dir, e))?;
                let name = de.file_name();
                let Some((id, sender, run)) = name.to_str().and_then(parse_name) else {
                    continue;
                };
                found.push(Staged {
                    queue,
                    id,
                    sender,
                    run,
                    path: de.path(),
                });
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_spool(tag: &str) -> (PathBuf, Spool) {
        let dir = std::env::temp_dir().join(format!(
            "drain-staged-{tag}-{}",
            MessageId::random().unwrap()
        ));
        let spool = Spool::open(&dir).unwrap();
        (dir, spool)
    }

    fn message(body: &[u8]) -> Message {
        crate::spool::test_message(QueueKind::BounceLite, body)
    }

    #[test]
    fn a_staged_copy_is_no_message_until_published() {
        for mode in [
            crate::spool::SyncMode::File,
            crate::spool::SyncMode::Filesystem,
        ] {
            staged_then_published(mode);
        }
    }

    fn staged_then_published(mode: crate::spool::SyncMode) {
        let (dir, spool) = temp_spool(mode.as_str());
        let spool = spool.with_sync(mode);
        let msg = message(b"hello");
        let (sender, run) = ("a".repeat(32), "0123456789abcdef".repeat(2));
        let staged: Vec<Staged> = spool
            .stage_each(std::slice::from_ref(&msg), &sender, &run)
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(staged.len(), 1);
        assert_eq!(spool.staged().unwrap(), staged);
        assert_eq!(spool.scan().count(), 0, "the scan skips a staged copy");
        assert!(spool.find(msg.header.id).is_none());
        assert_eq!(spool.read_staged(&staged[0]).unwrap().hash, msg.hash);

        spool.publish(&staged[0]).unwrap();
        assert!(spool.staged().unwrap().is_empty());
        assert_eq!(spool.get(msg.header.id).unwrap().hash, msg.hash);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn publishing_never_replaces_another_message() {
        let (dir, spool) = temp_spool("noreplace");
        let held = message(b"held");
        let (sender, run) = ("a".repeat(32), "b".repeat(32));
        spool.store_many(std::slice::from_ref(&held)).unwrap();
        // The same message staged again: dropped, the message stays.
        let same = spool.stage_each(std::slice::from_ref(&held), &sender, &run);
        let same = same.into_iter().next().unwrap().unwrap();
        spool.publish(&same).unwrap();
        assert!(!same.path.exists());
        assert_eq!(spool.get(held.header.id).unwrap().hash, held.hash);
        // Another message under that id: refused, both stay.
        let mut other = message(b"other");
        let mut header = other.header.clone();
        header.id = held.header.id;
        let bytes = crate::spool::format::encode(&header, b"other").unwrap();
        other = Message::from_bytes(bytes.into()).unwrap();
        let staged = spool.stage_each(std::slice::from_ref(&other), &sender, &run);
        let staged = staged.into_iter().next().unwrap().unwrap();
        assert!(matches!(
            spool.publish(&staged),
            Err(SpoolError::IdConflict { .. })
        ));
        assert!(staged.path.exists());
        assert_eq!(spool.get(held.header.id).unwrap().hash, held.hash);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_well_formed_staged_names_parse() {
        let id = "0123456789abcdef0123456789abcdef";
        let (s, r) = ("b".repeat(32), "c".repeat(32));
        assert!(parse_name(&format!(".{id}.{s}.{r}.staged")).is_some());
        for bad in [
            format!("{id}.{s}.{r}.staged"),
            format!(".{id}.{s}.{r}.staged.tmp"),
            format!(".{id}.{s}.staged"),
            format!(".{id}.{s}.{r}.x.staged"),
            format!(".{id}.{}.{r}.staged", "B".repeat(32)),
            format!(".{id}.../{r}.staged"),
        ] {
            assert!(parse_name(&bad).is_none(), "{bad}");
        }
    }
}
