//! The module's per-process state: one tokio runtime per process, and
//! [`PerProcess`], the fork-aware cell every other per-process value (the
//! event pump, the listener registry, the splice pipe pool) is kept in.
//!
//! Created lazily, never at `require`, and keyed by pid: a child forked after
//! `require` (nginx master -> workers) builds its own state and never touches the
//! parent's, whose threads did not survive the fork and whose locks may be held
//! forever. Old state is leaked on purpose: dropping it would join threads that do
//! not exist in the child. Nothing here is ever dropped at exit either, so process
//! exit never waits on runtime threads.

use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use std::sync::{Once, OnceLock};
use tokio::runtime::Runtime;

/// A value per process: created on first use after start or after a fork, never
/// dropped (see the module docs).
pub struct PerProcess<T: 'static> {
    current: AtomicPtr<(u32, T)>,
}

impl<T: 'static> PerProcess<T> {
    pub const fn new() -> Self {
        PerProcess {
            current: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// This process's value, made by `init` on first use in this process.
    pub fn get_or_init(&self, init: impl FnOnce() -> T) -> &'static T {
        let pid = pid();
        let p = self.current.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: pointers stored here come from Box::leak and are never freed.
            let existing: &'static (u32, T) = unsafe { &*p };
            if existing.0 == pid {
                return &existing.1;
            }
        }
        let fresh: &'static mut (u32, T) = Box::leak(Box::new((pid, init())));
        match self
            .current
            .compare_exchange(p, fresh, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => &fresh.1,
            // Another host thread won the race; use its value (ours leaks, once).
            Err(winner) => unsafe { &(*winner).1 },
        }
    }
}

/// This process's id, cached. `std::process::id()` is a getpid(2) syscall on
/// every call (glibc no longer caches it), and per-process cells are read on
/// per-connection paths. A fork handler clears the cache in the child, so the
/// child's first lookup asks the kernel again.
static PID: AtomicU32 = AtomicU32::new(0);
static FORK_HANDLER: Once = Once::new();

extern "C" fn forget_pid_in_child() {
    PID.store(0, Ordering::Release);
}

/// The calling process's id (see `PID`). Forks that bypass `pthread_atfork`
/// (a raw clone(2), `_Fork`) are not seen; nginx, OpenResty and Lua's own
/// `os.execute`/`io.popen` go through fork() or exec at once.
pub fn pid() -> u32 {
    let p = PID.load(Ordering::Acquire);
    if p != 0 {
        return p;
    }
    // Registered before the first value is cached: a cached value copied into a
    // child is always one the handler will clear.
    FORK_HANDLER.call_once(|| unsafe {
        libc::pthread_atfork(None, None, Some(forget_pid_in_child));
    });
    let p = std::process::id();
    PID.store(p, Ordering::Release);
    p
}

impl<T: 'static> Default for PerProcess<T> {
    fn default() -> Self {
        Self::new()
    }
}

pub struct Process {
    pub pid: u32,
    runtime: OnceLock<Runtime>,
}

static CURRENT: PerProcess<Process> = PerProcess::new();

/// The state of the calling process, created on first use after start or fork.
pub fn current() -> &'static Process {
    CURRENT.get_or_init(|| Process {
        pid: pid(),
        runtime: OnceLock::new(),
    })
}

impl Process {
    pub fn runtime(&self) -> &Runtime {
        self.runtime.get_or_init(|| {
            crate::host::logging::init();
            let threads = std::env::var("KUMOPROXY_THREADS")
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .filter(|n| *n > 0)
                .unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(2)
                });
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("kumoproxy-rt")
                .on_thread_start(block_all_signals)
                .enable_all()
                .build()
                .expect("kumoproxy: cannot start the tokio runtime")
        })
    }

    pub fn has_runtime(&self) -> bool {
        self.runtime.get().is_some()
    }
}

/// Runtime threads must never receive the host's signals (SIGINT, SIGTERM, SIGHUP...):
/// the host thread handles them as if the module were not there.
fn block_all_signals() {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    /// The cached pid is right in the parent and, after fork(), in the child.
    #[test]
    fn cached_pid_follows_fork() {
        assert_eq!(super::pid(), std::process::id());
        assert_eq!(super::pid(), std::process::id());
        let child = unsafe { libc::fork() };
        assert!(child >= 0);
        if child == 0 {
            // In the child: only async-signal-safe calls, then _exit.
            let ok = super::pid() == unsafe { libc::getpid() } as u32;
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 0, "child saw its parent's pid");
        assert_eq!(super::pid(), std::process::id());
    }
}
