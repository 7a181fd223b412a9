//! Group commit for redb: one writer thread per database folds every queued request into one
//! write transaction and one commit (one fsync), then answers each request.
//!
//! Used by the journal (sender side) and the intake's dedupe store (receiver side), so that
//! throughput grows with concurrency instead of paying one fsync per message. Invariants:
//! - a request is answered `Ok` only after the commit holding it returned (it is durable);
//! - requests are applied in the order they were submitted (`submit` queues at call time);
//! - if applying a group fails, nothing of it is committed and every request in it gets the
//!   same error (the caller's typed `E`, hence `E: Clone`), unrelated requests included.
//!
//! Also here, for the same two databases: [`create_or_open`], which never leaves a half-created
//! file behind a crash.

use std::future::Future;
use std::sync::Arc;
use std::sync::mpsc;

use redb::{Database, WriteTransaction};
use tokio::sync::oneshot;

/// Opens the redb database at `path`, creating it first if it does not exist. A new database
/// is built under `<path>.new`, made durable, and only then renamed into place (and the
/// directory synced), so a SIGKILL or power loss while creating it leaves either no file or a
/// whole one, never a file redb cannot open (found by the kill harness: "Not a redb database:
/// magic number mismatch" after a kill during the first open).
pub fn create_or_open(
    path: &std::path::Path,
    builder: &redb::Builder,
) -> Result<Database, redb::Error> {
    if !path.exists() {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".new");
        let tmp = std::path::PathBuf::from(tmp);
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        // Created empty by us, owner only (redb would create it with the umask's mode); redb
        // initialises an empty file.
        drop(crate::base::durable::create_private_file(&tmp)?);
        builder.create(&tmp)?.close()?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        crate::base::sync_dir(dir).map_err(|e| redb::Error::Io(e.source))?;
    }
    Ok(builder.create(path)?)
}

/// Why a request was not committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError<E> {
    /// Applying its group failed (this request or another of the group); nothing of the group
    /// was committed.
    #[error("{0}")]
    Apply(E),
    /// redb could not begin or commit the group's write transaction.
    #[error("{0}")]
    Db(Arc<redb::Error>),
    /// The writer thread has stopped (closed, or gone): the request was not applied.
    #[error("the writer thread has stopped")]
    Stopped,
}

impl<E: Clone> Clone for CommitError<E> {
    fn clone(&self) -> Self {
        match self {
            CommitError::Apply(e) => CommitError::Apply(e.clone()),
            CommitError::Db(e) => CommitError::Db(e.clone()),
            CommitError::Stopped => CommitError::Stopped,
        }
    }
}

type Reply<E> = oneshot::Sender<Result<(), CommitError<E>>>;

/// Most requests folded into one commit.
const MAX_GROUP: usize = 4096;

enum Msg<T, E> {
    Item(T, Reply<E>),
    /// Stop the thread (after everything queued before it), releasing its database handle.
    Close,
}

/// A handle to a group-commit writer thread; cheap to clone. `T` is one request, `E` the
/// error the apply function returns.
pub struct Committer<T, E> {
    tx: mpsc::Sender<Msg<T, E>>,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl<T, E> Clone for Committer<T, E> {
    fn clone(&self) -> Self {
        Committer {
            tx: self.tx.clone(),
            thread: self.thread.clone(),
        }
    }
}

impl<T: Send + 'static, E: Clone + Send + 'static> Committer<T, E> {
    /// Starts the writer thread. `apply` writes one group inside the transaction it is given;
    /// an error aborts the transaction.
    pub fn spawn<F>(name: &str, db: Arc<Database>, apply: F) -> std::io::Result<Self>
    where
        F: Fn(&WriteTransaction, &[T]) -> Result<(), E> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Msg<T, E>>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || writer_loop(&db, &rx, &apply))?;
        Ok(Committer {
            tx,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
        })
    }

    /// Stops the writer thread once everything queued is committed, and waits for it, so the
    /// database can be closed cleanly (a redb file left open at exit needs a repair on its
    /// next open). Later submissions fail with `Stopped`.
    pub fn close(&self) {
        let _ = self.tx.send(Msg::Close);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Queues `item` now (before the returned future is polled, so submission order is call
    /// order) and resolves once it is committed durably, or with its group's error.
    pub fn submit(
        &self,
        item: T,
    ) -> impl Future<Output = Result<(), CommitError<E>>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let queued = self.tx.send(Msg::Item(item, reply)).is_ok();
        async move {
            if !queued {
                return Err(CommitError::Stopped);
            }
            rx.await.unwrap_or(Err(CommitError::Stopped))
        }
    }
}

