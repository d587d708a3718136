//! UDP ASSOCIATE load (issue 15): datagrams/s and CPU per datagram through a
//! SOCKS5 UDP relay, and the footprint of idle associations.
//!
//!   udp-echo --listen ADDR
//!   udp      --target ADDR [--proxy ADDR] --size BYTES --associations N [--window W]
//!   udp-idle --target ADDR --proxy ADDR --count N [--hold S]
//!
//! `udp`: each association is a control connection plus a UDP socket connected
//! to the relay, keeping `--window` datagrams in flight against the echo (as
//! datagrams come back, as many go out). If none comes back within 50 ms, those
//! in flight are counted lost and the window is sent again, so loss cannot
//! stall it. Results count echoed datagrams (each crossed the relay twice).
//!
//! Both ends batch (recvmmsg/sendmmsg: one call for every datagram ready), on
//! one blocking thread per association and one for the echo, so the load
//! client costs far less per datagram than any relay it measures: on two
//! cores, a client as expensive as the relay would measure itself.

use crate::args::Args;
use crate::measure::{self, Window};
use crate::{emit, f, q, Res};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Datagrams one batched call moves at most.
const BATCH: usize = 64;

/// Buffers and headers for recvmmsg/sendmmsg of up to [`BATCH`] datagrams.
struct Batch {
    bufs: Vec<Vec<u8>>,
    iov: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    hdrs: Vec<libc::mmsghdr>,
}

// The raw pointers point into the Batch's own vectors, which never move.
unsafe impl Send for Batch {}

impl Batch {
    fn new(size: usize) -> Batch {
        let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; size]).collect();
        let iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: all-zero is a valid sockaddr_storage and mmsghdr.
        let addrs = vec![unsafe { std::mem::zeroed::<libc::sockaddr_storage>() }; BATCH];
        let hdrs = vec![unsafe { std::mem::zeroed::<libc::mmsghdr>() }; BATCH];
        let mut b = Batch {
            bufs,
            iov,
            addrs,
            hdrs,
        };
        for i in 0..BATCH {
            b.hdrs[i].msg_hdr.msg_iov = &mut b.iov[i];
            b.hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        b
    }

    /// Receives up to BATCH datagrams (blocks for the first: MSG_WAITFORONE),
    /// noting each one's length and sender. 0 on a receive timeout.
    fn recv(&mut self, fd: i32, with_addr: bool) -> std::io::Result<usize> {
        for i in 0..BATCH {
            self.iov[i].iov_len = self.bufs[i].len();
            let h = &mut self.hdrs[i].msg_hdr;
            if with_addr {
                h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            } else {
                h.msg_name = std::ptr::null_mut();
                h.msg_namelen = 0;
            }
        }
        // SAFETY: hdrs point at BATCH live buffers and address slots.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Ok(0),
                std::io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        for i in 0..n as usize {
            self.iov[i].iov_len = self.hdrs[i].msg_len as usize;
        }
        Ok(n as usize)
    }

    /// Sends datagrams 0..n as they are (lengths and addresses from `recv`, or
    /// set by the caller); retries the rest after a partial send.
    fn send(&mut self, fd: i32, n: usize) -> std::io::Result<()> {
        let mut done = 0;
        while done < n {
            // SAFETY: as in recv; entries done..n are initialised.
            let r =
                unsafe { libc::sendmmsg(fd, self.hdrs[done..].as_mut_ptr(), (n - done) as u32, 0) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            done += r as usize;
        }
        Ok(())
    }
}

/// The echo end: one blocking thread, recvmmsg then sendmmsg back to each sender.
pub fn echo(args: &Args) -> Res<()> {
    use std::os::fd::AsRawFd;
    let addr: SocketAddr = args.req("listen")?.parse()?;
    let s = std::net::UdpSocket::bind(addr)?;
    println!("READY {}", s.local_addr()?);
    let fd = s.as_raw_fd();
    let mut b = Batch::new(65_536);
    loop {
        let n = b.recv(fd, true)?;
        // Send errors (a client gone) drop that batch, as sendto's did.
        let _ = b.send(fd, n);
    }
}

/// An association: the control connection (kept open) and our socket,
/// connected to the relay; `header` goes in front of every payload.
struct Assoc {
    _control: Option<TcpStream>,
    sock: UdpSocket,
    header: Vec<u8>,
}

