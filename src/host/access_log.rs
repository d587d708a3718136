//! The access log: one JSON object per finished session (issue 17).
//!
//! Sessions hand a [`Record`] to a [`Sink`] with `try_send` on a bounded channel:
//! a full queue drops the record and counts it, so a slow disk never delays a
//! relay. One writer thread per destination (a path, or `-` for stderr) turns
//! records into JSON lines, batches whatever is queued, and writes each batch
//! with one `write_all` as soon as the queue runs dry, then rests 10 ms: the
//! first line after a quiet spell is on disk at once, and under load lines go
//! in large batches (few wake-ups, few writes).
//!
//! A thread, not a runtime task: file (and stderr) writes block, and a blocked
//! writer must not take a tokio worker with it.
//!
//! Rotation: [`Sink::reopen`] (SIGUSR1, `kumoproxy.reopen_logs()`) makes the
//! writer finish the batch in hand on the old file, then open the path again.
//! Lines are only ever written whole, to exactly one file, so a `logrotate`
//! rename followed by SIGUSR1 neither loses nor duplicates one. (`copytruncate`
//! can lose lines by design; the docs say not to use it.)

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

/// Records waiting for the writer, per destination, before new ones are dropped.
pub const DEFAULT_QUEUE: usize = 16 * 1024;
/// A batch is written once it reaches this size even if more records are queued.
const BATCH_BYTES: usize = 256 * 1024;
/// After writing a batch the writer rests this long, so that under load records
/// gather into large batches instead of waking it (and costing a write) each.
/// The first record after a quiet spell is still written at once.
const BATCH_PAUSE: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The session relayed and ended normally.
    Ok,
    /// Refused by permissions, the request policy, or authentication.
    Denied,
    /// Anything else that ended the session early: timeouts, connect errors, bad input.
    Failed,
    /// Ended by us while relaying: shutdown grace period, `close_sessions`.
    Cut,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
            Outcome::Cut => "cut",
        }
    }
}

/// One finished session. Unknown fields stay `None`/empty and are written as
/// `null`/`[]`, so every line has the same keys.
#[derive(Debug, Clone)]
pub struct Record {
    pub start: SystemTime,
    pub end: SystemTime,
    /// The listener's local address.
    pub listener: SocketAddr,
    /// `socks5` or `http`.
    pub protocol: &'static str,
    /// `connect`, `bind`, `udp_associate`; `None` when the session ended before a request.
    pub command: Option<&'static str>,
    /// The client; behind the PROXY protocol, the original client.
    pub peer: SocketAddr,
    /// The TCP peer (the load balancer) when `peer` came from a PROXY header.
    pub proxy_peer: Option<SocketAddr>,
    pub identity: Option<String>,
    pub context: Option<String>,
    pub groups: Vec<String>,
    pub limit_key: Option<String>,
    /// What the client asked for (`host:port`), as received.
    pub destination: Option<String>,
    /// The address we connected to.
    pub connected: Option<SocketAddr>,
    /// Our side of the outbound connection (the source address used).
    pub source: Option<SocketAddr>,
    /// Name of the egress source the connection left through.
    pub egress: Option<String>,
    /// Client -> destination.
    pub bytes_up: u64,
    /// Destination -> client.
    pub bytes_down: u64,
    pub outcome: Outcome,
    pub reason: Option<String>,
}

impl Record {
    /// A record for a session that started at `start`; the caller fills in the rest.
    pub fn new(
        start: SystemTime,
        listener: SocketAddr,
        protocol: &'static str,
        peer: SocketAddr,
    ) -> Self {
        Record {
            start,
            end: start,
            listener,
            protocol,
            command: None,
            peer,
            proxy_peer: None,
            identity: None,
            context: None,
            groups: Vec::new(),
            limit_key: None,
            destination: None,
            connected: None,
            source: None,
            egress: None,
            bytes_up: 0,
            bytes_down: 0,
            outcome: Outcome::Failed,
            reason: None,
        }
    }

