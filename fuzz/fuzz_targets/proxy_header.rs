//! The PROXY protocol header (v1 and v2) a trusted balancer writes before TLS: any bytes give
//! a header or an error, never a panic; the header never claims more bytes than it read nor
//! more than the bounds (107 bytes for v1, 16 + 2048 for v2); the streaming reader and the
//! buffer parser agree; a header written back parses to itself.
#![no_main]

use drain::intake::proxy_header::{self, V1_MAX, V2_MAX_PAYLOAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = proxy_header::parse(data);
    if let Ok(Some((h, len))) = &parsed {
        assert!(*len <= data.len());
        assert!(*len <= V1_MAX.max(16 + V2_MAX_PAYLOAD));
        if let Some(bytes) = h.encode() {
            let again = proxy_header::parse(&bytes).expect("written header parses");
            assert_eq!(again, Some((h.clone(), bytes.len())), "round trip of {h:?}");
        }
    }
    // The reader used on connections: never reads past the header, agrees with `parse`.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut r = data;
    let read = rt.block_on(proxy_header::read(&mut r));
    match (&parsed, &read) {
        (Ok(Some((h, len))), Ok(h2)) => {
            assert_eq!(h, h2);
            assert_eq!(data.len() - r.len(), *len, "read past the header");
        }
        (Ok(Some(_)), Err(e)) => panic!("parse accepted, read refused: {e}"),
        (Ok(None), Ok(h)) => panic!("parse wanted more, read gave {h:?}"),
        (Err(_), Ok(h)) => panic!("parse refused, read gave {h:?}"),
        _ => {}
    }
});
