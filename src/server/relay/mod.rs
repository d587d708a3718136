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

/// `relay`, for a session with `limits` too: the same paths, asking the limits
/// before each write (a [`Meter`] per direction).
async fn relay_plain(
    client: TcpStream,
    mut remote: TcpStream,
    early: &[u8],
    shared: &Shared,
    session: &Bytes,
    limits: Option<&SessionLimits>,
) -> io::Result<()> {
    write_early(&mut remote, early, shared, session, limits).await?;
    #[cfg(target_os = "linux")]
    if shared.config.use_splice {
        let stats = &shared.stats;
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
    Box::pin(copy_both(client, remote, shared, session, limits)).await
}

/// Client bytes that arrived with the handshake go first, counted as relayed.
async fn write_early<W: AsyncWrite + Unpin>(
    remote: &mut W,
    early: &[u8],
    shared: &Shared,
    session: &Bytes,
    limits: Option<&SessionLimits>,
) -> io::Result<()> {
    if !early.is_empty() {
        remote.write_all(early).await?;
        count(&shared.stats.bytes_to_remote, &session.up, early.len());
        if let Some(l) = limits {
            l.count(Dir::Up, early.len() as u64);
        }
    }
    Ok(())
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
    limits: Option<&SessionLimits>,
) -> io::Result<()> {
    copy_halves(client.split(), remote.split(), shared, session, limits).await
}

/// Both directions of a userspace relay over split halves, with the idle
/// watchdog: shared by the plain-TCP copy and the any-stream (TLS) relay.
async fn copy_halves<CR, CW, RR, RW>(
    (mut cr, mut cw): (CR, CW),
    (mut rr, mut rw): (RR, RW),
    shared: &Shared,
    session: &Bytes,
    limits: Option<&SessionLimits>,
) -> io::Result<()>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    RR: AsyncRead + Unpin,
    RW: AsyncWrite + Unpin,
{
    let stats = &shared.stats;
    let activity = Activity::new();
    let up = (&stats.bytes_to_remote, &session.up);
    let down = (&stats.bytes_to_client, &session.down);
    let (mup, mdown) = (
        limits.map(|l| Meter::new(l, Dir::Up)),
        limits.map(|l| Meter::new(l, Dir::Down)),
    );
    let both = async {
        tokio::try_join!(
            copy_one_way(&mut cr, &mut rw, up, &activity, mup),
            copy_one_way(&mut rr, &mut cw, down, &activity, mdown),
        )
    };
    tokio::select! {
        r = both => r.map(|_| ()),
        r = activity.watchdog(shared.config.timeout) => r,
    }
}

/// Picks the relay for a client/remote pair: splice when both ends are plain TCP,
/// userspace copy when either end is TLS (splice cannot see the plaintext).
/// `limits`: the session's, when its listener has any (`policy::limits`).
pub async fn relay_any(
    client: crate::host::stream::ClientStream,
    remote: crate::egress::EgressStream,
    early: &[u8],
    shared: &Shared,
    session: &Bytes,
    limits: Option<&SessionLimits>,
) -> io::Result<()> {
    use crate::host::stream::MaybeTls::Plain;
    match (client, remote) {
        (Plain(c), Plain(r)) => relay_plain(c, r, early, shared, session, limits).await,
        // TLS relays hold whole TLS streams: boxed, so they do not grow every
        // session's future (an idle plain relay pays only for what it uses).
        (c, r) => Box::pin(relay_streams(c, r, early, shared, session, limits)).await,
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
    limits: Option<&SessionLimits>,
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + AsyncWrite + Unpin,
{
    write_early(&mut remote, early, shared, session, limits).await?;
    copy_halves(
        tokio::io::split(client),
        tokio::io::split(remote),
        shared,
        session,
        limits,
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
    meter: Option<Meter<'_>>,
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
            write_metered(w, &small[..n], counter, activity, meter).await?;
            buf = vec![0u8; BUF];
        } else {
            write_metered(w, &buf[..n], counter, activity, meter).await?;
        }
    }
}

/// Writes `data` on, in the parts the session's limits allow (waiting for the
/// rest), counting each part as it goes.
async fn write_metered<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
    counter: (&AtomicU64, &AtomicU64),
    activity: &Activity,
    meter: Option<Meter<'_>>,
) -> io::Result<()> {
    let Some(meter) = meter else {
        w.write_all(data).await?;
        count(counter.0, counter.1, data.len());
        activity.touch();
        return Ok(());
    };
    let mut off = 0;
    while off < data.len() {
        let ok = meter.grant(data.len() - off).await?;
        let res = w.write_all(&data[off..off + ok]).await;
        meter.done(ok, if res.is_ok() { ok } else { 0 });
        res?;
        off += ok;
        count(counter.0, counter.1, ok);
        activity.touch();
    }
    Ok(())
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
pub(super) mod splice;

#[cfg(all(test, target_os = "linux"))]
mod tests;
