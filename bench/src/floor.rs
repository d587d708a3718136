//! `socksbench floor --listen ADDR`: the cheapest SOCKS5 proxy this harness can
//! think of, as a lower bound for CPU per connection (issue 19).
//!
//! One thread, one edge-triggered epoll set, no allocation per connection beyond
//! a slab slot, no timers, no socket options, no logging, no limits: greeting
//! (no auth), CONNECT to an IPv4 address, then a read/write relay with
//! half-close. Anything else closes the connection. It assumes each handshake
//! message arrives in one read, which holds for `socksbench cycles` and would
//! not for a real client: this is a yardstick, not a proxy.
//!
//! Whatever it costs per connection is kernel work (two TCP connections, their
//! epoll registration, six small messages and two teardowns) plus the least
//! user space a proxy can have, so no proxy doing the same job on this kernel
//! spends much less.

use crate::{Args, Res};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{IntoRawFd, RawFd};

const LISTENER: u64 = u64::MAX;
const BUF: usize = 16 * 1024;

#[derive(PartialEq)]
enum State {
    Greeting,
    Request,
    Connecting,
    Relay,
}

struct Conn {
    client: RawFd,
    remote: RawFd,
    state: State,
    /// Read EOF seen from the client (towards remote) / from the remote.
    up_eof: bool,
    down_eof: bool,
    /// The peer's FIN (EPOLLRDHUP) was seen on the client / remote socket: a short
    /// read no longer means drained, as the EOF after it sends no new edge.
    client_rdhup: bool,
    remote_rdhup: bool,
    /// Bytes read but not yet written (a partial write), per direction.
    up_pending: Vec<u8>,
    down_pending: Vec<u8>,
}

pub fn run(args: &Args) -> Res<()> {
    let addr: SocketAddr = args.req("listen")?.parse()?;
    let l = TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    println!("READY {}", l.local_addr()?);
    let lfd = l.into_raw_fd();
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    ctl_add(ep, lfd, libc::EPOLLIN as u32, LISTENER)?;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; BUF];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        for ev in &events[..n as usize] {
            let key = ev.u64;
            if key == LISTENER {
                accept_all(ep, lfd, &mut conns, &mut free);
                continue;
            }
            let id = (key >> 1) as usize;
            let hup = ev.events & (libc::EPOLLRDHUP | libc::EPOLLHUP) as u32 != 0;
            let done = match conns.get_mut(id).and_then(Option::as_mut) {
                Some(c) => {
                    if hup && key & 1 == 1 {
                        c.remote_rdhup = true;
                    } else if hup {
                        c.client_rdhup = true;
                    }
                    !drive(ep, id, key & 1 == 1, c, &mut buf)
                }
                None => false,
            };
            if done {
                if let Some(c) = conns[id].take() {
                    unsafe {
                        libc::close(c.client);
                        if c.remote >= 0 {
                            libc::close(c.remote);
                        }
                    }
                    free.push(id);
                }
            }
        }
    }
}

fn accept_all(ep: RawFd, lfd: RawFd, conns: &mut Vec<Option<Conn>>, free: &mut Vec<usize>) {
    loop {
        let fd = unsafe {
            libc::accept4(
                lfd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return; // EAGAIN, or an error the next edge retries
        }
        let id = free.pop().unwrap_or_else(|| {
            conns.push(None);
            conns.len() - 1
        });
        let flags = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
        if ctl_add(ep, fd, flags, (id as u64) << 1).is_err() {
            unsafe { libc::close(fd) };
            free.push(id);
            continue;
        }
        conns[id] = Some(Conn {
            client: fd,
            remote: -1,
            state: State::Greeting,
            up_eof: false,
            down_eof: false,
            client_rdhup: false,
            remote_rdhup: false,
            up_pending: Vec::new(),
            down_pending: Vec::new(),
        });
    }
}

fn ctl_add(ep: RawFd, fd: RawFd, events: u32, key: u64) -> std::io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: key };
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

enum Io {
    Data(usize),
    Eof,
    Again,
    Fail,
}

fn read(fd: RawFd, buf: &mut [u8]) -> Io {
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    match n {
        0 => Io::Eof,
        n if n > 0 => Io::Data(n as usize),
        _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock => Io::Again,
        _ => Io::Fail,
    }
}

