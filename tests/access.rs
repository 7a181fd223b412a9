//! Who may drain into an instance, end to end with real processes: forwarding headers through
//! a real TLS-terminating HAProxy (`examples/haproxy-http.cfg`), the PROXY protocol through a
//! real passthrough HAProxy (`examples/haproxy-tcp.cfg`), PROXY headers from untrusted peers,
//! ambiguous `Client-IP` lines and wrong content types.

mod common;

use std::io::{Read, Write};

use common::ask::{RUN, SENDER, post};
use common::haproxy::HaProxy;
use common::*;
use drain::base::QueueKind;
use drain::wire::{self, RejectCode};

/// A client from `bind` trusting the PEM certificate(s) in `ca`.
fn client(ca: &std::path::Path, bind: &str) -> reqwest::Client {
    https_client(ca, bind)
}

/// POST a one-message transfer to `https://{addr}` with extra header lines: (status, body).
fn transfer(c: &reqwest::Client, addr: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let m = message(QueueKind::BounceLite, 1, addr.as_bytes());
    let body = batch(&[(&m, m.hash)]);
    let (st, _, text) = post(
        c,
        addr,
        wire::TRANSFER_PATH,
        wire::BATCH_CONTENT_TYPE,
        body,
        headers,
    );
    (st, text)
}

fn code_of(text: &str) -> Option<RejectCode> {
    reject_code(text)
}

/// (a) HAProxy `mode http` with `option forwardfor` adds its own X-Forwarded-For line: a
/// client's forged line naming an allowed address does not get it in.
#[test]
fn forged_forwarded_for_through_haproxy_is_refused() {
    let tmp = TempDir::new("acc-http");
    let mut cfg = ServeConfig::on("127.0.0.2");
    cfg.accept = "127.0.0.20/32";
    cfg.trusted_proxies = Some("127.0.0.1");
    let s = Server::start(&tmp, "a", cfg);
    let (cert, key) =
        drain::tls::write_self_signed(&["127.0.0.1".to_string()], tmp.path(), "lb").unwrap();
    let both = tmp.path().join("lb-both.pem");
    let pem = std::fs::read_to_string(&cert).unwrap() + &std::fs::read_to_string(&key).unwrap();
    std::fs::write(&both, pem).unwrap();
    let lb = HaProxy::start(
        &tmp,
        "haproxy-http.cfg",
        "127.0.0.1",
        &[
            ("@CERT@", both.display().to_string()),
            ("@BACKEND1@", s.dest()),
        ],
    );
    let forged = [("x-forwarded-for", "127.0.0.20")];
    let (st, text) = transfer(&client(&cert, "127.0.0.7"), &lb.dest(), &forged);
    assert_eq!(
        (st, code_of(&text)),
        (403, Some(RejectCode::NotAllowed)),
        "{text}"
    );
    assert!(text.contains("127.0.0.7"), "{text}");
    assert!(s.ls().is_empty(), "nothing stored from the forger");
    let (st, text) = transfer(&client(&cert, "127.0.0.20"), &lb.dest(), &[]);
    assert_eq!(st, 200, "{text}\n{}", lb.log());
    assert_eq!(s.ls().len(), 1);
}

/// (b) HAProxy `mode tcp` passthrough with `send-proxy-v2`: the backend allows the senders'
/// addresses only, never the balancer's, and a real drain through it delivers everything.
#[test]
fn drain_through_a_passthrough_balancer_with_proxy_protocol_v2() {
    let tmp = TempDir::new("acc-tcp");
    let mut cfg = ServeConfig::on("127.0.0.2");
    cfg.accept = "127.0.0.20/32";
    cfg.trusted_proxies = Some("127.0.0.1");
    // The senders dial the balancer: the certificate names its address too.
    let s = Server::start_with_names(&tmp, "a", cfg, &["127.0.0.2", "127.0.0.1"]);
    let lb = HaProxy::start(
        &tmp,
        "haproxy-tcp.cfg",
        "127.0.0.1",
        &[("@BACKEND1@", s.dest())],
    );
    let ca = ca_bundle(&tmp, &[&s]);
    let ca = ca.to_str().unwrap();

    let src = tmp.sub("src");
    let expected = fill(&src, 30);
    let o = drain(
        &src,
        &["--ca-cert", ca, "--bind-ip", "127.0.0.20", &lb.dest()],
    );
    assert_eq!(code(&o), 0, "{}\n{}\n{}", show(&o), s.log(), lb.log());
    assert_census(&[&s], &src, &expected);

    let other = tmp.sub("other");
    fill(&other, 3);
    let before = spool_ls(&other);
    let o = drain(
        &other,
        &["--ca-cert", ca, "--bind-ip", "127.0.0.7", &lb.dest()],
    );
    assert_eq!(code(&o), 12, "{}", show(&o));
    assert_eq!(spool_ls(&other), before);
    assert_eq!(s.ls().len(), expected.len(), "nothing more stored");
    assert!(
        s.log().contains("refused drain from 127.0.0.7"),
        "{}",
        s.log()
    );
}

