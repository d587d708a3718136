//! Moving bytes between client and remote once a session is established.
//!
//! Plain TCP on Linux: splice(2) socket -> pipe -> socket, no copy through user
//! space. Pipes come from a process-wide pool and are held only while bytes are in
//! flight, so an idle relay costs its two sockets and nothing else (HAProxy's
//! approach). Each direction starts with a plain recv/send copy and switches to
//! splice once it has carried `SPLICE_AFTER` bytes, as HAProxy does: most
//! connections are short and never get there, and for them a copy is cheaper
//! than taking a pipe and two splices per chunk. Elsewhere, or with
//! `use_splice = false`: a userspace copy.
//!
//! Both directions run in one task. EOF on one side becomes a write shutdown on the
//! other (half-close propagates); an error on either side ends both. The relay ends
//! when nothing moved in either direction for the listener's `timeout`.

use crate::policy::limits::{Cut, Dir, SessionLimits};
use crate::server::config::Shared;
use crate::server::sessions::Bytes;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Last time either direction moved a byte, in ms since the relay started.
pub(super) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
    pub(super) fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    /// Resolves with TimedOut once `idle` passes with no activity.
    pub(super) async fn watchdog(&self, idle: Duration) -> io::Result<()> {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("idle for {idle:?}"),
                ));
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One direction of a session with `limits` (issue 14): what it asks before
/// moving bytes, and where it accounts them. Sessions without limits have none
/// and never ask.
#[derive(Clone, Copy)]
pub(super) struct Meter<'a> {
    limits: &'a SessionLimits,
    dir: Dir,
}

/// A quota cut as the relay's error; the session's log line says why.
pub(super) fn cut(c: Cut) -> io::Error {
    io::Error::other(c)
}

impl<'a> Meter<'a> {
    pub(super) fn new(limits: &'a SessionLimits, dir: Dir) -> Self {
        Meter { limits, dir }
    }

    /// How many of `want` bytes may go now without waiting (maybe 0).
    fn grant_now(&self, want: usize) -> io::Result<usize> {
        if !self.limits.meters_bytes() {
            return Ok(want);
        }
        Ok(self
            .limits
            .try_permit(self.dir, want)
            .map_err(cut)?
            .unwrap_or(0))
    }

    /// How many of `want` bytes may go, waiting for the shaper or a quota chunk.
    pub(super) async fn grant(&self, want: usize) -> io::Result<usize> {
        if !self.limits.meters_bytes() {
            return Ok(want);
        }
        self.limits.permit(self.dir, want).await.map_err(cut)
    }

    /// `moved` of `granted` bytes went; metered sessions get the rest back.
    pub(super) fn done(&self, granted: usize, moved: usize) {
        if self.limits.meters_bytes() {
            self.limits.record(self.dir, granted, moved);
        } else {
            self.limits.count(self.dir, moved as u64);
        }
    }
}

/// Relays until both directions reach EOF, an error, or the idle timeout.
/// `early` holds client bytes that arrived with the handshake; they go first.
pub async fn relay(
    client: TcpStream,
    remote: TcpStream,
    early: &[u8],
    shared: &Shared,
    session: &Bytes,
) -> io::Result<()> {
    relay_plain(client, remote, early, shared, session, None).await
}

/// `relay`, for a session with `limits` too: the same copy-then-splice path,
/// asking the limits before each write (`relay_limited` for the rest).
pub(super) async fn relay_plain(
    client: TcpStream,
    mut remote: TcpStream,
    early: &[u8],
    shared: &Shared,
    session: &Bytes,
    limits: Option<&SessionLimits>,
) -> io::Result<()> {
    let stats = &shared.stats;
    if !early.is_empty() {
        remote.write_all(early).await?;
        count(&stats.bytes_to_remote, &session.up, early.len());
        if let Some(l) = limits {
            l.count(Dir::Up, early.len() as u64);
        }
    }
    #[cfg(target_os = "linux")]
    if shared.config.use_splice {
        let activity = Activity::new();
        let to_remote = (&stats.bytes_to_remote, &session.up);
        let to_client = (&stats.bytes_to_client, &session.down);
        let ended = std::sync::atomic::AtomicBool::new(false);
        let up = limits.map(|l| Meter::new(l, Dir::Up));
        let down = limits.map(|l| Meter::new(l, Dir::Down));
        let both = async {
            tokio::try_join!(
                splice::one_way(&client, &remote, to_remote, &activity, &ended, up),
                splice::one_way(&remote, &client, to_client, &activity, &ended, down),
            )
        };
        return tokio::select! {
            r = both => r.map(|_| ()),
            r = activity.watchdog(shared.config.timeout) => r,
        };
    }
    // Boxed: the userspace copy's state is larger than splice's, and every relay's
    // future is as large as its largest path (an idle relay's memory is mostly that).
    Box::pin(copy_both(client, remote, shared, session)).await
}

