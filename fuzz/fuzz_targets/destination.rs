//! The destination parser: any string is a destination or an error naming it; a destination
//! printed and parsed again is the same destination.
#![no_main]

use drain::base::Destination;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match Destination::parse(s) {
        Ok(d) => {
            let again = Destination::parse(&d.to_string()).expect("a printed destination parses");
            assert_eq!(again, d);
        }
        Err(e) => assert_eq!(e.input, s),
    }
});
