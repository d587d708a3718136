//! tracing to stderr, filtered by `KUMOPROXY_LOG` (default `info`).

use std::io::Write;
use std::sync::Once;

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
            .try_init();
    });
}

/// Client text is escaped in `proto::text`; re-exported for log call sites.
pub use crate::proto::text::printable;
