//! A mail server beside each receiver: as a real MTA scanning its queue, it takes every message
//! file (`<id>.msg`) it finds in the receiver's spool, as soon as it is there, and moves it
//! durably (rename, fsync of the file, of `delivered/`, then of the queue directory) from
//! `spool/<queue>/<id>.msg` to `delivered/<id>.msg` on the same mount.
//!
//! Why: while a copy stays in the receiver's spool it answers for its id by itself, which hides
//! a lost dedupe record. Once it is delivered, only the dedupe record tells a sender asking
//! about an in-doubt message that it was taken, so losing that record, or a copy visible
//! before its record is durable, shows as a duplicate.
//!
//! A delivered copy never overwrites another (a second delivery of an id is kept as
//! `<id>.<n>.msg`), so the census sees every duplicate. The servers run on one thread; they
//! are stopped before a power cut (a move is never cut halfway: that would be the mail
//! server's own duplicate, not drain's) and before a census.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use drain::base::QueueKind;

/// The directory, on a receiver's mount, where its mail server puts what it delivered.
pub const DELIVERED: &str = "delivered";

/// One receiver's mail server.
pub struct Mailbox {
    data_dir: PathBuf,
    pub delivered: usize,
}

impl Mailbox {
    /// A mail server for the receiver with data directory `data_dir`; creates `delivered/`
    /// durably.
    pub fn new(data_dir: &Path) -> Mailbox {
        let dir = data_dir.join(DELIVERED);
        fs::create_dir_all(&dir).unwrap();
        sync_dir(data_dir);
        Mailbox {
            data_dir: data_dir.to_path_buf(),
            delivered: 0,
        }
    }

    /// Delivers every message file in the spool.
    fn poll(&mut self) {
        for q in QueueKind::ALL {
            let dir = self.data_dir.join("spool").join(q.as_str());
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            let files: Vec<PathBuf> = rd
                .flatten()
                .map(|de| de.path())
                .filter(|p| p.extension().is_some_and(|e| e == "msg"))
                .collect();
            files.iter().for_each(|p| self.deliver(p));
        }
    }

    fn deliver(&mut self, from: &Path) {
        let dir = self.data_dir.join(DELIVERED);
        let name = from.file_name().unwrap().to_string_lossy().into_owned();
        let stem = name.trim_end_matches(".msg");
        let to = (0..)
            .map(|n| match n {
                0 => dir.join(&name),
                n => dir.join(format!("{stem}.{n}.msg")),
            })
            .find(|p| !p.exists())
            .unwrap();
        match fs::rename(from, &to) {
            Ok(()) => {}
            // Gone meanwhile (serve does not remove copies; a race with nothing): skip it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => panic!("delivering {}: {e}", from.display()),
        }
        fs::File::open(&to).unwrap().sync_all().unwrap();
        sync_dir(&dir);
        sync_dir(from.parent().unwrap());
        self.delivered += 1;
    }
}

fn sync_dir(dir: &Path) {
    fs::File::open(dir).unwrap().sync_all().unwrap();
}

/// The mail servers of every receiver, on one thread while started.
pub struct MailServers {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Mailbox>>>,
    idle: Vec<Mailbox>,
}

impl MailServers {
    pub fn new(boxes: Vec<Mailbox>) -> MailServers {
        MailServers {
            stop: Arc::default(),
            thread: None,
            idle: boxes,
        }
    }

    /// Starts delivering (no-op if running).
    pub fn start(&mut self) {
        if self.thread.is_some() {
            return;
        }
        let mut boxes = std::mem::take(&mut self.idle);
        self.stop.store(false, Ordering::SeqCst);
        let stop = self.stop.clone();
        self.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                boxes.iter_mut().for_each(Mailbox::poll);
                std::thread::sleep(Duration::from_millis(1));
            }
            boxes
        }));
    }

    /// Stops after the move in progress, if any (no-op if stopped). A mail server that
    /// failed fails the test here.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            self.idle = t.join().expect("a mail server failed");
        }
    }

    /// Copies delivered so far, over all receivers.
    pub fn delivered(&mut self) -> usize {
        self.stop();
        self.idle.iter().map(|b| b.delivered).sum()
    }
}

impl Drop for MailServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
