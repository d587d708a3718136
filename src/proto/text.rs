//! Client-supplied text, made safe to quote in a log line: a peer must not be
//! able to forge, split or garble log lines with newlines, NULs, terminal
//! escapes, quotes or bytes that are not UTF-8.

use std::fmt;

/// Characters that could end, fake or hide a line: C0/C1 controls (newline,
/// CR, NUL, ESC...), DEL, Unicode line/paragraph separators and the bidi
/// overrides and isolates that reorder what a reader sees.
pub fn dangerous(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

pub fn escape_char(f: &mut impl fmt::Write, c: char) -> fmt::Result {
    match c {
        '\n' => f.write_str("\\n"),
        '\r' => f.write_str("\\r"),
        '\t' => f.write_str("\\t"),
        '\0' => f.write_str("\\0"),
        c if (c as u32) < 0x100 => write!(f, "\\x{:02x}", c as u32),
        c => write!(f, "\\u{{{:x}}}", c as u32),
    }
}

/// Text a client sent (or a handler derived from it), for log lines and error
/// messages that end up in them. Its `Display` escapes control characters
/// (`\n`, `\0`, `\x1b`), Unicode separators and bidi controls, quotes and
/// backslashes (`\'`, `\"`, `\\`), and shows bytes that are not UTF-8 as
/// `\xNN`: the result is one line and quoting it is unambiguous. There is no
/// other way to display it: keep client bytes in this type until they are
/// logged.
#[derive(Clone, Copy)]
pub struct ClientText<'a>(&'a [u8]);

impl<'a> ClientText<'a> {
    pub fn new(bytes: &'a (impl AsRef<[u8]> + ?Sized)) -> Self {
        ClientText(bytes.as_ref())
    }
}

/// [`ClientText`] of `s` as a string, for call sites that want one (the same
/// escaping: there is one way to show client text).
pub fn printable(s: &str) -> std::borrow::Cow<'static, str> {
    std::borrow::Cow::Owned(ClientText::new(s).to_string())
}

/// Shorthand for [`ClientText::new`].
pub fn client<T: AsRef<[u8]> + ?Sized>(bytes: &T) -> ClientText<'_> {
    ClientText::new(bytes)
}

impl fmt::Display for ClientText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' | '\'' | '"' => write!(f, "\\{c}")?,
                    c if dangerous(c) => escape_char(f, c)?,
                    c => fmt::Write::write_char(f, c)?,
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ClientText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_text_is_one_unambiguous_line() {
        let show = |b: &[u8]| client(b).to_string();
        assert_eq!(show(b"alice"), "alice");
        assert_eq!(show("Jürgen".as_bytes()), "Jürgen");
        assert_eq!(
            show(b"x\n2026-01-01T00:00:00Z  INFO forged\r\x1b[2J\0"),
            "x\\n2026-01-01T00:00:00Z  INFO forged\\r\\x1b[2J\\0"
        );
        assert_eq!(show(b"a'b\"c\\n"), "a\\'b\\\"c\\\\n");
        assert_eq!(show(b"\xff\xfeok\xc3"), "\\xff\\xfeok\\xc3");
        assert_eq!(
            show("\u{2028}\u{202e}\u{85}\u{7f}".as_bytes()),
            "\\u{2028}\\u{202e}\\x85\\x7f"
        );
        for b in 0u8..=255 {
            let s = show(&[b]);
            assert!(!s.chars().any(dangerous), "{b:#x} -> {s:?}");
        }
    }
}
