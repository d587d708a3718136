//! The relay of a session with `limits` (see `policy::limits`): the same splice
//! and userspace paths as `relay.rs`, plus accounting, and for sessions that
//! shape or meter bytes (bandwidth, quota) a question before each write: how much
//! may go now ([`SessionLimits::try_permit`], atomics only; rarely a timer or a
//! quota chunk, boxed). A separate copy of the loops so that sessions without
//! limits keep exactly the relay, and the future size, they had. Callers box
//! [`relay_any_limited`].

use super::relay::{ignore_not_connected, Activity};
use crate::policy::limits::{Cut, Dir, SessionLimits};
use crate::server::config::Shared;
use crate::server::relay::count;
use crate::server::sessions::Bytes;
use std::io;
use std::sync::atomic::AtomicU64;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A quota cut as the relay's error; the session's log line says why.
fn cut(c: Cut) -> io::Error {
    io::Error::other(c)
}

/// How many of `want` bytes may go now (all of them unless shaped or metered).
async fn permit(l: &SessionLimits, dir: Dir, want: usize) -> io::Result<usize> {
    if !l.meters_bytes() {
        return Ok(want);
    }
    match l.try_permit(dir, want).map_err(cut)? {
        Some(n) => Ok(n),
        None => Box::pin(l.permit_slow(dir, want)).await.map_err(cut),
    }
}

/// Accounts `moved` of `permitted` bytes (metered sessions give the rest back).
fn record(l: &SessionLimits, dir: Dir, permitted: usize, moved: usize) {
    if l.meters_bytes() {
        l.record(dir, permitted, moved);
    } else {
        l.count(dir, moved as u64);
    }
}

/// `relay_any` for a session with limits, which it owns until the relay ends.
pub async fn relay_any_limited(
    client: crate::host::stream::ClientStream,
    remote: crate::egress::EgressStream,
    early: &[u8],
    shared: &Shared,
    session: &Bytes,
    limits: Box<SessionLimits>,
) -> io::Result<()> {
    use crate::host::stream::MaybeTls::Plain;
    let l = &*limits;
    match (client, remote) {
        (Plain(c), Plain(r)) => relay(c, r, early, shared, session, l).await,
        (c, r) => relay_streams(c, r, early, shared, session, l).await,
    }
}

async fn write_early<W: AsyncWrite + Unpin>(
    remote: &mut W,
    early: &[u8],
    shared: &Shared,
    session: &Bytes,
    l: &SessionLimits,
) -> io::Result<()> {
    if !early.is_empty() {
        remote.write_all(early).await?;
        count(&shared.stats.bytes_to_remote, &session.up, early.len());
        l.count(Dir::Up, early.len() as u64);
    }
    Ok(())
}

async fn relay(
    client: TcpStream,
    mut remote: TcpStream,
    early: &[u8],
    shared: &Shared,
    session: &Bytes,
    l: &SessionLimits,
) -> io::Result<()> {
    write_early(&mut remote, early, shared, session, l).await?;
    let stats = &shared.stats;
    #[cfg(target_os = "linux")]
    if shared.config.use_splice {
        let activity = Activity::new();
        let to_remote = (&stats.bytes_to_remote, &session.up);
        let to_client = (&stats.bytes_to_client, &session.down);
        let both = async {
            tokio::try_join!(
                splice_one_way(&client, &remote, to_remote, &activity, l, Dir::Up),
                splice_one_way(&remote, &client, to_client, &activity, l, Dir::Down),
            )
        };
        return tokio::select! {
            r = both => r.map(|_| ()),
            r = activity.watchdog(shared.config.timeout) => r,
        };
    }
    let (mut client, mut remote) = (client, remote);
    let activity = Activity::new();
    let (mut cr, mut cw) = client.split();
    let (mut rr, mut rw) = remote.split();
    let both = async {
        tokio::try_join!(
            copy_one_way(
                &mut cr,
                &mut rw,
                (&stats.bytes_to_remote, &session.up),
                &activity,
                l,
                Dir::Up
            ),
            copy_one_way(
                &mut rr,
                &mut cw,
                (&stats.bytes_to_client, &session.down),
                &activity,
                l,
                Dir::Down
            ),
        )
    };
    tokio::select! {
        r = both => r.map(|_| ()),
        r = activity.watchdog(shared.config.timeout) => r,
    }
}

async fn relay_streams<C, R>(
    client: C,
    mut remote: R,
    early: &[u8],
    shared: &Shared,
    session: &Bytes,
    l: &SessionLimits,
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + AsyncWrite + Unpin,
{
    write_early(&mut remote, early, shared, session, l).await?;
    let stats = &shared.stats;
    let activity = Activity::new();
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut rr, mut rw) = tokio::io::split(remote);
    let both = async {
        tokio::try_join!(
            copy_one_way(
                &mut cr,
                &mut rw,
                (&stats.bytes_to_remote, &session.up),
                &activity,
                l,
                Dir::Up
            ),
            copy_one_way(
                &mut rr,
                &mut cw,
                (&stats.bytes_to_client, &session.down),
                &activity,
                l,
                Dir::Down
            ),
        )
    };
    tokio::select! {
        r = both => r.map(|_| ()),
        r = activity.watchdog(shared.config.timeout) => r,
    }
}

/// Userspace copy: read, then write what the limits allow, waiting for the rest.
async fn copy_one_way<R, W>(
    r: &mut R,
    w: &mut W,
    counter: (&AtomicU64, &AtomicU64),
    activity: &Activity,
    l: &SessionLimits,
    dir: Dir,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            w.shutdown().await.or_else(ignore_not_connected)?;
            return Ok(());
        }
        let mut off = 0;
        while off < n {
            let ok = permit(l, dir, n - off).await?;
            let res = w.write_all(&buf[off..off + ok]).await;
            record(l, dir, ok, if res.is_ok() { ok } else { 0 });
            res?;
            off += ok;
            count(counter.0, counter.1, ok);
            activity.touch();
        }
    }
}

/// splice(2) socket -> pipe -> socket; the pipe -> socket half asks first.
#[cfg(target_os = "linux")]
async fn splice_one_way(
    src: &TcpStream,
    dst: &TcpStream,
    counter: (&AtomicU64, &AtomicU64),
    activity: &Activity,
    l: &SessionLimits,
    dir: Dir,
) -> io::Result<()> {
    use super::relay::splice::{splice, PIPE_SIZE};
    use std::os::fd::AsRawFd;
    use tokio::io::Interest;
    let pool = super::relay::pipes();
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
            let allowed = permit(l, dir, left).await?;
            let mut part = allowed;
            while part > 0 {
                dst.writable().await?;
                match dst.try_io(Interest::WRITABLE, || {
                    splice(pipe.r.as_raw_fd(), dst.as_raw_fd(), part)
                }) {
                    Ok(m) => {
                        part -= m;
                        left -= m;
                        count(counter.0, counter.1, m);
                        activity.touch();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // `pipe` still holds bytes: dropping it closes it.
                    Err(e) => {
                        record(l, dir, allowed, allowed - part);
                        return Err(e);
                    }
                }
            }
            record(l, dir, allowed, allowed);
        }
        pool.give_back(pipe);
    }
}
