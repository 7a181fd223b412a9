//! The event file format: any bytes decode as an event or fail cleanly; what decodes
//! round-trips.
#![no_main]

use drain::events::Event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = serde_json::from_slice::<Event>(data) {
        let text = serde_json::to_vec(&e).expect("encodes");
        let again: Event = serde_json::from_slice(&text).expect("decodes");
        assert_eq!(
            serde_json::to_value(&again).ok(),
            serde_json::to_value(&e).ok()
        );
    }
});
