//! An event endpoint that answers with a redirect must not swallow the events: following a
//! 301/302 would turn the POST into a GET without a body, get a 200, and delete events that
//! never arrived. A 3xx is a failed delivery, logged with its `Location`, and retried.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Answers every POST with `302 Location: <same host>/landing`, and a GET with 200.
struct Redirector {
    url: String,
    posts: Arc<AtomicUsize>,
    gets: Arc<AtomicUsize>,
}

impl Redirector {
    fn start(ip: &str) -> Redirector {
        let l = TcpListener::bind(format!("{ip}:0")).unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let (posts, gets) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (p, g, landing) = (posts.clone(), gets.clone(), format!("{base}/landing"));
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                let _ = r.read_line(&mut first);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                let answer = if first.starts_with("POST") {
                    p.fetch_add(1, Ordering::SeqCst);
                    format!(
                        "HTTP/1.1 302 Found\r\nlocation: {landing}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    )
                } else {
                    g.fetch_add(1, Ordering::SeqCst);
                    "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
                };
                let _ = conn.write_all(answer.as_bytes());
            }
        });
        Redirector {
            url: format!("{base}/events"),
            posts,
            gets,
        }
    }
}

#[test]
fn a_redirecting_endpoint_never_gets_events_marked_delivered() {
    let tmp = TempDir::new("redirect");
    let sink = Redirector::start("127.0.0.95");
    let mut cfg = ServeConfig::on("127.0.0.96");
    cfg.extra = vec!["--event-endpoint".into(), sink.url.clone()];
    let a = Server::start(&tmp, "a", cfg);
    let src = tmp.sub("src");
    fill(&src, 3);
    let ca = ca_bundle(&tmp, &[&a]);
    let o = drain(&src, &["--ca-cert", &ca.to_string_lossy(), &a.dest()]);
    assert_eq!(code(&o), 0, "{}", show(&o));

    // The processor tries, is redirected, and tries again after its backoff.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.posts.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "no retry after the redirect");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        sink.gets.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
    assert_eq!(pending_events(&a.data_dir), 3, "events deleted");
    let log = a.log();
    assert!(
        log.contains("HTTP 302") && log.contains("/landing"),
        "the redirect is not logged with its Location:\n{log}"
    );
}