async fn associate(proxy: Option<SocketAddr>, target: SocketAddr) -> Res<Assoc> {
    let local = if target.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let sock = UdpSocket::bind(local).await?;
    let Some(proxy) = proxy else {
        sock.connect(target).await?;
        return Ok(Assoc {
            _control: None,
            sock,
            header: Vec::new(),
        });
    };
    let mut c = TcpStream::connect(proxy).await?;
    c.set_nodelay(true)?;
    c.write_all(&[5, 1, 0]).await?;
    let mut sel = [0u8; 2];
    c.read_exact(&mut sel).await?;
    if sel != [5, 0] {
        return Err(format!("proxy chose method {sel:?}").into());
    }
    // DST = our socket, so relays that match the client port (Dante) accept it.
    let port = sock.local_addr()?.port();
    c.write_all(&[5, 3, 0, 1, 0, 0, 0, 0]).await?;
    c.write_all(&port.to_be_bytes()).await?;
    let mut head = [0u8; 4];
    c.read_exact(&mut head).await?;
    if head[1] != 0 {
        return Err(format!("UDP ASSOCIATE refused: reply {}", head[1]).into());
    }
    let ip: IpAddr = match head[3] {
        1 => {
            let mut a = [0u8; 4];
            c.read_exact(&mut a).await?;
            a.into()
        }
        4 => {
            let mut a = [0u8; 16];
            c.read_exact(&mut a).await?;
            a.into()
        }
        t => return Err(format!("relay address type {t}").into()),
    };
    let mut p = [0u8; 2];
    c.read_exact(&mut p).await?;
    let ip = if ip.is_unspecified() { proxy.ip() } else { ip };
    sock.connect(SocketAddr::new(ip, u16::from_be_bytes(p)))
        .await?;
    let mut header = vec![0, 0, 0];
    match target {
        SocketAddr::V4(a) => {
            header.push(1);
            header.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            header.push(4);
            header.extend_from_slice(&a.ip().octets());
        }
    }
    header.extend_from_slice(&target.port().to_be_bytes());
    Ok(Assoc {
        _control: Some(c),
        sock,
        header,
    })
}

pub async fn load(args: &Args) -> Res<()> {
    let proxy: Option<SocketAddr> = args.get("proxy").map(|p| p.parse()).transpose()?;
    let target: SocketAddr = args.req("target")?.parse()?;
    let size = args.usize("size", 64);
    let n = args.usize("associations", 1);
    let window = args.usize("window", 32);
    let pre = Window::prepare(args).await;
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let recording = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut controls = Vec::new();
    for _ in 0..n {
        let a = associate(proxy, target).await?;
        let (stop, echoed, lost, rec) = (
            stop.clone(),
            echoed.clone(),
            lost.clone(),
            recording.clone(),
        );
        // The control connection stays here (closing it ends the association);
        // the datagrams go on a blocking thread of their own.
        let sock = a.sock.into_std()?;
        controls.push(a._control);
        tasks.push(std::thread::spawn(move || -> std::io::Result<()> {
            use std::os::fd::AsRawFd;
            sock.set_nonblocking(false)?;
            sock.set_read_timeout(Some(Duration::from_millis(50)))?;
            let fd = sock.as_raw_fd();
            let mut d = a.header.clone();
            d.resize(a.header.len() + size, 0x5a);
            let mut out = Batch::new(d.len());
            for b in out.bufs.iter_mut() {
                b.copy_from_slice(&d);
            }
            let mut inb = Batch::new(65_536);
            let window = window.max(1);
            let mut in_flight = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // Fill the window, at most BATCH per call.
                while in_flight < window {
                    let k = (window - in_flight).min(BATCH);
                    out.send(fd, k)?;
                    in_flight += k;
                }
                let k = inb.recv(fd, false)?;
                if k == 0 {
                    // Nothing back within 50 ms: what was in flight is lost.
                    if rec.load(Ordering::Relaxed) {
                        lost.fetch_add(in_flight as u64, Ordering::Relaxed);
                    }
                    in_flight = 0;
                    continue;
                }
                let good = (0..k)
                    .filter(|&i| inb.hdrs[i].msg_len as usize == d.len())
                    .count();
                if rec.load(Ordering::Relaxed) {
                    echoed.fetch_add(good as u64, Ordering::Relaxed);
                }
                in_flight = in_flight.saturating_sub(k);
            }
            Ok(())
        }));
    }
    let w = {
        let echoed = echoed.clone();
        let rec = recording.clone();
        pre.run_with(
            args,
            move || echoed.load(Ordering::Relaxed),
            move |on| rec.store(on, Ordering::Relaxed),
        )
        .await
    };
    stop.store(true, Ordering::Relaxed);
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        // Each thread sees `stop` within one 50 ms receive timeout.
        if let Ok(Err(e)) = tokio::task::block_in_place(|| t.join()) {
            errors += 1;
            first_error.get_or_insert_with(|| e.to_string());
        }
    }
    drop(controls);
    let count = w.end.count - w.start.count;
    let secs = w.secs();
    let proxy_cpu = w.proxy_cpu();
    let mut out = w.common(args);
    out.push(("associations", n.to_string()));
    out.push(("size", size.to_string()));
    out.push(("window", window.to_string()));
    out.push(("echoed", count.to_string()));
    out.push(("lost", lost.load(Ordering::Relaxed).to_string()));
    out.push(("datagrams_s", f(count as f64 / secs)));
    // Payload through the relay, both ways.
    out.push((
        "gbit_s",
        f(count as f64 * 2.0 * size as f64 * 8.0 / secs / 1e9),
    ));
    out.push((
        "proxy_cpu_us_per_datagram",
        match proxy_cpu {
            Some(c) if count > 0 => f(c * 1e6 / (2.0 * count as f64)),
            _ => "null".into(),
        },
    ));
    out.push(("errors", errors.to_string()));
    out.push((
        "first_error",
        first_error.map(|e| q(&e)).unwrap_or_else(|| "null".into()),
    ));
    emit("udp", out);
    Ok(())
}