/// Bytes moved: the listener's counter and the session's (access log, live sessions).
#[inline]
pub(crate) fn count(listener: &AtomicU64, session: &AtomicU64, n: usize) {
    listener.fetch_add(n as u64, Ordering::Relaxed);
    session.fetch_add(n as u64, Ordering::Relaxed);
}

/// `relay` without splice: userspace copy over the borrowed halves.
async fn copy_both(
    mut client: TcpStream,
    mut remote: TcpStream,
    shared: &Shared,
    session: &Bytes,
) -> io::Result<()> {
    let (cr, cw) = client.split();
    let (rr, rw) = remote.split();
    copy_halves((cr, cw), (rr, rw), shared, session).await
}

/// Both directions of a userspace relay over split halves, with the idle
/// watchdog: shared by the plain-TCP copy and the any-stream (TLS) relay.
async fn copy_halves<CR, CW, RR, RW>(
    (mut cr, mut cw): (CR, CW),
    (mut rr, mut rw): (RR, RW),
    shared: &Shared,
    session: &Bytes,
) -> io::Result<()>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    RR: AsyncRead + Unpin,
    RW: AsyncWrite + Unpin,
{
    let stats = &shared.stats;
    let activity = Activity::new();
    let both = async {
        tokio::try_join!(
            copy_one_way(
                &mut cr,
                &mut rw,
                (&stats.bytes_to_remote, &session.up),
                &activity
            ),
            copy_one_way(
                &mut rr,
                &mut cw,
                (&stats.bytes_to_client, &session.down),
                &activity
            ),
        )
    };
    tokio::select! {
        r = both => r.map(|_| ()),
        r = activity.watchdog(shared.config.timeout) => r,
    }
}

/// Picks the relay for a client/remote pair: splice when both ends are plain TCP,
/// userspace copy when either end is TLS (splice cannot see the plaintext).
pub async fn relay_any(
    client: crate::host::stream::ClientStream,
    remote: crate::egress::EgressStream,
    early: &[u8],
    shared: &Shared,
    session: &Bytes,
) -> io::Result<()> {
    use crate::host::stream::MaybeTls::Plain;
    match (client, remote) {
        (Plain(c), Plain(r)) => relay(c, r, early, shared, session).await,
        // TLS relays hold whole TLS streams: boxed, so they do not grow every
        // session's future (an idle plain relay pays only for what it uses).
        (c, r) => Box::pin(relay_streams(c, r, early, shared, session)).await,
    }
}

/// Userspace relay for any stream pair, e.g. a TLS upstream leg, where splice
/// cannot see the plaintext. Same accounting, half-close and idle rules as `relay`.
pub async fn relay_streams<C, R>(
    client: C,
    mut remote: R,
    early: &[u8],
    shared: &Shared,
    session: &Bytes,
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + AsyncWrite + Unpin,
{
    let stats = &shared.stats;
    if !early.is_empty() {
        remote.write_all(early).await?;
        count(&stats.bytes_to_remote, &session.up, early.len());
    }
    copy_halves(
        tokio::io::split(client),
        tokio::io::split(remote),
        shared,
        session,
    )
    .await
}

/// Userspace copy for any stream pair. The buffer is allocated on the first byte,
/// so idle relays do not hold it.
async fn copy_one_way<R, W>(
    r: &mut R,
    w: &mut W,
    counter: (&AtomicU64, &AtomicU64),
    activity: &Activity,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    const BUF: usize = 64 * 1024;
    // Idle relays wait on a small buffer; the large one comes with the first bytes.
    let mut small = [0u8; 512];
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let dst: &mut [u8] = if buf.is_empty() { &mut small } else { &mut buf };
        let n = match r.read(dst).await {
            Ok(n) => n,
            // A TLS peer that closes without close_notify: for a tunnel this is an
            // ordinary EOF (the tunnelled protocol does its own framing).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };

        if n == 0 {
            w.shutdown().await.or_else(ignore_not_connected)?;
            return Ok(());
        }
        if buf.is_empty() {
            w.write_all(&small[..n]).await?;
            buf = vec![0u8; BUF];
        } else {
            w.write_all(&buf[..n]).await?;
        }
        count(counter.0, counter.1, n);
        activity.touch();
    }
}

#[cfg(target_os = "linux")]
pub use splice::PipePool;

/// No splice, no pipes.
#[cfg(not(target_os = "linux"))]
#[derive(Default)]
pub struct PipePool;

#[cfg(not(target_os = "linux"))]
impl PipePool {
    pub fn len(&self) -> usize {
        0
    }
}

static PIPES: crate::host::runtime::PerProcess<PipePool> = crate::host::runtime::PerProcess::new();

/// This process's idle splice pipes.
pub(super) fn pipes() -> &'static PipePool {
    PIPES.get_or_init(PipePool::default)
}

