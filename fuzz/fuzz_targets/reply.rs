//! SOCKS5 reply (RFC 1928 §6), the egress (client) side: parse arbitrary bytes;
//! `reply_len` (how much a client reads) agrees with `parse_reply`, and a whole
//! frame re-encodes to the bytes consumed.
#![no_main]
use kumoproxy::proto::socks5::{CodecError, encode_reply, parse_reply, reply_len};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let len = reply_len(data);
    match parse_reply(data) {
        Ok(Some((r, n))) => {
            assert!(n <= data.len());
            assert_eq!(len, Ok(Some(n)));
            let mut out = Vec::new();
            encode_reply(&r, &mut out);
            assert_eq!(out.len(), n);
            assert_eq!(out[..2], data[..2]);
            assert_eq!(out[3..], data[3..n]);
            for k in 0..n {
                assert_eq!(parse_reply(&data[..k]), Ok(None), "prefix {k} of {n}");
            }
        }
        Ok(None) => {
            // Whenever reply_len knows the length, the frame is just not all here yet.
            if let Ok(Some(n)) = len {
                assert!(data.len() < n);
            }
        }
        Err(e) => {
            // Once its 5 bytes are in, reply_len refuses what parse_reply refuses,
            // except what it cannot see there: a domain name that is not UTF-8.
            if data.len() >= 5 && len.is_ok() {
                assert_eq!(e, CodecError::BadDomain);
            }
        }
    }
});
