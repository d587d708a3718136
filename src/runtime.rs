//! The module's process-wide state: one tokio runtime and one event pump per process.
//!
//! Created lazily, never at `require`, and keyed by pid: a child forked after
//! `require` (nginx master -> workers) builds its own state and never touches the
//! parent's, whose threads did not survive the fork and whose locks may be held
//! forever. Old state is leaked on purpose: dropping it would join threads that do
//! not exist in the child. Nothing here is ever dropped at exit either, so process
//! exit never waits on runtime threads.

use crate::pump::Pump;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::runtime::Runtime;

pub struct Process {
    pub pid: u32,
    runtime: OnceLock<Runtime>,
    pump: OnceLock<Arc<Pump>>,
    /// Listeners started in this process, for `run()`'s shutdown and status.
    pub listeners: Mutex<Vec<std::sync::Weak<crate::listener::Shared>>>,
    /// Idle splice pipes, reused across relays of this process only.
    pub pipes: crate::relay::PipePool,
    /// Status/metrics listeners (`start_http_listener`), closed by `run()`'s shutdown.
    pub http_listeners: Mutex<Vec<std::sync::Weak<crate::http_server::Shared>>>,
    /// Per-identity limits of this process (and its Redis backend, if any).
    pub limiter: crate::policy::limits::Limiter,
}

static CURRENT: AtomicPtr<Process> = AtomicPtr::new(std::ptr::null_mut());

/// The state of the calling process, created on first use after start or fork.
pub fn current() -> &'static Process {
    let pid = std::process::id();
    let p = CURRENT.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: pointers stored in CURRENT come from Box::leak and are never freed.
        let existing = unsafe { &*p };
        if existing.pid == pid {
            return existing;
        }
    }
    let fresh: &'static mut Process = Box::leak(Box::new(Process {
        pid,
        runtime: OnceLock::new(),
        pump: OnceLock::new(),
        listeners: Mutex::new(Vec::new()),
        pipes: Default::default(),
        http_listeners: Mutex::new(Vec::new()),
        limiter: Default::default(),
    }));
    match CURRENT.compare_exchange(p, fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => fresh,
        // Another host thread won the race; use its state (ours leaks, once).
        Err(winner) => unsafe { &*winner },
    }
}

impl Process {
    pub fn runtime(&self) -> &Runtime {
        self.runtime.get_or_init(|| {
            crate::logging::init();
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

    pub fn pump(&self) -> &Arc<Pump> {
        self.pump
            .get_or_init(|| Arc::new(Pump::new().expect("kumoproxy: cannot create eventfd")))
    }

    pub fn has_runtime(&self) -> bool {
        self.runtime.get().is_some()
    }

    pub fn live_http_listeners(&self) -> Vec<Arc<crate::http_server::Shared>> {
        let mut l = self.http_listeners.lock().unwrap();
        l.retain(|w| w.strong_count() > 0);
        l.iter().filter_map(|w| w.upgrade()).collect()
    }

    pub fn live_listeners(&self) -> Vec<Arc<crate::listener::Shared>> {
        let mut l = self.listeners.lock().unwrap();
        l.retain(|w| w.strong_count() > 0);
        l.iter().filter_map(|w| w.upgrade()).collect()
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
