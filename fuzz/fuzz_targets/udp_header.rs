//! SOCKS5 UDP request header (RFC 1928 §7): parse arbitrary datagrams; a parsed
//! header re-encodes to the bytes consumed (RSV aside, which we accept as sent),
//! both with `encode_header` and in place with `write_header_before`; every
//! strict prefix of a header is truncated; the destination prints on one line.
#![no_main]
use kumoproxy::proto::socks5_udp::{
    encode_header, header_len, parse, write_header_before, UdpHeaderError, MAX_HEADER,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok((target, off)) => {
            assert!(off <= data.len() && off <= MAX_HEADER);
            assert_eq!(off, header_len(&target));
            let mut out = Vec::new();
            assert!(encode_header(&target, &mut out));
            assert_eq!(out.len(), off);
            assert_eq!(out[2..], data[2..off]);
            let mut inplace = data.to_vec();
            assert_eq!(write_header_before(&mut inplace, off, &target), Some(0));
            assert_eq!(inplace[2..], data[2..]);
            for k in 0..off {
                assert_eq!(parse(&data[..k]), Err(UdpHeaderError::Truncated), "prefix {k}");
            }
            let shown = target.to_string();
            assert!(!shown.chars().any(char::is_control), "{shown:?}");
        }
        Err(e) => {
            // FRAG is judged once the fixed part (RSV, FRAG, ATYP) is there.
            if data.len() >= 4 && data[2] != 0 {
                assert_eq!(e, UdpHeaderError::Fragmented(data[2]));
            }
            let _ = e.reason();
            let _ = e.to_string();
        }
    }
});
