//! Client-supplied text, made safe to quote in a log line: a peer must not be
//! able to forge or garble log lines with newlines or terminal escapes.

/// Client-supplied text for a log line, control characters escaped (`\n`,
/// `\u{1b}`), so a peer cannot forge or garble log lines.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(super::printable("alice"), "alice");
        assert_eq!(super::printable("Jürgen"), "Jürgen");
        assert_eq!(
            super::printable("x\nINFO forged\r\x1b[2J"),
            "x\\nINFO forged\\r\\u{1b}[2J"
        );
    }
}
