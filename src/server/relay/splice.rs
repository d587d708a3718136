//! splice(2) relaying for plain TCP: the pipe pool, and one direction's
//! copy-then-splice loop (see the parent module).

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
