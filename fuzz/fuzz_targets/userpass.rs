//! RFC 1929 username/password sub-negotiation: parse arbitrary bytes; a whole
//! frame re-encodes to the bytes consumed, prefixes are incomplete, and the
//! Debug form never shows the password.
#![no_main]
use kumoproxy::proto::socks5::{encode_userpass, parse_userpass, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_userpass(data) {
        Ok(Some((up, n))) => {
            assert!(n <= data.len() && n <= MAX_FRAME);
            assert!(!up.username.is_empty() && up.username.len() <= 255);
            let mut out = Vec::new();
            encode_userpass(&up.username, &up.password, &mut out);
            assert_eq!(out, &data[..n]);
            for k in 0..n {
                assert_eq!(parse_userpass(&data[..k]), Ok(None), "prefix {k} of {n}");
            }
            // The password may only show up where it is part of the username
            // or of the fixed text around it.
            let shown = format!("{up:?}");
            let pw = String::from_utf8_lossy(&up.password);
            let user = format!("{:?}", String::from_utf8_lossy(&up.username));
            let frame = "UserPass { username: , password: \"<redacted>\" }";
            if pw.len() >= 4 && !user.contains(&*pw) && !frame.contains(&*pw) {
                assert!(!shown.contains(&*pw), "password in {shown}");
            }
        }
        Ok(None) => assert!(data.len() < MAX_FRAME),
        Err(_) => {}
    }
});