/// (c) A PROXY header from a peer that is not a trusted proxy closes the connection, with a
/// warning naming the peer, and is counted; so is a failed TLS handshake; one line per peer
/// per minute.
#[test]
fn proxy_header_from_an_untrusted_peer_closes_the_connection() {
    let tmp = TempDir::new("acc-untrusted");
    let mut cfg = ServeConfig::on("127.0.0.2");
    cfg.accept = "127.0.0.20/32";
    cfg.trusted_proxies = Some("127.0.0.9");
    cfg.extra = vec!["--metrics-listen".into(), "127.0.0.2:0".into()];
    let s = Server::start(&tmp, "a", cfg);
    for header in [
        &b"PROXY TCP4 127.0.0.20 127.0.0.2 5555 443\r\n"[..],
        &drain::intake::proxy_header::V2_SIGNATURE[..],
    ] {
        // From 127.0.0.1, not a trusted proxy here.
        let mut sock =
            std::net::TcpStream::connect_timeout(&s.addr, std::time::Duration::from_secs(5))
                .unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        sock.write_all(header).unwrap();
        let mut buf = [0u8; 64];
        let n = sock.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
    }
    // Not TLS at all (plain HTTP to the TLS port), twice from another peer.
    for _ in 0..2 {
        let o = std::process::Command::new("curl")
            .args(["-sS", "--interface", "127.0.0.6", "-m", "10"])
            .arg(format!("http://{}/v1/health", s.dest()))
            .output()
            .expect("curl");
        assert_ne!(code(&o), 0, "{}", show(&o));
    }
    assert!(s.ls().is_empty());
    let log = s.log();
    assert_eq!(
        log.matches("connection from 127.0.0.6: TLS handshake failed")
            .count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("connection from 127.0.0.1")
            && log.contains("PROXY protocol header from a peer not in --trusted-proxy-ips"),
        "{log}"
    );
    // Rate-limited: the second refusal of the same peer within a minute is not logged.
    assert_eq!(
        log.matches("PROXY protocol header from a peer").count(),
        1,
        "{log}"
    );
    let m = std::fs::read_to_string(s.data_dir.join("metrics.addr")).unwrap();
    let text = http_get(m.trim(), "/metrics");
    for line in [
        "drain_intake_connections_refused_total{reason=\"proxy_untrusted\"} 2",
        "drain_intake_connections_refused_total{reason=\"tls_handshake\"} 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in {text}");
    }
}

/// A plain `GET` over TCP, the answer's body.
fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// (d) Two `Client-IP` lines from a trusted proxy are ambiguous: 400 `bad_forwarding`; a
/// wrong `Content-Type` is 415 `unsupported_media_type`.
#[test]
fn repeated_client_ip_is_400_and_a_wrong_type_415() {
    let tmp = TempDir::new("acc-cip");
    let mut cfg = ServeConfig::on("127.0.0.2");
    cfg.accept = "127.0.0.20/32";
    cfg.trusted_proxies = Some("127.0.0.9");
    let s = Server::start(&tmp, "a", cfg);
    let proxy = client(&s.cert, "127.0.0.9");
    let two = [("client-ip", "127.0.0.20"), ("client-ip", "127.0.0.7")];
    let (st, text) = transfer(&proxy, &s.dest(), &two);
    assert_eq!(
        (st, code_of(&text)),
        (400, Some(RejectCode::BadForwarding)),
        "{text}"
    );
    assert!(
        text.contains("2 Client-IP header lines from proxy 127.0.0.9"),
        "{text}"
    );
    let bad = [("x-forwarded-for", "127.0.0.20, not-an-ip")];
    let (st, text) = transfer(&proxy, &s.dest(), &bad);
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("\\\"not-an-ip\\\""), "{text}");
    // The line HAProxy adds after a forged one decides.
    let forged = [
        ("x-forwarded-for", "127.0.0.20"),
        ("x-forwarded-for", "127.0.0.7"),
    ];
    assert_eq!(transfer(&proxy, &s.dest(), &forged).0, 403);
    assert!(s.ls().is_empty());

    // An allowed client (through the proxy) sending a form instead of a batch.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (st, text) = rt.block_on(async {
        let r = proxy
            .post(format!("https://{}{}", s.dest(), wire::TRANSFER_PATH))
            .header(wire::HDR_SENDER, SENDER)
            .header(wire::HDR_RUN, RUN)
            .header("client-ip", "127.0.0.20")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("a=b")
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(
        (st, code_of(&text)),
        (415, Some(RejectCode::UnsupportedMediaType)),
        "{text}"
    );
    assert!(text.contains(wire::BATCH_CONTENT_TYPE), "{text}");
}