    /// Appends the record as one JSON line. Client-supplied text (identity,
    /// destination, reason...) is escaped by serde_json, so no value can break
    /// the line or forge another.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let duration = self
            .end
            .duration_since(self.start)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64();
        out.push(b'{');
        key(out, "start", true);
        time(out, self.start);
        key(out, "end", false);
        time(out, self.end);
        key(out, "duration", false);
        // Microsecond precision is plenty, and keeps the lines short.
        let _ = write!(out, "{:.6}", duration);
        key(out, "listener", false);
        addr(out, Some(&self.listener));
        key(out, "protocol", false);
        string(out, Some(self.protocol));
        key(out, "command", false);
        string(out, self.command);
        key(out, "peer", false);
        addr(out, Some(&self.peer));
        key(out, "proxy_peer", false);
        addr(out, self.proxy_peer.as_ref());
        key(out, "identity", false);
        string(out, self.identity.as_deref());
        key(out, "context", false);
        string(out, self.context.as_deref());
        key(out, "groups", false);
        out.push(b'[');
        for (i, g) in self.groups.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, Some(g));
        }
        out.push(b']');
        key(out, "limit_key", false);
        string(out, self.limit_key.as_deref());
        key(out, "destination", false);
        string(out, self.destination.as_deref());
        key(out, "connected", false);
        addr(out, self.connected.as_ref());
        key(out, "source", false);
        addr(out, self.source.as_ref());
        key(out, "egress", false);
        string(out, self.egress.as_deref());
        key(out, "bytes_up", false);
        let _ = write!(out, "{}", self.bytes_up);
        key(out, "bytes_down", false);
        let _ = write!(out, "{}", self.bytes_down);
        key(out, "outcome", false);
        string(out, Some(self.outcome.as_str()));
        key(out, "reason", false);
        string(out, self.reason.as_deref());
        out.extend_from_slice(b"}\n");
    }
}

fn key(out: &mut Vec<u8>, k: &str, first: bool) {
    if !first {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(k.as_bytes());
    out.extend_from_slice(b"\":");
}

fn string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        // Writing a str into a Vec cannot fail.
        Some(s) => serde_json::to_writer(&mut *out, s).expect("json string"),
        None => out.extend_from_slice(b"null"),
    }
}

/// Socket addresses need no escaping: digits, dots, colons, brackets, `%`.
fn addr(out: &mut Vec<u8>, v: Option<&SocketAddr>) {
    match v {
        Some(v) => {
            let _ = write!(out, "\"{v}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
}

fn time(out: &mut Vec<u8>, t: SystemTime) {
    let _ = write!(out, "\"{}\"", humantime::format_rfc3339_millis(t));
}

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    Stderr,
    File(PathBuf),
}

impl Destination {
    /// `-` is stderr, anything else a file path.
    pub fn parse(s: &str) -> Self {
        if s == "-" {
            Destination::Stderr
        } else {
            Destination::File(PathBuf::from(s))
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Stderr => write!(f, "-"),
            Destination::File(p) => write!(f, "{}", p.display()),
        }
    }
}

enum Msg {
    Record(Box<Record>),
    /// Wakes the writer for a reopen or sync (the flags say which).
    Wake,
}

/// Counters of one destination (all listeners writing to it).
#[derive(Debug, Default)]
pub struct Counters {
    /// Lines written.
    pub written: AtomicU64,
    /// Records dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Batches that could not be written (disk full, ...): their lines are lost.
    pub write_errors: AtomicU64,
    /// Reopens done.
    pub reopened: AtomicU64,
}

/// What the sessions hold: the sending side of one destination.
pub struct Sink {
    pub destination: Destination,
    tx: SyncSender<Msg>,
    shared: Arc<WriterShared>,
}

struct WriterShared {
    counters: Counters,
    reopen: AtomicBool,
    /// Bumped by the writer after each batch is written; `sync` waits on it.
    done: Mutex<u64>,
    done_cv: std::sync::Condvar,
    /// Records handed to the channel, so `sync` knows what to wait for.
    sent: AtomicU64,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "access log {}", self.destination)
    }
}

impl Sink {
    /// Opens the destination now (so a bad path fails at configuration time)
    /// and starts its writer thread.
    pub fn open(destination: Destination, queue: usize) -> io::Result<Arc<Sink>> {
        let out = Output::open(&destination)?;
        let (tx, rx) = mpsc::sync_channel(queue.max(1));
        let shared = Arc::new(WriterShared {
            counters: Counters::default(),
            reopen: AtomicBool::new(false),
            done: Mutex::new(0),
            done_cv: std::sync::Condvar::new(),
            sent: AtomicU64::new(0),
        });
        let w = Writer {
            destination: destination.clone(),
            out,
            rx,
            shared: shared.clone(),
            buf: Vec::with_capacity(16 * 1024),
            batch: 0,
        };
        std::thread::Builder::new()
            .name("kumoproxy-log".into())
            .spawn(move || {
                block_signals();
                w.run()
            })?;
        Ok(Arc::new(Sink {
            destination,
            tx,
            shared,
        }))
    }

