#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| torrentnchill_fuzz::secure_handshake(data));
