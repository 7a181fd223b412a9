//! The journal's record decoding: a message record or a run record read from the database
//! decodes or fails cleanly (a corrupt record is an error naming it, never a panic), and what
//! decodes round-trips.
#![no_main]

use drain::journal::{MessageRecord, RunRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<MessageRecord>(data) {
        let text = serde_json::to_vec(&m).expect("encodes");
        let again: MessageRecord = serde_json::from_slice(&text).expect("decodes");
        assert_eq!(again, m);
    }
    if let Ok(r) = serde_json::from_slice::<RunRecord>(data) {
        let text = serde_json::to_vec(&r).expect("encodes");
        assert!(serde_json::from_slice::<RunRecord>(&text).is_ok());
    }
});