/// A refusal before the body is read (403, 415, 413 over the limit), over HTTP/2 with a body
/// larger than what the server discards: curl reads the answer, no "Stream error in the
/// HTTP/2 framing layer".
#[test]
fn refusals_over_http2_end_the_stream_cleanly() {
    let tmp = TempDir::new("acc-h2");
    let mut cfg = ServeConfig::on("127.0.0.2");
    cfg.accept = "127.0.0.20/32";
    let s = Server::start(&tmp, "a", cfg);
    let big = tmp.path().join("big");
    std::fs::write(&big, vec![b'x'; 80 << 20]).unwrap();
    let curl = |from: &str, path: &str, ctype: &str| {
        let o = std::process::Command::new("curl")
            .args(["-sS", "--http2", "--cacert"])
            .arg(&s.cert)
            .args([
                "--interface",
                from,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
            ])
            .args(["-H", &format!("content-type: {ctype}")])
            .args(["-H", &format!("{}: {SENDER}", wire::HDR_SENDER)])
            .args(["-H", &format!("{}: {RUN}", wire::HDR_RUN)])
            .arg("--data-binary")
            .arg(format!("@{}", big.display()))
            .arg(format!("https://{}{path}", s.dest()))
            .output()
            .expect("curl installed (tests/run.sh installs it)");
        (
            code(&o),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            show(&o),
        )
    };
    let batch_type = wire::BATCH_CONTENT_TYPE;
    for (from, path, ctype, want) in [
        ("127.0.0.7", wire::TRANSFER_PATH, batch_type, "403 2"),
        ("127.0.0.7", wire::QUERY_PATH, "application/json", "403 2"),
        ("127.0.0.20", wire::TRANSFER_PATH, "text/plain", "415 2"),
        ("127.0.0.20", wire::QUERY_PATH, "application/json", "413 2"),
    ] {
        let (rc, out, all) = curl(from, path, ctype);
        assert_eq!((rc, out.as_str()), (0, want), "{from} {path}: {all}");
    }
    assert!(s.ls().is_empty());
}

/// One transfer over a connection from `bind` that starts with `header` (a PROXY header, or
/// nothing), then TLS and HTTP/1.1: the answer's status.
async fn transfer_after(s: &Server, bind: &str, header: &[u8]) -> u16 {
    use http_body_util::{BodyExt, Full};
    use tokio::io::AsyncWriteExt;
    let mut roots = rustls::RootCertStore::empty();
    for c in drain::tls::load_certs(&s.cert).unwrap() {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{bind}:0").parse().unwrap()).unwrap();
    let mut tcp = sock.connect(s.addr).await.unwrap();
    tcp.write_all(header).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(s.addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("TLS after the PROXY header");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let m = message(QueueKind::BounceLite, 1, header);
    let req = hyper::Request::post(wire::TRANSFER_PATH)
        .header("host", s.dest())
        .header(wire::HDR_SENDER, SENDER)
        .header(wire::HDR_RUN, RUN)
        .header("content-type", wire::BATCH_CONTENT_TYPE)
        .body(Full::new(bytes::Bytes::from(batch(&[(&m, m.hash)]))))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let st = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    st
}

/// PROXY v1 and v2 headers from a trusted peer (no balancer): the address they carry is the
/// one `accept_drain_from` judges; v2 LOCAL and no header at all keep the peer's.
#[test]
fn proxy_headers_from_a_trusted_peer_carry_the_client() {
    use drain::intake::proxy_header::{Addresses, ProxyHeader, Version};
    let tmp = TempDir::new("acc-trusted");
    let mut cfg = ServeConfig::on("127.0.0.2");
    cfg.accept = "127.0.0.20/32, 127.0.0.9";
    cfg.trusted_proxies = Some("127.0.0.8, 127.0.0.9");
    let s = Server::start(&tmp, "a", cfg);
    let header = |version, from: &str| {
        ProxyHeader {
            version,
            addresses: Some(Addresses {
                source: format!("{from}:40000").parse().unwrap(),
                destination: s.addr,
            }),
        }
        .encode()
        .unwrap()
    };
    let local = ProxyHeader {
        version: Version::V2,
        addresses: None,
    }
    .encode()
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for v in [Version::V1, Version::V2] {
            assert_eq!(
                transfer_after(&s, "127.0.0.8", &header(v, "127.0.0.20")).await,
                200
            );
            assert_eq!(
                transfer_after(&s, "127.0.0.8", &header(v, "127.0.0.7")).await,
                403
            );
        }
        // LOCAL: the peer, 127.0.0.8, which is not allowed; 127.0.0.9 is.
        assert_eq!(transfer_after(&s, "127.0.0.8", &local).await, 403);
        assert_eq!(transfer_after(&s, "127.0.0.9", &local).await, 200);
        assert_eq!(transfer_after(&s, "127.0.0.9", b"").await, 200);
    });
    assert_eq!(s.ls().len(), 4);
    let log = s.log();
    assert!(log.contains("refused drain from 127.0.0.7"), "{log}");
    assert!(log.contains("refused drain from 127.0.0.8"), "{log}");
}