/// Idle splice pipes kept for reuse in this process (each holds 2 fds).
pub fn pooled_pipes() -> usize {
    pipes().len()
}

pub(super) fn ignore_not_connected(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotConnected {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(target_os = "linux")]
pub(super) mod splice {
    use super::{ignore_not_connected, Activity, Meter};
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    /// Bytes asked of the kernel per splice call, and the pipe size we request
    /// (the default pipe-max-size). Against 256 KiB it bought 1.05-1.24x the
    /// throughput at 0.66-0.75x the CPU per GB (docs/benchmarks.md).
    pub(in crate::server) const PIPE_SIZE: usize = 1024 * 1024;
    /// Idle pipes kept for reuse; beyond this they are closed.
    const POOL_MAX: usize = 256;

    pub struct Pipe {
        pub(in crate::server) r: OwnedFd,
        pub(in crate::server) w: OwnedFd,
    }

    /// Idle pipes of this process. It lives in a `PerProcess` cell, so a forked
    /// child never shares the parent's pipes, nor a lock held at fork time.
    #[derive(Default)]
    pub struct PipePool(Mutex<Vec<Pipe>>);

    impl PipePool {
        pub fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }

        pub(in crate::server) fn take(&self) -> io::Result<Pipe> {
            if let Some(p) = self.0.lock().unwrap().pop() {
                return Ok(p);
            }
            new_pipe()
        }

        /// Only empty pipes go back; one holding bytes is closed with them.
        pub(in crate::server) fn give_back(&self, p: Pipe) {
            let mut pool = self.0.lock().unwrap();
            if pool.len() < POOL_MAX {
                pool.push(p);
            }
        }
    }

    fn new_pipe() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 returned two fresh fds that we now own.
        let p = unsafe {
            Pipe {
                r: OwnedFd::from_raw_fd(fds[0]),
                w: OwnedFd::from_raw_fd(fds[1]),
            }
        };
        // A larger pipe moves more per syscall. Failing (limits) only costs speed.
        unsafe {
            libc::fcntl(
                p.w.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            );
        }
        Ok(p)
    }

    pub(in crate::server) fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Bytes one direction copies through user space before it switches to
    /// splice. Short flows (the SOCKS exchange's tail, SMTP commands, TLS
    /// handshakes) stay below it and never touch a pipe; a bulk flow pays for
    /// four 16 KiB copies, then splices.
    pub const SPLICE_AFTER: u64 = 64 * 1024;
    /// The copy phase's buffer: on the stack of a synchronous step, never in the
    /// relay's future (an idle relay holds no buffer).
    const COPY_CHUNK: usize = 16 * 1024;

    enum Step {
        /// Read and written: n bytes.
        Copied(usize),
        /// Read n bytes, but only part went out: the rest waits for `dst`.
        Partial(usize, Vec<u8>),
        Eof,
        WouldBlock,
    }

    /// One recv from `src` and as much of it as `dst` takes (and the limits
    /// allow) now, without waiting.
    fn copy_step(src: &TcpStream, dst: &TcpStream, meter: Option<Meter<'_>>) -> io::Result<Step> {
        // Uninitialised: zeroing 16 KiB per call cost more than the whole
        // session's own code (callgrind). recv writes the first n bytes, and
        // only those are read.
        let mut buf = std::mem::MaybeUninit::<[u8; COPY_CHUNK]>::uninit();
        let ptr = buf.as_mut_ptr().cast::<u8>();
        let mut short = None;
        let r = src.try_io(Interest::READABLE, || {
            let n = unsafe { libc::recv(src.as_raw_fd(), ptr.cast(), COPY_CHUNK, 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            if n > 0 && n < COPY_CHUNK {
                // A short read drained the socket (epoll is edge-triggered):
                // report WouldBlock so tokio clears the readiness now, instead
                // of a second recv finding EAGAIN. tokio's own poll_read does
                // the same; readiness set again since is kept (tick check).
                short = Some(n);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let n = match (r, short) {
            (_, Some(n)) => n,
            (Ok(0), None) => return Ok(Step::Eof),
            (Ok(n), None) => n,
            (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::WouldBlock),
            (Err(e), None) => return Err(e),
        };
        // SAFETY: recv initialised the first n bytes (n <= COPY_CHUNK).
        let buf: &[u8] = unsafe { std::slice::from_raw_parts(ptr, n) };
        let granted = match &meter {
            None => n,
            Some(m) => m.grant_now(n)?,
        };
        let mut off = 0;
        let mut res = Ok(());
        while off < granted {
            match dst.try_write(&buf[off..granted]) {
                Ok(m) => off += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    res = Err(e);
                    break;
                }
            }
        }
        if let Some(m) = &meter {
            m.done(granted, off);
        }
        res?;
        if off < n {
            // A full send buffer, or the limits allow no more now.
            return Ok(Step::Partial(off, buf[off..n].to_vec()));
        }
        Ok(Step::Copied(n))
    }

    /// Writes what a copy step could not, waiting for `dst` (and the limits);
    /// returns its length.
    async fn write_rest(
        dst: &TcpStream,
        rest: Vec<u8>,
        counter: (&AtomicU64, &AtomicU64),
        activity: &Activity,
        meter: Option<Meter<'_>>,
    ) -> io::Result<usize> {
        let mut left = &rest[..];
        while !left.is_empty() {
            let granted = match &meter {
                None => left.len(),
                Some(m) => m.grant(left.len()).await?,
            };
            let mut sent = 0;
            while sent < granted {
                if let Err(e) = dst.writable().await {
                    meter.inspect(|m| m.done(granted, sent));
                    return Err(e);
                }
                match dst.try_write(&left[sent..granted]) {
                    Ok(m) => {
                        sent += m;
                        super::count(counter.0, counter.1, m);
                        activity.touch();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        meter.inspect(|m| m.done(granted, sent));
                        return Err(e);
                    }
                }
            }
            meter.inspect(|m| m.done(granted, granted));
            left = &left[granted..];
        }
        Ok(rest.len())
    }

    /// EOF from the source: pass it on as a write shutdown of `dst`, unless the
    /// other direction has already ended. Then the relay is over, both sockets
    /// are closed next, and close() sends that FIN itself (both receive queues
    /// were read to EOF, so it is a FIN, not a reset): one syscall less.
    fn half_close(dst: &TcpStream, ended: &AtomicBool) -> io::Result<()> {
        if ended.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        socket2::SockRef::from(dst)
            .shutdown(std::net::Shutdown::Write)
            .or_else(ignore_not_connected)
    }

    pub async fn one_way(
        src: &TcpStream,
        dst: &TcpStream,
        counter: (&AtomicU64, &AtomicU64),
        activity: &Activity,
        ended: &AtomicBool,
        meter: Option<Meter<'_>>,
    ) -> io::Result<()> {
        // Copy phase: short flows end here without a pipe (see SPLICE_AFTER).
        let mut copied: u64 = 0;
        while copied < SPLICE_AFTER {
            src.readable().await?;
            let (written, rest) = match copy_step(src, dst, meter)? {
                Step::WouldBlock => continue,
                Step::Eof => {
                    return half_close(dst, ended);
                }
                Step::Copied(n) => (n, Vec::new()),
                Step::Partial(n, rest) => (n, rest),
            };
            if written > 0 {
                super::count(counter.0, counter.1, written);
                activity.touch();
            }
            copied += written as u64;
            if !rest.is_empty() {
                // Rare (a full send buffer): boxed, so this state does not
                // grow every relay's future.
                copied += Box::pin(write_rest(dst, rest, counter, activity, meter)).await? as u64;
            }
        }
        // Splice phase: this flow is bulk. The pool is looked up only now.
        let pool = super::pipes();
        loop {
            src.readable().await?;
            let pipe = pool.take()?;
            let n = match src.try_io(Interest::READABLE, || {
                splice(src.as_raw_fd(), pipe.w.as_raw_fd(), PIPE_SIZE)
            }) {
                Ok(0) => {
                    pool.give_back(pipe);
                    return half_close(dst, ended);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    pool.give_back(pipe);
                    continue;
                }
                Err(e) => {
                    pool.give_back(pipe);
                    return Err(e);
                }
            };
            let mut left = n;
            while left > 0 {
                // Sessions with limits ask how much may go (the pipe holds the rest).
                let granted = match &meter {
                    None => left,
                    Some(m) => m.grant(left).await?,
                };
                let mut part = granted;
                while part > 0 {
                    let r = match dst.writable().await {
                        Ok(()) => dst.try_io(Interest::WRITABLE, || {
                            splice(pipe.r.as_raw_fd(), dst.as_raw_fd(), part)
                        }),
                        Err(e) => Err(e),
                    };
                    match r {
                        Ok(m) => {
                            part -= m;
                            left -= m;
                            super::count(counter.0, counter.1, m);
                            activity.touch();
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        // `pipe` still holds bytes: dropping it closes it.
                        Err(e) => {
                            meter.inspect(|m| m.done(granted, granted - part));
                            return Err(e);
                        }
                    }
                }
                meter.inspect(|m| m.done(granted, granted));
            }
            pool.give_back(pipe);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// Bytes arrive whole and in order across the switch from copy to splice,
    /// also when the far end's small buffers make copy-phase writes partial,
    /// and EOF propagates as a half-close in both directions.
    #[tokio::test]
    async fn copy_then_splice_carries_every_byte() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_remote, mut remote) = pair().await;
        // Small buffers: a 16 KiB copy step cannot be sent at once.
        socket2::SockRef::from(&proxy_remote)
            .set_send_buffer_size(4096)
            .unwrap();
        socket2::SockRef::from(&remote)
            .set_recv_buffer_size(4096)
            .unwrap();
        let a: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let shared = crate::server::listener::Shared::new(
            crate::server::listener::Config::new(a),
            a,
            std::sync::Arc::new(crate::host::pump::Pump::new().unwrap()),
        );
        let len = 3 * splice::SPLICE_AFTER as usize + 12345;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let up = data.clone();
        let session = Bytes::default();
        let relay = relay(proxy_client, proxy_remote, b"early", &shared, &session);
        let far = async {
            let mut got = Vec::new();
            remote.read_to_end(&mut got).await.unwrap();
            // The reverse direction: a reply after the client's EOF.
            remote.write_all(b"reply").await.unwrap();
            remote.shutdown().await.unwrap();
            got
        };
        let near = async {
            client.write_all(&up).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        };
        let (r, got, back) = tokio::join!(relay, far, near);
        r.unwrap();
        assert_eq!(&got[..5], b"early");
        assert!(got[5..] == data[..], "payload differs");
        assert_eq!(back, b"reply");
        let stats = &shared.stats;
        assert_eq!(
            stats.bytes_to_remote.load(Ordering::Relaxed),
            (len + 5) as u64
        );
        assert_eq!(stats.bytes_to_client.load(Ordering::Relaxed), 5);
        // The session's own counters (access log, live sessions) agree.
        assert_eq!(session.up.load(Ordering::Relaxed), (len + 5) as u64);
        assert_eq!(session.down.load(Ordering::Relaxed), 5);
    }

    /// A session with limits takes the same copy-then-splice path: every byte
    /// arrives, the limits count each one, and a quota far above the flow
    /// neither cuts nor loses anything at the switch to splice.
    #[tokio::test]
    async fn metered_copy_then_splice_counts_every_byte() {
        use crate::policy::limits::{limiter, LimitsSpec, Raw};
        let (mut client, proxy_client) = pair().await;
        let (proxy_remote, mut remote) = pair().await;
        let e = [
            ("quota".to_string(), Raw::Str("10 GB/day".into())),
            ("bandwidth".to_string(), Raw::Str("10 GB/s".into())),
        ];
        let spec = std::sync::Arc::new(LimitsSpec::from_entries(&e).unwrap());
        let limits = limiter().admit("relay-unit-metered", &spec).await.unwrap();
        let a: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let shared = crate::server::listener::Shared::new(
            crate::server::listener::Config::new(a),
            a,
            std::sync::Arc::new(crate::host::pump::Pump::new().unwrap()),
        );
        let len = 4 * splice::SPLICE_AFTER as usize + 777;
        let data: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
        let session = Bytes::default();
        let relay = relay_plain(
            proxy_client,
            proxy_remote,
            b"hi",
            &shared,
            &session,
            Some(&limits),
        );
        let far = async {
            let mut got = Vec::new();
            remote.read_to_end(&mut got).await.unwrap();
            remote.write_all(&got[..1000]).await.unwrap();
            remote.shutdown().await.unwrap();
            got
        };
        let near = async {
            client.write_all(&data).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        };
        let (r, got, back) = tokio::join!(relay, far, near);
        r.unwrap();
        assert!(got[2..] == data[..], "payload differs");
        assert_eq!(back.len(), 1000);
        drop(limits);
        let st = limiter().stats("relay-unit-metered", &spec).await.unwrap();
        assert_eq!(st.bytes_up, (len + 2) as u64);
        assert_eq!(st.bytes_down, 1000);
    }
}
