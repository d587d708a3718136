//! Moving bytes between client and remote once a session is established.
//!
//! Plain TCP on Linux: splice(2) socket -> pipe -> socket, no copy through user
//! space. Pipes come from a process-wide pool and are held only while bytes are in
//! flight, so an idle relay costs its two sockets and nothing else (HAProxy's
//! approach). Elsewhere, or with `use_splice = false`: a userspace copy.
//!
//! Both directions run in one task. EOF on one side becomes a write shutdown on the
//! other (half-close propagates); an error on either side ends both. The relay ends
//! when nothing moved in either direction for the listener's `timeout`.

use crate::server::config::Shared;
use crate::server::sessions::Bytes;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Last time either direction moved a byte, in ms since the relay started.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    /// Resolves with TimedOut once `idle` passes with no activity.
    async fn watchdog(&self, idle: Duration) -> io::Result<()> {
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

/// Relays until both directions reach EOF, an error, or the idle timeout.
/// `early` holds client bytes that arrived with the handshake; they go first.
pub async fn relay(
    client: TcpStream,
    mut remote: TcpStream,
    early: &[u8],
    shared: &Shared,
    session: &Bytes,
) -> io::Result<()> {
    let stats = &shared.stats;
    if !early.is_empty() {
        remote.write_all(early).await?;
        count(&stats.bytes_to_remote, &session.up, early.len());
    }
    #[cfg(target_os = "linux")]
    if shared.config.use_splice {
        let activity = Activity::new();
        let to_remote = (&stats.bytes_to_remote, &session.up);
        let to_client = (&stats.bytes_to_client, &session.down);
        let pool = pipes();
        let both = async {
            tokio::try_join!(
                splice::one_way(&client, &remote, to_remote, &activity, pool),
                splice::one_way(&remote, &client, to_client, &activity, pool),
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
fn count(listener: &AtomicU64, session: &AtomicU64, n: usize) {
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
    let stats = &shared.stats;
    let activity = Activity::new();
    let (mut cr, mut cw) = client.split();
    let (mut rr, mut rw) = remote.split();
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
    let activity = Activity::new();
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut rr, mut rw) = tokio::io::split(remote);
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
fn pipes() -> &'static PipePool {
    PIPES.get_or_init(PipePool::default)
}

/// Idle splice pipes kept for reuse in this process (each holds 2 fds).
pub fn pooled_pipes() -> usize {
    pipes().len()
}

fn ignore_not_connected(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotConnected {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(target_os = "linux")]
mod splice {
    use super::{ignore_not_connected, Activity};
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::sync::atomic::AtomicU64;
    use std::sync::Mutex;
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    /// Bytes asked of the kernel per splice call, and the pipe size we request
    /// (the default pipe-max-size). Against 256 KiB it bought 1.05-1.24x the
    /// throughput at 0.66-0.75x the CPU per GB (docs/benchmarks.md).
    const PIPE_SIZE: usize = 1024 * 1024;
    /// Idle pipes kept for reuse; beyond this they are closed.
    const POOL_MAX: usize = 256;

    pub struct Pipe {
        r: OwnedFd,
        w: OwnedFd,
    }

    /// Idle pipes of this process. It lives in a `PerProcess` cell, so a forked
    /// child never shares the parent's pipes, nor a lock held at fork time.
    #[derive(Default)]
    pub struct PipePool(Mutex<Vec<Pipe>>);

    impl PipePool {
        pub fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }

        fn take(&self) -> io::Result<Pipe> {
            if let Some(p) = self.0.lock().unwrap().pop() {
                return Ok(p);
            }
            new_pipe()
        }

        /// Only empty pipes go back; one holding bytes is closed with them.
        fn give_back(&self, p: Pipe) {
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

    fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
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

    pub async fn one_way(
        src: &TcpStream,
        dst: &TcpStream,
        counter: (&AtomicU64, &AtomicU64),
        activity: &Activity,
        pool: &PipePool,
    ) -> io::Result<()> {
        loop {
            src.readable().await?;
            let pipe = pool.take()?;
            let n = match src.try_io(Interest::READABLE, || {
                splice(src.as_raw_fd(), pipe.w.as_raw_fd(), PIPE_SIZE)
            }) {
                Ok(0) => {
                    pool.give_back(pipe);
                    socket2::SockRef::from(dst)
                        .shutdown(std::net::Shutdown::Write)
                        .or_else(ignore_not_connected)?;
                    return Ok(());
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
                dst.writable().await?;
                match dst.try_io(Interest::WRITABLE, || {
                    splice(pipe.r.as_raw_fd(), dst.as_raw_fd(), left)
                }) {
                    Ok(m) => {
                        left -= m;
                        super::count(counter.0, counter.1, m);
                        activity.touch();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // `pipe` still holds bytes: dropping it closes it.
                    Err(e) => return Err(e),
                }
            }
            pool.give_back(pipe);
        }
    }
}
