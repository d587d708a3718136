//! SOCKS5 request (RFC 1928 §4): parse arbitrary bytes; a whole frame
//! re-encodes to the bytes consumed (RSV aside, which we accept as sent),
//! prefixes are incomplete, and a refused frame maps to a reply code or none.
#![no_main]
use kumoproxy::proto::socks5::{encode_request, parse_request, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok(Some((req, n))) => {
            assert!(n <= data.len() && n <= MAX_FRAME);
            let mut out = Vec::new();
            encode_request(&req, &mut out);
            assert_eq!(out.len(), n);
            assert_eq!(out[..2], data[..2]);
            assert_eq!(out[3..], data[3..n]);
            for k in 0..n {
                assert_eq!(parse_request(&data[..k]), Ok(None), "prefix {k} of {n}");
            }
            // Logged and shown to Lua: must be printable on one line.
            let shown = req.target.to_string();
            assert!(!shown.chars().any(char::is_control), "{shown:?}");
        }
        Ok(None) => assert!(data.len() < MAX_FRAME),
        Err(e) => {
            let _ = e.reply_code();
            let _ = e.to_string();
        }
    }
});
