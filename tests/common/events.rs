//! An HTTP endpoint that takes a serve's events, and the count of events still pending.

use std::net::TcpListener;
use std::path::Path;

/// A tiny HTTP endpoint for events: answers every POST with the current status and keeps
/// every event it acknowledged (by id, so a repeat shows).
pub struct EventSink {
    pub url: String,
    pub status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl EventSink {
    pub fn start(ip: &str) -> EventSink {
        use std::io::{BufRead, BufReader, Read, Write};
        use std::sync::atomic::{AtomicU16, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind(format!("{ip}:0")).expect("bind sink");
        let url = format!("http://{}/events", listener.local_addr().expect("addr"));
        let status = Arc::new(AtomicU16::new(200));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (st, rx) = (status.clone(), received.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let l = line.trim().to_ascii_lowercase();
                    if l.is_empty() {
                        break;
                    }
                    if let Some(v) = l.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let code = st.load(Ordering::SeqCst);
                if code == 200
                    && let Ok(serde_json::Value::Array(events)) = serde_json::from_slice(&body)
                {
                    rx.lock().expect("lock").extend(events);
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        EventSink {
            url,
            status,
            received,
        }
    }

    pub fn ids(&self) -> Vec<String> {
        self.received
            .lock()
            .expect("lock")
            .iter()
            .map(|e| e["id"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// Events pending in `<data-dir>/events`, counted by the queue's own rule (a file holds one
/// event, or `n` for a name ending in `-x<n>`).
pub fn pending_events(dir: &Path) -> usize {
    drain::events::EventQueue::read_only(dir)
        .count()
        .unwrap_or(0)
}
