//! Unit tests of the PROXY protocol parser: both versions, every command, and the inputs a
//! hostile or broken peer sends (truncated, garbage, oversize).

use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn with(version: Version, src: &str, dst: &str) -> ProxyHeader {
    ProxyHeader {
        version,
        addresses: Some(Addresses {
            source: sa(src),
            destination: sa(dst),
        }),
    }
}

/// Reads a header from `bytes` followed by a TLS-like tail, and checks the tail is untouched.
fn read_all(bytes: &[u8]) -> (Result<ProxyHeader, ProxyError>, Vec<u8>) {
    let mut input = bytes.to_vec();
    input.extend_from_slice(b"\x16\x03\x01TAIL");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut r = &input[..];
        let h = read(&mut r).await;
        (h, r.to_vec())
    })
}

#[test]
fn v1_tcp4_tcp6_and_unknown() {
    let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n";
    let want = with(Version::V1, "192.0.2.7:56324", "198.51.100.1:443");
    assert_eq!(parse(line).unwrap(), Some((want.clone(), line.len())));
    let (h, rest) = read_all(line);
    assert_eq!(h.unwrap(), want);
    assert_eq!(rest, b"\x16\x03\x01TAIL");
    assert_eq!(want.encode().unwrap(), line);

    let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 8443\r\n";
    let want = with(Version::V1, "[2001:db8::7]:65535", "[2001:db8::1]:8443");
    assert_eq!(read_all(line).0.unwrap(), want);
    assert_eq!(want.encode().unwrap(), line);

    for line in [
        &b"PROXY UNKNOWN\r\n"[..],
        b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n",
    ] {
        let (h, rest) = read_all(line);
        assert_eq!(h.unwrap().addresses, None);
        assert_eq!(rest, b"\x16\x03\x01TAIL");
    }
}

#[test]
fn v2_proxy_over_ipv4_and_ipv6_with_tlvs_skipped() {
    let want = with(Version::V2, "192.0.2.7:56324", "198.51.100.1:443");
    let mut bytes = want.encode().unwrap();
    assert_eq!(bytes.len(), 28);
    assert_eq!(read_all(&bytes).0.unwrap(), want);
    // A TLV (type 0x04 NOOP, 3 bytes) after the addresses: skipped, not left in the stream.
    bytes[15] += 6;
    bytes.extend_from_slice(&[0x04, 0x00, 0x03, 1, 2, 3]);
    let (h, rest) = read_all(&bytes);
    assert_eq!(h.unwrap(), want);
    assert_eq!(rest, b"\x16\x03\x01TAIL");
    assert_eq!(parse(&bytes).unwrap(), Some((want, 34)));

    let want = with(Version::V2, "[2001:db8::7]:1", "[::1]:2");
    let bytes = want.encode().unwrap();
    assert_eq!(bytes.len(), 16 + 36);
    assert_eq!(read_all(&bytes).0.unwrap(), want);
}

#[test]
fn v2_local_and_unspec_use_the_tcp_peer() {
    let local = ProxyHeader {
        version: Version::V2,
        addresses: None,
    };
    let bytes = local.encode().unwrap();
    assert_eq!(bytes[12], 0x20);
    assert_eq!(read_all(&bytes).0.unwrap(), local);
    // LOCAL with addresses anyway (HAProxy health checks may send them): still the peer.
    let mut b = with(Version::V2, "192.0.2.7:1", "192.0.2.8:2")
        .encode()
        .unwrap();
    b[12] = 0x20;
    assert_eq!(read_all(&b).0.unwrap(), local);
    // PROXY over UNSPEC.
    let mut b = V2_SIGNATURE.to_vec();
    b.extend_from_slice(&[0x21, 0x00, 0, 0]);
    assert_eq!(read_all(&b).0.unwrap(), local);
}

#[test]
fn truncated_headers_are_errors_and_need_more_bytes_when_parsed() {
    let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n";
    let v2 = with(Version::V2, "192.0.2.7:1", "192.0.2.8:2")
        .encode()
        .unwrap();
    for whole in [&v1[..], &v2[..]] {
        for n in 1..whole.len() {
            assert_eq!(parse(&whole[..n]), Ok(None), "{n} bytes");
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let mut r = &whole[..n];
            assert_eq!(rt.block_on(read(&mut r)), Err(ProxyError::Truncated), "{n}");
        }
    }
    // Addresses shorter than the family needs.
    let mut b = V2_SIGNATURE.to_vec();
    b.extend_from_slice(&[0x21, 0x21, 0, 12]);
    b.extend_from_slice(&[0; 12]);
    assert!(matches!(read_all(&b).0, Err(ProxyError::V2Malformed(_))));
}

#[test]
fn garbage_is_refused_naming_what_is_wrong() {
    for line in [
        &b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n"[..],
        b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 1\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 +1 1\r\n",
        b"PROXY TCP4 192.0.2.7  198.51.100.1 1 1\r\n",
        b"PROXY UDP4 192.0.2.7 198.51.100.1 1 1\r\n",
        b"PROXY \xff\r\n",
    ] {
        assert!(
            matches!(read_all(line).0, Err(ProxyError::V1Malformed(_))),
            "{line:?}"
        );
    }
    assert_eq!(read_all(b"PRXY x\r\n").0, Err(ProxyError::NotProxy));
    assert_eq!(read_all(b"GET / HTTP/1.1\r\n").0, Err(ProxyError::NotProxy));
    assert_eq!(parse(b"\x16\x03\x01"), Err(ProxyError::NotProxy));
    let mut b = V2_SIGNATURE.to_vec();
    b.extend_from_slice(&[0x11, 0x11, 0, 0]);
    assert!(matches!(read_all(&b).0, Err(ProxyError::V2Malformed(_))));
    let mut b = V2_SIGNATURE.to_vec();
    b.extend_from_slice(&[0x22, 0x11, 0, 0]);
    assert!(matches!(read_all(&b).0, Err(ProxyError::V2Malformed(_))));
    assert_eq!(classify(0x16), Start::Other);
    assert_eq!(classify(b'P'), Start::MaybeProxy);
    assert!(looks_like_proxy(b"\r\n\r"));
    assert!(!looks_like_proxy(b"\r\r"));
}

#[test]
fn oversize_headers_are_refused_before_reading_them() {
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(V1_MAX - 1, b'x');
    long.extend_from_slice(b"\r\n");
    assert_eq!(read_all(&long).0, Err(ProxyError::V1TooLong));
    assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
    long.truncate(V1_MAX - 2);
    long.extend_from_slice(b"\r\n");
    assert_eq!(read_all(&long).0.unwrap().addresses, None);

    let mut b = V2_SIGNATURE.to_vec();
    b.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    assert_eq!(read_all(&b).0, Err(ProxyError::V2TooLong(65535)));
    assert_eq!(parse(&b), Err(ProxyError::V2TooLong(65535)));
}