/// Writes what it can; returns the unwritten tail's start, or None on error.
fn write(fd: RawFd, data: &[u8]) -> Option<usize> {
    let mut off = 0;
    while off < data.len() {
        let n = unsafe {
            libc::send(
                fd,
                data[off..].as_ptr().cast(),
                data.len() - off,
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return match std::io::Error::last_os_error().kind() {
                std::io::ErrorKind::WouldBlock => Some(off),
                _ => None,
            };
        }
        off += n as usize;
    }
    Some(off)
}

/// Moves the connection on as far as it goes; false when it is over.
fn drive(ep: RawFd, id: usize, from_remote: bool, c: &mut Conn, buf: &mut [u8]) -> bool {
    loop {
        match c.state {
            State::Greeting => match read(c.client, buf) {
                Io::Data(n) if n >= 3 && buf[0] == 5 && buf[2..n].contains(&0) => {
                    if write(c.client, &[5, 0]) != Some(2) {
                        return false;
                    }
                    c.state = State::Request;
                }
                Io::Again => return true,
                _ => return false,
            },
            State::Request => match read(c.client, buf) {
                Io::Data(10) if buf[..4] == [5, 1, 0, 1] => {
                    let ip = [buf[4], buf[5], buf[6], buf[7]];
                    let port = u16::from_be_bytes([buf[8], buf[9]]);
                    let fd = unsafe {
                        libc::socket(
                            libc::AF_INET,
                            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                            0,
                        )
                    };
                    if fd < 0 {
                        return false;
                    }
                    c.remote = fd;
                    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                    sa.sin_family = libc::AF_INET as u16;
                    sa.sin_port = port.to_be();
                    sa.sin_addr.s_addr = u32::from_ne_bytes(ip);
                    let r = unsafe {
                        libc::connect(
                            fd,
                            (&sa as *const libc::sockaddr_in).cast(),
                            std::mem::size_of::<libc::sockaddr_in>() as u32,
                        )
                    };
                    if r < 0
                        && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS)
                    {
                        let _ = write(c.client, &[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]);
                        return false;
                    }
                    let flags =
                        (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
                    if ctl_add(ep, fd, flags, ((id as u64) << 1) | 1).is_err() {
                        return false;
                    }
                    c.state = State::Connecting;
                    return true; // the remote's first edge (writable or error) comes next
                }
                Io::Again => return true,
                _ => return false,
            },
            // The remote's first edge (writable, or an error) ends the connect;
            // the client's edges meanwhile are its own writability.
            State::Connecting if !from_remote => return true,
            State::Connecting => {
                let mut err: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                let r = unsafe {
                    libc::getsockopt(
                        c.remote,
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        (&mut err as *mut libc::c_int).cast(),
                        &mut len,
                    )
                };
                if r < 0 || err != 0 {
                    let _ = write(c.client, &[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]);
                    return false;
                }
                if write(c.client, &[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]) != Some(10) {
                    return false;
                }
                c.state = State::Relay;
            }
            State::Relay => {
                if !pump(
                    c.client,
                    c.remote,
                    c.client_rdhup,
                    &mut c.up_eof,
                    c.down_eof,
                    &mut c.up_pending,
                    buf,
                ) || !pump(
                    c.remote,
                    c.client,
                    c.remote_rdhup,
                    &mut c.down_eof,
                    c.up_eof,
                    &mut c.down_pending,
                    buf,
                ) {
                    return false;
                }
                return !(c.up_eof
                    && c.down_eof
                    && c.up_pending.is_empty()
                    && c.down_pending.is_empty());
            }
        }
    }
}

/// One direction: flush what is pending, then read until a short read (until
/// EOF or EAGAIN once the peer's FIN was seen) and write it on. EOF half-closes the destination, except for the second EOF: the close
/// that follows sends that FIN. False on an error (the connection is over).
#[allow(clippy::too_many_arguments)]
fn pump(
    from: RawFd,
    to: RawFd,
    rdhup: bool,
    eof: &mut bool,
    other_eof: bool,
    pending: &mut Vec<u8>,
    buf: &mut [u8],
) -> bool {
    if *eof && pending.is_empty() {
        return true; // this direction is over (and half-closed if it was first)
    }
    if !pending.is_empty() {
        match write(to, pending) {
            Some(n) => {
                pending.drain(..n);
                if !pending.is_empty() {
                    return true;
                }
                if *eof {
                    if !other_eof {
                        unsafe { libc::shutdown(to, libc::SHUT_WR) };
                    }
                    return true;
                }
            }
            None => return false,
        }
    }
    while !*eof {
        match read(from, buf) {
            Io::Data(n) => match write(to, &buf[..n]) {
                Some(w) if w == n => {
                    if n < buf.len() && !rdhup {
                        return true; // a short read drained the queue; the next edge says more
                    }
                }
                Some(w) => {
                    pending.extend_from_slice(&buf[w..n]);
                    return true;
                }
                None => return false,
            },
            Io::Eof => {
                *eof = true;
                if pending.is_empty() && !other_eof {
                    unsafe { libc::shutdown(to, libc::SHUT_WR) };
                }
            }
            Io::Again => return true,
            Io::Fail => return false,
        }
    }
    true
}
