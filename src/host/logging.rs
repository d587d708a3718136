//! tracing to stderr, filtered by `KUMOPROXY_LOG` (default `info`);
//! `KUMOPROXY_LOG_FORMAT=json` writes one JSON object per line instead of text.
//!
//! Log lines must not be forgeable by clients: every piece of client-supplied
//! text (usernames, domain names, HTTP head pieces, strings a handler built from
//! them) is shown through [`ClientText`] (`proto::text`), which escapes control
//! characters, quotes, backslashes and non-UTF-8 bytes. As a second line of
//! defence the subscriber itself escapes any control character left in an
//! event's fields ([`EscapingFields`]), so one event is always exactly one line.

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
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(|| RawStderr)
            .with_ansi(false)
            .with_target(false);
        let _ = if json_format() {
            // Log shippers parse these: field values are escaped by the JSON encoder.
            builder.json().flatten_event(true).try_init()
        } else {
            // Text: client text is escaped by ClientText at the call sites, and
            // EscapingFields escapes any control character left in a message.
            builder.fmt_fields(EscapingFields).try_init()
        };
    });
}

/// `KUMOPROXY_LOG_FORMAT`: `json` for one JSON object per line, else text.
fn json_format() -> bool {
    match std::env::var("KUMOPROXY_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("" | "text") | Err(_) => false,
        Ok(other) => {
            // Not fatal: logging must come up whatever the environment says.
            eprintln!(
                "kumoproxy: KUMOPROXY_LOG_FORMAT='{}' is not 'text' or 'json'; using text",
                client(other)
            );
            false
        }
    }
}

/// Client text is escaped by `proto::text::ClientText`; re-exported for log call sites.
pub use crate::proto::text::{client, ClientText};
use crate::proto::text::{dangerous, escape_char};

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
