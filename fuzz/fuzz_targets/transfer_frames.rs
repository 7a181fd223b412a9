//! A transfer request body: any bytes split into frames or fail cleanly; frames written back
//! are the same bytes (`write(parse(x)) == x`).
#![no_main]

use bytes::Bytes;
use drain::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frames) = wire::decode_batch(Bytes::copy_from_slice(data)) {
        let mut out = Vec::with_capacity(data.len());
        for f in &frames {
            wire::put_frame_header(&mut out, &f.hash, f.file.len() as u64);
            out.extend_from_slice(&f.file);
        }
        assert_eq!(out, data);
    }
});
