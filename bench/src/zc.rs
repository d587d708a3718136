//! Cheap ends for bulk streams: sendfile(2) from a memfd to send, splice(2) into
//! /dev/null to receive; or plain read/write with 64 KiB buffers (`--no-zerocopy`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

const CHUNK: usize = 1 << 20;
const SOURCE_SIZE: i64 = 4 << 20;
const BUF: usize = 64 * 1024;

/// A memfd full of bytes to sendfile(2) from (offsets are per call, so one is shared).
pub struct Source {
    fd: OwnedFd,
}

impl Source {
    pub fn new() -> io::Result<Self> {
        let fd = unsafe { libc::memfd_create(c"socksbench".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let block: Vec<u8> = (0..BUF).map(|i| (i * 7 + 13) as u8).collect();
        let mut f = std::fs::File::from(fd.try_clone()?);
        for _ in 0..(SOURCE_SIZE as usize / BUF) {
            io::Write::write_all(&mut f, &block)?;
        }
        Ok(Source { fd })
    }
}

fn cvt(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Sends until `stop` or an error; counts bytes handed to the kernel.
pub async fn fill(
    s: &mut TcpStream,
    zerocopy: bool,
    src: &Source,
    count: &AtomicU64,
    stop: &AtomicBool,
) -> io::Result<()> {
    if !zerocopy {
        return fill_stream(s, count, stop).await;
    }
    let mut off: libc::off_t = 0;
    while !stop.load(Ordering::Relaxed) {
        s.writable().await?;
        let r = s.try_io(Interest::WRITABLE, || {
            cvt(unsafe { libc::sendfile(s.as_raw_fd(), src.fd.as_raw_fd(), &mut off, CHUNK) })
        });
        match r {
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
                if off >= SOURCE_SIZE {
                    off = 0;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Receives until EOF, `stop` or an error; counts bytes received.
pub async fn drain(
    s: &mut TcpStream,
    zerocopy: bool,
    count: &AtomicU64,
    stop: &AtomicBool,
) -> io::Result<()> {
    if !zerocopy {
        return drain_stream(s, count, stop).await;
    }
    let (pr, pw) = pipe()?;
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    while !stop.load(Ordering::Relaxed) {
        s.readable().await?;
        let r = s.try_io(Interest::READABLE, || {
            splice(s.as_raw_fd(), pw.as_raw_fd(), CHUNK)
        });
        match r {
            Ok(0) => return Ok(()),
            Ok(n) => {
                let mut left = n;
                while left > 0 {
                    left -= splice(pr.as_raw_fd(), null.as_raw_fd(), left)?;
                }
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub async fn fill_stream<S: AsyncWrite + Unpin + ?Sized>(
    s: &mut S,
    count: &AtomicU64,
    stop: &AtomicBool,
) -> io::Result<()> {
    let buf: Vec<u8> = (0..BUF).map(|i| (i * 7 + 13) as u8).collect();
    while !stop.load(Ordering::Relaxed) {
        let n = s.write(&buf).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    s.flush().await
}

pub async fn drain_stream<S: AsyncRead + Unpin + ?Sized>(
    s: &mut S,
    count: &AtomicU64,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    while !stop.load(Ordering::Relaxed) {
        let n = match s.read(&mut buf).await {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(());
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(())
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Bigger pipe, fewer syscalls; without the privilege to grow it, the default works.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
    Ok((r, w))
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    cvt(unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    })
}
