//! SIGINT/SIGTERM while `kumoproxy.run()` blocks: set a flag and wake the pump.
//! SIGHUP (reload) and SIGUSR1 (reopen logs) set their own flags: they never stop `run()`.
//! The host's own handlers are saved and put back when `run()` returns, so the
//! module changes nothing about signal handling outside that call.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
static RECEIVED: AtomicI32 = AtomicI32::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);
static HUP: AtomicBool = AtomicBool::new(false);
static USR1: AtomicBool = AtomicBool::new(false);

const SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1];

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe calls here: an atomic store and write(2).
    match sig {
        libc::SIGHUP => HUP.store(true, Ordering::SeqCst),
        libc::SIGUSR1 => USR1.store(true, Ordering::SeqCst),
        _ => RECEIVED.store(sig, Ordering::SeqCst),
    }
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        unsafe {
            libc::write(fd, &one as *const u64 as *const _, 8);
        }
    }
}

pub struct Guard {
    old: [(libc::c_int, libc::sigaction); SIGNALS.len()],
}

/// Install the handlers for the lifetime of the guard.
pub fn install(wake_fd: i32) -> Guard {
    WAKE_FD.store(wake_fd, Ordering::SeqCst);
    RECEIVED.store(0, Ordering::SeqCst);
    HUP.store(false, Ordering::SeqCst);
    USR1.store(false, Ordering::SeqCst);
    INSTALLED.store(true, Ordering::SeqCst);
    let mut old: [(libc::c_int, libc::sigaction); SIGNALS.len()] = unsafe { std::mem::zeroed() };
    for (i, sig) in SIGNALS.into_iter().enumerate() {
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0; // no SA_RESTART: poll(2) returns EINTR and we look at the flag
            old[i].0 = sig;
            libc::sigaction(sig, &sa, &mut old[i].1);
        }
    }
    Guard { old }
}

/// The signal that arrived since `install`, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// SIGHUP arrived since the last call (reload).
pub fn take_hup() -> bool {
    HUP.swap(false, Ordering::SeqCst)
}

/// SIGUSR1 arrived since the last call (reopen logs).
pub fn take_usr1() -> bool {
    USR1.swap(false, Ordering::SeqCst)
}

pub fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for (sig, old) in &self.old {
            unsafe {
                libc::sigaction(*sig, old, std::ptr::null_mut());
            }
        }
        INSTALLED.store(false, Ordering::SeqCst);
        WAKE_FD.store(-1, Ordering::SeqCst);
    }
}
