//! The relay of a session with `limits` (see `policy::limits`): accounting, and
//! for sessions that shape or meter bytes (bandwidth, quota) a question before
//! each write: how much may go now ([`SessionLimits::try_permit`], atomics only;
//! rarely a timer or a quota chunk, boxed). Plain TCP with splice goes through
//! `relay.rs`'s copy-then-splice path with a [`Meter`]; the userspace copy for
//! TLS and `use_splice = false` is here, so sessions without limits keep the
//! future size they had. Callers box [`relay_any_limited`].

use super::relay::{ignore_not_connected, Activity, Meter};
use crate::policy::limits::{Dir, SessionLimits};
use crate::server::config::Shared;
use crate::server::relay::count;
use crate::server::sessions::Bytes;
use std::io;
use std::sync::atomic::AtomicU64;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

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
    // Splice: the unlimited relay's own copy-then-splice path, asking first.
    #[cfg(target_os = "linux")]
    if shared.config.use_splice {
        return super::relay::relay_plain(client, remote, early, shared, session, Some(l)).await;
    }
    write_early(&mut remote, early, shared, session, l).await?;
    let (mut client, mut remote) = (client, remote);
    copy_halves(client.split(), remote.split(), shared, session, l).await
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
    copy_halves(
        tokio::io::split(client),
        tokio::io::split(remote),
        shared,
        session,
        l,
    )
    .await
}

/// Both directions over split halves, with the idle watchdog: shared by the
/// plain-TCP copy (`use_splice = false`) and the any-stream (TLS) relay.
async fn copy_halves<CR, CW, RR, RW>(
    (mut cr, mut cw): (CR, CW),
    (mut rr, mut rw): (RR, RW),
    shared: &Shared,
    session: &Bytes,
    l: &SessionLimits,
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
    let both = async {
        tokio::try_join!(
            copy_one_way(&mut cr, &mut rw, up, &activity, l, Dir::Up),
            copy_one_way(&mut rr, &mut cw, down, &activity, l, Dir::Down),
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
        let meter = Meter::new(l, dir);
        let mut off = 0;
        while off < n {
            let ok = meter.grant(n - off).await?;
            let res = w.write_all(&buf[off..off + ok]).await;
            meter.done(ok, if res.is_ok() { ok } else { 0 });
            res?;
            off += ok;
            count(counter.0, counter.1, ok);
            activity.touch();
        }
    }
}