/// The writer thread: takes the first waiting request and every one queued behind it (up to
/// `MAX_GROUP`), applies and commits them at once, answers each; until closed.
fn writer_loop<T, E: Clone, F>(db: &Database, rx: &mpsc::Receiver<Msg<T, E>>, apply: &F)
where
    F: Fn(&WriteTransaction, &[T]) -> Result<(), E>,
{
    let mut closing = false;
    while !closing {
        let (first, reply) = match rx.recv() {
            Ok(Msg::Item(item, reply)) => (item, reply),
            Ok(Msg::Close) | Err(_) => break,
        };
        let mut items = vec![first];
        let mut replies = vec![reply];
        while items.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(Msg::Item(item, reply)) => {
                    items.push(item);
                    replies.push(reply);
                }
                Ok(Msg::Close) => {
                    closing = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let result = commit_group(db, &items, apply);
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }
}

fn commit_group<T, E, F>(db: &Database, items: &[T], apply: &F) -> Result<(), CommitError<E>>
where
    F: Fn(&WriteTransaction, &[T]) -> Result<(), E>,
{
    let db_err = |e: redb::Error| CommitError::Db(Arc::new(e));
    let txn = db.begin_write().map_err(|e| db_err(e.into()))?;
    match apply(&txn, items) {
        Ok(()) => txn.commit().map_err(|e| db_err(e.into())),
        Err(e) => {
            let _ = txn.abort();
            Err(CommitError::Apply(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};

    /// A crash during creation leaves at most `<path>.new` (garbage, say); the next open
    /// builds the database afresh and never sees it.
    #[test]
    fn a_half_created_database_is_never_opened() {
        let dir = std::env::temp_dir().join(format!("drain-gc-create-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.redb");
        std::fs::write(dir.join("x.redb.new"), b"not a database").unwrap();
        let db = create_or_open(&path, &redb::Builder::new()).unwrap();
        drop(db);
        assert!(path.exists() && !dir.join("x.redb.new").exists());
        // An existing database is opened as it is.
        create_or_open(&path, &redb::Builder::new()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const T: TableDefinition<u32, u32> = TableDefinition::new("t");

    /// A request: `Gate` signals that the writer is applying it and waits for a go-ahead, so
    /// the test can queue the next requests while the writer is busy (they then form one
    /// group); `Put(k)` inserts k; `Bad` fails the group.
    enum Req {
        Gate(mpsc::Sender<()>, mpsc::Receiver<()>),
        Put(u32),
        Bad,
    }

    #[test]
    fn every_request_of_a_failed_group_gets_the_error_and_none_is_committed() {
        let dir = std::env::temp_dir().join(format!(
            "drain-groupcommit-{}",
            crate::base::MessageId::random().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let db = Arc::new(Database::create(dir.join("db.redb")).unwrap());
        let c = Committer::spawn("test-writer", db.clone(), |txn, reqs: &[Req]| {
            let mut t = txn.open_table(T).map_err(|e| e.to_string())?;
            for r in reqs {
                match r {
                    Req::Gate(applying, go) => {
                        applying.send(()).unwrap();
                        go.recv().unwrap();
                    }
                    Req::Put(k) => {
                        t.insert(k, k).map_err(|e| e.to_string())?;
                    }
                    Req::Bad => return Err("bad request".to_string()),
                }
            }
            Ok(())
        })
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (applying_tx, applying) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        let gate = c.submit(Req::Gate(applying_tx, go_rx));
        applying.recv().unwrap();
        // The writer is inside the gate's group: these three queue up and form the next group.
        let group = [
            c.submit(Req::Put(1)),
            c.submit(Req::Bad),
            c.submit(Req::Put(2)),
        ];
        go.send(()).unwrap();
        rt.block_on(async {
            assert!(gate.await.is_ok());
            for r in group {
                match r.await {
                    Err(CommitError::Apply(e)) => assert_eq!(e, "bad request"),
                    other => panic!("expected the group's error, got {other:?}"),
                }
            }
            assert!(
                c.submit(Req::Put(3)).await.is_ok(),
                "the next group commits"
            );
        });
        c.close();
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(T).unwrap();
        let keys: Vec<u32> = t.iter().unwrap().map(|kv| kv.unwrap().0.value()).collect();
        assert_eq!(keys, vec![3], "nothing of the failed group was committed");
        drop((t, txn));
        assert!(matches!(
            rt.block_on(c.submit(Req::Put(4))),
            Err(CommitError::Stopped)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
