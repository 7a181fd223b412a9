//! Event endpoints for the receivers: two plain-HTTP sinks, one that takes every batch (2xx)
//! and one that refuses every third batch for good (HTTP 400, so the processor dead-letters
//! it for that endpoint) and takes the others. Each remembers the events it took (event id ->
//! message id), recorded before it answers.
//!
//! With them the census can check the event queue's durability (`events::mark_acked`,
//! `mark_dead`): every message a receiver took has a `message.received` event that is still
//! queued, or that the taking sink got and the refusing sink got or the dead-letter directory
//! keeps; and no event is sent again to an endpoint after `drain serve` traced it done there.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

type Took = Arc<Mutex<BTreeMap<String, String>>>;

/// One endpoint: a listener on 127.0.0.1 answering on its own thread.
pub struct EventSink {
    url: String,
    took: Took,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EventSink {
    /// A sink that refuses every `refuse_every`-th batch (0: never).
    pub fn start(refuse_every: u64) -> EventSink {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let url = format!("http://{}/events", l.local_addr().unwrap());
        let took = Took::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (took.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((conn, _)) => {
                        n += 1;
                        let refuse = refuse_every > 0 && n.is_multiple_of(refuse_every);
                        // A receiver killed mid-request is not the sink's failure.
                        let _ = answer(conn, refuse, &t);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => panic!("event sink: {e}"),
                }
            }
        });
        EventSink {
            url,
            took,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Event id -> message id of every event this sink took.
    pub fn took(&self) -> BTreeMap<String, String> {
        self.took.lock().unwrap().clone()
    }
}

impl Drop for EventSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one POST (headers, then `Content-Length` bytes), records its events unless it
/// refuses them, answers and closes.
fn answer(mut conn: TcpStream, refuse: bool, took: &Took) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        let k = conn.read(&mut chunk)?;
        if k == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..k]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let k = conn.read(&mut chunk)?;
        if k == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..k]);
    }
    let status = if refuse {
        "400 Bad Request"
    } else {
        let events: Vec<serde_json::Value> =
            serde_json::from_slice(&buf[head_end..head_end + len]).unwrap();
        let mut t = took.lock().unwrap();
        for e in events {
            let s = |k: &str| e[k].as_str().unwrap().to_string();
            t.insert(s("id"), s("message_id"));
        }
        "200 OK"
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    conn.flush()
}
