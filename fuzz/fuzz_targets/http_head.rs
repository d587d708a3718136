//! HTTP CONNECT request head (http_connect.rs): parse arbitrary bytes as the
//! proxy port does once the first byte is not 0x05. A complete head's prefixes
//! are incomplete, never errors (a head split over TCP segments must parse);
//! a full-size buffer is never incomplete; the target and credentials parsers
//! take whatever the head holds; nothing a client sent reaches log text with a
//! control character in it.
#![no_main]
use kumoproxy::proto::http::{parse_authority, parse_credentials, parse_head, Credentials, MAX_HEAD};
use libfuzzer_sys::fuzz_target;

fn printable(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

fuzz_target!(|data: &[u8]| {
    // The credentials parser on its own, with any bytes as a header value.
    // An unknown scheme is kept for messages only: 32 characters, escaped.
    if let Ok(Credentials::Other(scheme)) = parse_credentials(data) {
        assert!(scheme.chars().count() <= 32 * "\\u{10ffff}".len(), "{scheme:?}");
        assert!(printable(&scheme), "{scheme:?}");
    }
    match parse_head(data) {
        Ok(Some((head, n))) => {
            assert!(n <= data.len() && n <= MAX_HEAD);
            for k in [n - 1, n / 2, 1] {
                if k < n {
                    assert!(parse_head(&data[..k]).is_ok(), "prefix {k} of {n} refused");
                }
            }
            assert!(printable(&head.method), "{:?}", head.method);
            match parse_authority(&head.target) {
                Ok(t) => assert!(printable(&t.to_string()), "{t}"),
                Err(why) => assert!(printable(&why), "{why:?}"),
            }
            if let Some(v) = &head.proxy_authorization {
                match parse_credentials(v) {
                    Ok(Credentials::Other(scheme)) => assert!(printable(&scheme), "{scheme:?}"),
                    Ok(Credentials::Basic { .. }) => {}
                    Err(why) => assert!(printable(&why)),
                }
            }
        }
        Ok(None) => assert!(data.len() < MAX_HEAD),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