    /// Queues a record; never blocks. A full queue drops it (counted).
    pub fn log(&self, record: Record) {
        match self.tx.try_send(Msg::Record(Box::new(record))) {
            Ok(()) => {
                self.shared.sent.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.counters.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Asks the writer to reopen the file after the batch in hand. Never blocks.
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Relaxed);
        // Full: the writer is busy and sees the flag before its next batch.
        let _ = self.tx.try_send(Msg::Wake);
    }

    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Waits (up to `timeout`) until every record queued so far is written or
    /// dropped. For shutdown and tests; never called on a session's path.
    pub fn sync(&self, timeout: Duration) -> bool {
        let target = self.shared.sent.load(Relaxed);
        let deadline = std::time::Instant::now() + timeout;
        let mut done = self.shared.done.lock().unwrap();
        while *done < target {
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            done = self
                .shared
                .done_cv
                .wait_timeout(done, deadline - now)
                .unwrap()
                .0;
        }
        true
    }
}

enum Output {
    Stderr,
    File(File),
}

impl Output {
    fn open(d: &Destination) -> io::Result<Output> {
        match d {
            Destination::Stderr => Ok(Output::Stderr),
            Destination::File(p) => OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .custom_flags(libc::O_CLOEXEC)
                .open(p)
                .map(Output::File),
        }
    }

    fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        match self {
            Output::File(f) => f.write_all(buf),
            // One write(2) per batch and no std lock, as `logging::RawStderr`.
            Output::Stderr => {
                while !buf.is_empty() {
                    let n = unsafe { libc::write(2, buf.as_ptr() as *const _, buf.len()) };
                    if n < 0 {
                        let e = io::Error::last_os_error();
                        if e.kind() == io::ErrorKind::Interrupted {
                            continue;
                        }
                        return Err(e);
                    }
                    buf = &buf[n as usize..];
                }
                Ok(())
            }
        }
    }
}

struct Writer {
    destination: Destination,
    out: Output,
    rx: Receiver<Msg>,
    shared: Arc<WriterShared>,
    buf: Vec<u8>,
    /// Records in `buf`.
    batch: u64,
}