/// Idle associations: each one sends a datagram and gets its echo (so the
/// relay has opened its outbound socket), then all are held while the
/// proxy's memory and fds are read.
pub async fn idle(args: &Args) -> Res<()> {
    let proxy: SocketAddr = args.req("proxy")?.parse()?;
    let target: SocketAddr = args.req("target")?.parse()?;
    let pid = args
        .get("proxy-pid")
        .map(|p| p.parse::<u32>())
        .transpose()?;
    let count = args.usize("count", 1000);
    let before = pid.map(measure::tree_memory);
    let mut held = Vec::with_capacity(count);
    let mut errors = 0u64;
    let mut first_error = None;
    let mut buf = vec![0u8; 2048];
    for _ in 0..count {
        let r = async {
            let a = associate(Some(proxy), target).await?;
            let mut d = a.header.clone();
            d.push(b'x');
            a.sock.send(&d).await?;
            tokio::time::timeout(Duration::from_secs(5), a.sock.recv(&mut buf)).await??;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(a)
        }
        .await;
        match r {
            Ok(a) => held.push(a),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    // Past the relay's release of quiet receive buffers (2 s): the idle state.
    tokio::time::sleep(Duration::from_secs_f64(args.f64("hold", 3.0))).await;
    let during = pid.map(measure::tree_memory);
    let opened = held.len();
    drop(held);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = pid.map(measure::tree_memory);
    let mut out: Vec<(&str, String)> = vec![("label", q(args.get("label").unwrap_or("")))];
    out.push(("requested", count.to_string()));
    out.push(("opened", opened.to_string()));
    out.push(("open_errors", errors.to_string()));
    out.push((
        "first_error",
        first_error.map(|e| q(&e)).unwrap_or_else(|| "null".into()),
    ));
    if let (Some(b), Some(h), Some(a)) = (before, during, after) {
        let n = opened.max(1) as f64;
        out.push(("rss_kib_before", b.rss_kib.to_string()));
        out.push(("rss_kib_held", h.rss_kib.to_string()));
        out.push(("rss_kib_after", a.rss_kib.to_string()));
        out.push(("fds_before", b.fds.to_string()));
        out.push(("fds_held", h.fds.to_string()));
        out.push(("fds_after", a.fds.to_string()));
        out.push((
            "kib_per_association",
            f((h.rss_kib as f64 - b.rss_kib as f64) / n),
        ));
        out.push(("fds_per_association", f((h.fds as f64 - b.fds as f64) / n)));
    }
    emit("udp_idle", out);
    Ok(())
}
