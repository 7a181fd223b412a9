//! The spool file parser: any bytes parse or fail cleanly; what parses writes back to bytes
//! that parse to the same header and body (`parse(write(x)) == x`), and the size check used
//! before reading a body agrees with the full parse.
#![no_main]

use drain::spool::format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = format::parse(data);
    if let Ok(end) = format::header_end(data)
        && end as usize <= data.len()
    {
        let early = format::check_size(&data[..end as usize], data.len() as u64);
        assert_eq!(
            early.is_ok(),
            parsed.is_ok(),
            "size check and parse disagree"
        );
    }
    if let Ok(p) = parsed {
        let body = &data[p.body_offset..];
        let again = format::encode(&p.header, body).expect("a parsed header encodes");
        let q = format::parse(&again).expect("an encoded file parses");
        assert_eq!(q.header, p.header);
        assert_eq!(&again[q.body_offset..], body);
    }
});