impl Writer {
    fn run(mut self) {
        loop {
            // Block for the first message of a batch. A reopen requested while
            // the queue was full lost its wake-up message, but then the writer
            // is busy and looks at the flag after the batch in hand.
            let Ok(first) = self.rx.recv() else {
                return; // every Sink is gone and nothing is left
            };
            self.take(first);
            // Then whatever else is already queued, up to a batch.
            let mut closed = false;
            while self.buf.len() < BATCH_BYTES {
                match self.rx.try_recv() {
                    Ok(m) => self.take(m),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            // The batch goes to the file it was taken for; only then reopen.
            self.flush();
            if closed {
                return;
            }
            if self.shared.reopen.swap(false, Relaxed) {
                self.reopen();
            }
            std::thread::sleep(BATCH_PAUSE);
        }
    }

    fn take(&mut self, m: Msg) {
        match m {
            Msg::Record(r) => {
                r.write_json(&mut self.buf);
                self.batch += 1;
            }
            // The wake-up is queued behind the records logged before the reopen
            // request and ahead of those after it: reopen exactly there.
            Msg::Wake => {
                if self.shared.reopen.swap(false, Relaxed) {
                    self.flush();
                    self.reopen();
                }
            }
        }
    }

    fn flush(&mut self) {
        if self.batch == 0 {
            return;
        }
        match self.out.write_all(&self.buf) {
            Ok(()) => {
                self.shared.counters.written.fetch_add(self.batch, Relaxed);
            }
            Err(e) => {
                self.shared.counters.write_errors.fetch_add(1, Relaxed);
                tracing::error!(
                    "access log {}: write failed, {} lines lost: {e}",
                    self.destination,
                    self.batch
                );
            }
        }
        *self.shared.done.lock().unwrap() += self.batch;
        self.shared.done_cv.notify_all();
        self.buf.clear();
        self.batch = 0;
        if self.buf.capacity() > 4 * BATCH_BYTES {
            self.buf.shrink_to(16 * 1024);
        }
    }

    fn reopen(&mut self) {
        match Output::open(&self.destination) {
            Ok(out) => {
                self.out = out;
                self.shared.counters.reopened.fetch_add(1, Relaxed);
                tracing::debug!("access log {} reopened", self.destination);
            }
            // Keep writing to the old file rather than losing lines.
            Err(e) => tracing::error!(
                "access log {}: cannot reopen, still writing to the old file: {e}",
                self.destination
            ),
        }
    }
}

/// The writer thread must not take the host's signals (SIGUSR1, SIGHUP...).
fn block_signals() {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

static SINKS: crate::host::runtime::PerProcess<Sinks> = crate::host::runtime::PerProcess::new();

/// This process's access log writers (a forked child starts with none: the
/// parent's writer threads did not survive the fork).
pub fn sinks() -> &'static Sinks {
    SINKS.get_or_init(Default::default)
}

/// The sinks of one process, by destination: listeners logging to the same
/// path share one writer (and one file descriptor), so lines never interleave.
#[derive(Default)]
pub struct Sinks(Mutex<HashMap<Destination, Weak<Sink>>>);

impl Sinks {
    /// The live sink for `d`, opening it when there is none.
    pub fn get(&self, d: &Destination) -> io::Result<Arc<Sink>> {
        let mut m = self.0.lock().unwrap();
        if let Some(s) = m.get(d).and_then(Weak::upgrade) {
            return Ok(s);
        }
        let s = Sink::open(d.clone(), DEFAULT_QUEUE)?;
        m.retain(|_, w| w.strong_count() > 0);
        m.insert(d.clone(), Arc::downgrade(&s));
        Ok(s)
    }

    pub fn live(&self) -> Vec<Arc<Sink>> {
        self.0
            .lock()
            .unwrap()
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// SIGUSR1 / `kumoproxy.reopen_logs()`: every file reopens; returns how many.
    pub fn reopen_all(&self) -> usize {
        let live = self.live();
        for s in &live {
            s.reopen();
        }
        live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u64) -> Record {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + i);
        let mut r = Record::new(
            t,
            "127.0.0.1:1080".parse().unwrap(),
            "socks5",
            "127.0.0.1:5555".parse().unwrap(),
        );
        r.end = t + Duration::from_millis(1500);
        r.command = Some("connect");
        r.identity = Some(format!("user{i}"));
        r.bytes_up = i;
        r.outcome = Outcome::Ok;
        r
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "kumoproxy-accesslog-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn lines(p: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is one JSON object"))
            .collect()
    }

    #[test]
    fn json_line_has_every_key_and_escapes_client_text() {
        let mut r = record(7);
        r.identity = Some("evil\"\n{\"outcome\":\"ok\"}\u{1b}".into());
        r.destination = Some("x\ny:80".into());
        r.groups = vec!["a".into(), "b\"c".into()];
        r.outcome = Outcome::Denied;
        r.reason = Some("not allowed".into());
        let mut out = Vec::new();
        r.write_json(&mut out);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(s.matches('\n').count(), 1, "one line: {s}");
        assert!(s.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["identity"], "evil\"\n{\"outcome\":\"ok\"}\u{1b}");
        assert_eq!(v["destination"], "x\ny:80");
        assert_eq!(v["groups"], serde_json::json!(["a", "b\"c"]));
        assert_eq!(v["outcome"], "denied");
        assert_eq!(v["duration"], 1.5);
        assert_eq!(v["start"], "2023-11-14T22:13:20.007Z");
        assert_eq!(v["end"], "2023-11-14T22:13:21.507Z");
        assert_eq!(v["listener"], "127.0.0.1:1080");
        assert_eq!(v["peer"], "127.0.0.1:5555");
        assert_eq!(v["bytes_up"], 7);
        for k in [
            "proxy_peer",
            "context",
            "limit_key",
            "connected",
            "source",
            "egress",
        ] {
            assert!(v[k].is_null(), "{k} present and null");
        }
        assert_eq!(v.as_object().unwrap().len(), 20);
    }

