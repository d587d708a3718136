//! tracing to stderr, filtered by `KUMOPROXY_LOG` (default `info`).
//!
//! Log lines must not be forgeable by clients: every piece of client-supplied
//! text (usernames, domain names, HTTP head pieces, strings a handler built from
//! them) is shown through [`ClientText`], which escapes control characters,
//! quotes, backslashes and non-UTF-8 bytes. As a second line of defence the
//! subscriber itself escapes any control character left in an event's fields
//! ([`EscapingFields`]), so one event is always exactly one line.

use std::fmt;
use std::io::Write;
use std::sync::Once;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::FormatFields;

/// Writes each formatted line with one write(2) and no lock, so a fork while a
/// runtime thread logs cannot leave a lock held in the child.
struct RawStderr;

impl Write for RawStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = unsafe { libc::write(2, buf.as_ptr() as *const _, buf.len()) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("KUMOPROXY_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(|| RawStderr)
            .with_ansi(false)
            .with_target(false)
            .fmt_fields(EscapingFields)
            .try_init();
    });
}

/// Characters that could end, fake or hide a line: C0/C1 controls (newline,
/// CR, NUL, ESC...), DEL, Unicode line/paragraph separators and the bidi
/// overrides and isolates that reorder what a reader sees.
fn dangerous(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escape_char(f: &mut impl fmt::Write, c: char) -> fmt::Result {
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

/// Formats an event's fields as tracing-subscriber does, then escapes any
/// control character left in them: a call site that forgot [`ClientText`]
/// still cannot split its event into two lines or hide text with escapes.
pub struct EscapingFields;

impl<'w> FormatFields<'w> for EscapingFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut buf = String::new();
        DefaultFields::new().format_fields(Writer::new(&mut buf), fields)?;
        if !buf.chars().any(dangerous) {
            return writer.write_str(&buf);
        }
        for c in buf.chars() {
            if dangerous(c) {
                escape_char(&mut writer, c)?;
            } else {
                fmt::Write::write_char(&mut writer, c)?;
            }
        }
        Ok(())
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

    #[test]
    fn fields_are_escaped_by_the_subscriber() {
        use tracing_subscriber::layer::SubscriberExt;
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .fmt_fields(EscapingFields)
            .with_writer(move || SinkWriter(sink.clone()));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let raw = "bob\n2026-01-01T00:00:00Z  INFO forged\0";
            tracing::warn!("user {raw}");
        });
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains("user bob\\n2026-01-01T00:00:00Z  INFO forged\\0"),
            "{text}"
        );
    }

    struct SinkWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for SinkWriter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
