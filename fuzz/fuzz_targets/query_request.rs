//! A query request body (JSON): any bytes decode or fail cleanly; what decodes round-trips.
#![no_main]

use drain::wire::QueryRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = serde_json::from_slice::<QueryRequest>(data) {
        let text = serde_json::to_vec(&q).expect("encodes");
        let again: QueryRequest = serde_json::from_slice(&text).expect("decodes");
        assert_eq!(again, q);
    }
});