    #[test]
    fn writes_every_record_to_a_real_file() {
        let d = tmpdir("write");
        let p = d.join("access.jsonl");
        let sink = Sink::open(Destination::File(p.clone()), 1024).unwrap();
        for i in 0..500 {
            sink.log(record(i));
        }
        assert!(sink.sync(Duration::from_secs(10)));
        let l = lines(&p);
        assert_eq!(l.len(), 500);
        for (i, v) in l.iter().enumerate() {
            assert_eq!(v["bytes_up"], i as u64, "in order");
        }
        assert_eq!(sink.counters().written.load(Relaxed), 500);
        assert_eq!(sink.counters().dropped.load(Relaxed), 0);
        drop(sink);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let d = tmpdir("full");
        // A queue of 1 and a burst far faster than the writer.
        let p = d.join("access.jsonl");
        let sink = Sink::open(Destination::File(p.clone()), 1).unwrap();
        let t = std::time::Instant::now();
        for i in 0..100_000 {
            sink.log(record(i));
        }
        assert!(t.elapsed() < Duration::from_secs(5), "log() never blocks");
        assert!(sink.sync(Duration::from_secs(10)));
        let c = sink.counters();
        let (w, dr) = (c.written.load(Relaxed), c.dropped.load(Relaxed));
        assert!(dr > 0, "some records were dropped");
        assert_eq!(w + dr, 100_000, "each record written or counted dropped");
        assert_eq!(lines(&p).len() as u64, w);
        drop(sink);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn reopen_after_rename_loses_and_duplicates_nothing() {
        let d = tmpdir("rotate");
        let p = d.join("access.jsonl");
        let sink = Sink::open(Destination::File(p.clone()), 1 << 16).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (sink2, stop2) = (sink.clone(), stop.clone());
        // Records flow for the whole test, a few at a time as sessions end.
        let producer = std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop2.load(Relaxed) {
                sink2.log(record(i));
                i += 1;
                if i % 64 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            i
        });
        // Rotate as logrotate does: rename, then signal.
        let mut files = Vec::new();
        for n in 0..5 {
            let t = std::time::Instant::now();
            while std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0) == 0 {
                assert!(t.elapsed() < Duration::from_secs(10), "lines keep coming");
                std::thread::yield_now();
            }
            let to = d.join(format!("access.jsonl.{n}"));
            std::fs::rename(&p, &to).unwrap();
            files.push(to);
            sink.reopen();
        }
        stop.store(true, Relaxed);
        let sent = producer.join().unwrap();
        assert!(sink.sync(Duration::from_secs(10)));
        assert_eq!(sink.counters().dropped.load(Relaxed), 0);
        files.push(p.clone());
        let mut seen = vec![0u32; sent as usize];
        for f in &files {
            let l = lines(f);
            for v in l {
                seen[v["bytes_up"].as_u64().unwrap() as usize] += 1;
            }
        }
        assert!(
            seen.iter().all(|&n| n == 1),
            "every one of {sent} records exactly once across the rotated files"
        );
        assert_eq!(sink.counters().reopened.load(Relaxed), 5);
        drop(sink);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn reopen_failure_keeps_the_old_file() {
        let d = tmpdir("reopenfail");
        let sub = d.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        let p = sub.join("access.jsonl");
        let sink = Sink::open(Destination::File(p.clone()), 64).unwrap();
        sink.log(record(1));
        assert!(sink.sync(Duration::from_secs(10)));
        // Move the whole directory away: the path cannot be reopened.
        let moved = d.join("moved");
        std::fs::rename(&sub, &moved).unwrap();
        sink.reopen();
        sink.log(record(2));
        assert!(sink.sync(Duration::from_secs(10)));
        assert_eq!(lines(&moved.join("access.jsonl")).len(), 2);
        drop(sink);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn open_fails_at_configuration_time() {
        let e = Sink::open(
            Destination::File("/nonexistent-dir-kumoproxy/x.jsonl".into()),
            8,
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn sinks_share_one_writer_per_destination() {
        let d = tmpdir("sinks");
        let p = Destination::File(d.join("a.jsonl"));
        let sinks = Sinks::default();
        let a = sinks.get(&p).unwrap();
        let b = sinks.get(&p).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(sinks.reopen_all(), 1);
        // The writer thread reopens (re-creates) the file on its own time: wait
        // for it, or it can re-create a.jsonl while the directory is removed.
        let t = std::time::Instant::now();
        while a.counters().reopened.load(Relaxed) < 1 {
            assert!(t.elapsed() < Duration::from_secs(10), "the writer reopens");
            std::thread::yield_now();
        }
        drop((a, b));
        assert_eq!(sinks.live().len(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
