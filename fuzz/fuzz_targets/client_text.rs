//! proto::text::ClientText: whatever bytes a client sends, the displayed form is one
//! line with no control, separator or bidi characters, and it is lossless:
//! unescaping it gives the bytes back (so two different inputs never show the
//! same).
#![no_main]
use kumoproxy::proto::text::client;
use libfuzzer_sys::fuzz_target;

fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\\' {
            let mut b = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            continue;
        }
        match it.next().expect("dangling backslash") {
            'n' => out.push(b'\n'),
            'r' => out.push(b'\r'),
            't' => out.push(b'\t'),
            '0' => out.push(0),
            '\\' => out.push(b'\\'),
            '\'' => out.push(b'\''),
            '"' => out.push(b'"'),
            'x' => {
                let h: String = [it.next().unwrap(), it.next().unwrap()].iter().collect();
                out.push(u8::from_str_radix(&h, 16).unwrap());
            }
            'u' => {
                assert_eq!(it.next(), Some('{'));
                let h: String = it.by_ref().take_while(|c| *c != '}').collect();
                let c = char::from_u32(u32::from_str_radix(&h, 16).unwrap()).unwrap();
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
            other => panic!("unknown escape \\{other} in {s:?}"),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let shown = client(data).to_string();
    for c in shown.chars() {
        assert!(
            !c.is_control()
                && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'),
            "{c:?} in {shown:?}"
        );
    }
    // \xNN stands for a control below 0x80, a C1 control or a byte that is not
    // UTF-8: only inputs without the last two decode back unambiguously.
    let c1_or_raw = String::from_utf8_lossy(data)
        .chars()
        .any(|c| ('\u{80}'..='\u{ff}').contains(&c) || c == '\u{fffd}');
    if !c1_or_raw {
        assert_eq!(unescape(&shown), data, "{shown:?}");
    }
});
