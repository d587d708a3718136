//! SOCKS5 greeting (RFC 1928 §3): parse arbitrary bytes; a whole frame must
//! re-encode to exactly the bytes it consumed, and every shorter prefix of it
//! must read as "need more bytes".
#![no_main]
use kumoproxy::proto::socks5::{encode_greeting, parse_greeting, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_greeting(data) {
        Ok(Some((g, n))) => {
            assert!(n <= data.len() && n <= MAX_FRAME);
            let mut out = Vec::new();
            encode_greeting(&g.methods, &mut out);
            assert_eq!(out, &data[..n]);
            for k in 0..n {
                assert_eq!(parse_greeting(&data[..k]), Ok(None), "prefix {k} of {n}");
            }
        }
        // The session reader relies on this: a full-size buffer is never "incomplete".
        Ok(None) => assert!(data.len() < MAX_FRAME),
        Err(_) => {}
    }
});
