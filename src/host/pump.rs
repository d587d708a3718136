//! The event pump: how runtime tasks ask the host's Lua for a decision.
//!
//! A task builds an event (`policy::events::Event`) carrying a oneshot sender, queues it, and awaits the
//! answer. The host thread drains the queue in `kumoproxy.poll`/`run` and answers
//! each event by calling its Lua handler (see `lua/dispatch.rs`). An eventfd is readable
//! while events are pending, so the host can sleep in poll(2) and any foreign event
//! loop can watch the same fd. The queue is bounded: when the host falls behind,
//! new questions fail closed at once instead of piling up.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;

pub const DEFAULT_MAX_PENDING: usize = 10_000;

/// What the pump needs to know of a queued question; the questions themselves
/// (`policy::events::Event`) belong to the layer that asks them.
pub trait PendingEvent: Send + 'static {
    /// The Lua event name (for logs and the latency histogram).
    fn name(&self) -> &'static str;
    /// The asker gave up (timeout, client gone): no point running Lua for it.
    fn is_abandoned(&self) -> bool;
}

#[derive(Debug)]
pub enum AskError {
    /// More than `max_pending_events` questions are waiting for the host.
    Overloaded(usize),
    /// The host dropped the question without answering (e.g. event discarded).
    NoAnswer,
}

impl std::fmt::Display for AskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AskError::Overloaded(n) => write!(
                f,
                "event queue full ({n} decisions pending): is the host calling kumoproxy.run/poll?"
            ),
            AskError::NoAnswer => write!(f, "the host dropped the event without answering"),
        }
    }
}

pub struct Pump<E> {
    queue: Mutex<VecDeque<E>>,
    efd: OwnedFd,
    max_pending: AtomicUsize,
    /// Questions refused because the queue was full.
    pub overloaded: AtomicU64,
    /// Notifications (`proxy_session_end`) dropped because the queue was full.
    pub dropped_notifications: AtomicU64,
    stop: AtomicBool,
    /// Wakes runtime-side waiters (the embedding wake socket) as `wake` does the fd.
    notify: tokio::sync::Notify,
    /// How long Lua handlers take, per event (the `/metrics` histogram).
    pub event_latency: crate::host::metrics::EventLatency,
}

impl<E: PendingEvent> Pump<E> {
    pub fn new() -> io::Result<Self> {
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Pump {
            queue: Mutex::new(VecDeque::new()),
            // SAFETY: fd was just returned by eventfd and is owned by nobody else.
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
            max_pending: AtomicUsize::new(DEFAULT_MAX_PENDING),
            overloaded: AtomicU64::new(0),
            dropped_notifications: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            notify: tokio::sync::Notify::new(),
            event_latency: Default::default(),
        })
    }

    pub fn set_max_pending(&self, n: usize) {
        self.max_pending.store(n.max(1), Ordering::Relaxed);
    }

    pub fn max_pending(&self) -> usize {
        self.max_pending.load(Ordering::Relaxed)
    }

    pub fn fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }

    pub fn pending(&self) -> usize {
        self.queue.lock().unwrap().len()
    }

    /// Queue an event for the host; gives it back when the queue is full.
    fn submit(&self, ev: E) -> Result<(), E> {
        {
            let mut q = self.queue.lock().unwrap();
            if q.len() >= self.max_pending() {
                return Err(ev);
            }
            q.push_back(ev);
        }
        self.wake();
        Ok(())
    }

    /// Ask the host a question and await its answer. The caller bounds the wait.
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> E) -> Result<T, AskError> {
        let (tx, rx) = oneshot::channel();
        if self.submit(make(tx)).is_err() {
            self.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(AskError::Overloaded(self.max_pending()));
        }
        rx.await.map_err(|_| AskError::NoAnswer)
    }

    /// Queue a notification best-effort: never waits, dropped (and counted) when
    /// the queue is full, so it cannot delay the session that sends it.
    pub fn notify(&self, ev: E) {
        if self.submit(ev).is_err() {
            self.dropped_notifications.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Make the eventfd readable: new events, a stop request, a finished blocking call.
    pub fn wake(&self) {
        let one: u64 = 1;
        // EAGAIN only when the counter would overflow, i.e. it is readable anyway.
        unsafe {
            libc::write(self.efd.as_raw_fd(), &one as *const u64 as *const _, 8);
        }
        // notify_one keeps a permit when nobody waits: wakeups coalesce, none is lost.
        self.notify.notify_one();
    }

    /// Resolves after the next `wake`.
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// Puts events back at the front of the queue, in order (see `take_events(max)`).
    pub fn requeue(&self, events: VecDeque<E>) {
        if events.is_empty() {
            return;
        }
        {
            let mut q = self.queue.lock().unwrap();
            for ev in events.into_iter().rev() {
                q.push_front(ev);
            }
        }
        self.wake();
    }

    /// Consume pending wakeups without touching the queue.
    pub fn reset_wake(&self) {
        let mut buf: u64 = 0;
        unsafe {
            libc::read(self.efd.as_raw_fd(), &mut buf as *mut u64 as *mut _, 8);
        }
    }

    /// Take every queued event. Resets the eventfd first, so an event queued after
    /// this call makes it readable again: no wakeup is ever lost.
    pub fn drain(&self) -> VecDeque<E> {
        self.reset_wake();
        std::mem::take(&mut *self.queue.lock().unwrap())
    }

    /// The oldest queued event. The host dispatches one at a time with this (not
    /// `drain`), so events it has not reached yet stay in the queue, where a
    /// nested `run_until`/`poll`/`run_command` inside a handler finds them.
    pub fn pop(&self) -> Option<E> {
        self.queue.lock().unwrap().pop_front()
    }

    /// Sleep until the eventfd is readable, a signal arrives, or `timeout` passes.
    pub fn wait(&self, timeout: Option<Duration>) {
        let ms: libc::c_int = match timeout {
            None => -1,
            // Round up so a 0.5 ms wait does not become a busy loop.
            Some(d) => d.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int,
        };
        let mut pfd = libc::pollfd {
            fd: self.efd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // EINTR is fine: the caller re-checks its conditions (stop, signals, deadline).
        unsafe {
            libc::poll(&mut pfd, 1, ms);
        }
    }

    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    pub fn clear_stop(&self) {
        self.stop.store(false, Ordering::Release);
    }
}
