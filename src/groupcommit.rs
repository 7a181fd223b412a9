//! Group commit for redb: one writer thread per database folds every queued request into one
//! write transaction and one commit (one fsync), then answers each request.
//!
//! Used by the journal (sender side) and the intake's dedupe store (receiver side), so that
//! throughput grows with concurrency instead of paying one fsync per message. If applying a
//! group fails, nothing of it is committed and every request in it gets the error.

use std::sync::Arc;
use std::sync::mpsc;

use redb::{Database, WriteTransaction};
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<(), String>>;

/// Most requests folded into one commit.
const MAX_GROUP: usize = 4096;

enum Msg<T> {
    Item(T, Reply),
    /// Stop the thread (after everything queued before it), releasing its database handle.
    Close,
}

/// A handle to a group-commit writer thread; cheap to clone.
pub struct Committer<T> {
    tx: mpsc::Sender<Msg<T>>,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl<T> Clone for Committer<T> {
    fn clone(&self) -> Self {
        Committer {
            tx: self.tx.clone(),
            thread: self.thread.clone(),
        }
    }
}

impl<T: Send + 'static> Committer<T> {
    /// Starts the writer thread. `apply` writes one group inside the transaction it is given.
    pub fn spawn<F>(name: &str, db: Arc<Database>, apply: F) -> std::io::Result<Self>
    where
        F: Fn(&WriteTransaction, &[T]) -> Result<(), String> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Msg<T>>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
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
                    let result = commit_group(&db, &items, &apply);
                    for reply in replies {
                        let _ = reply.send(result.clone());
                    }
                }
            })?;
        Ok(Committer {
            tx,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
        })
    }

    /// Stops the writer thread once everything queued is committed, and waits for it, so the
    /// database can be closed cleanly (a redb file left open at exit needs a repair on its
    /// next open). Later submissions fail.
    pub fn close(&self) {
        let _ = self.tx.send(Msg::Close);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Queues `item` and waits until it is committed durably.
    pub async fn submit(&self, item: T) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Item(item, reply))
            .map_err(|_| "the writer thread has stopped".to_string())?;
        rx.await
            .map_err(|_| "the writer thread stopped before answering".to_string())?
    }
}

fn commit_group<T, F>(db: &Database, items: &[T], apply: &F) -> Result<(), String>
where
    F: Fn(&WriteTransaction, &[T]) -> Result<(), String>,
{
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    match apply(&txn, items) {
        Ok(()) => txn.commit().map_err(|e| e.to_string()),
        Err(e) => {
            let _ = txn.abort();
            Err(e)
        }
    }
}
