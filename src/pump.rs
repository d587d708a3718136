//! The event pump: how runtime tasks ask the host's Lua for a decision.
//!
//! A task builds an [`Event`] carrying a oneshot sender, queues it, and awaits the
//! answer. The host thread drains the queue in `kumoproxy.poll`/`run` and answers
//! each event by calling its Lua handler (see `dispatch.rs`). An eventfd is readable
//! while events are pending, so the host can sleep in poll(2) and any foreign event
//! loop can watch the same fd. The queue is bounded: when the host falls behind,
//! new questions fail closed at once instead of piling up.

use crate::auth::{AuthInfo, ConnMeta};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

pub const DEFAULT_MAX_PENDING: usize = 10_000;

/// Why an authentication was refused; never contains the password.
pub type Verdict = Result<AuthInfo, String>;

pub enum Event {
    /// `proxy_server_auth_rfc1929(username, password, conn_meta)`
    AuthRfc1929 {
        username: Vec<u8>,
        password: Vec<u8>,
        meta: Arc<ConnMeta>,
        reply: oneshot::Sender<Verdict>,
    },
    /// `http_server_validate_auth_basic(user, password, conn_meta)`: HTTP CONNECT's
    /// `Proxy-Authorization` and the status listener's `Authorization`.
    HttpAuthBasic {
        user: Vec<u8>,
        /// `None` when the credentials had no colon (user only).
        password: Option<Vec<u8>>,
        meta: Arc<ConnMeta>,
        reply: oneshot::Sender<crate::http_connect::BasicVerdict>,
    },
    /// `proxy_server_request(request, auth_info, conn_meta)`
    Request {
        request: crate::policy::RequestInfo,
        auth: Arc<AuthInfo>,
        meta: Arc<ConnMeta>,
        reply: oneshot::Sender<crate::policy::RequestVerdict>,
    },
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::AuthRfc1929 { .. } => EVENT_AUTH_RFC1929,
            Event::HttpAuthBasic { .. } => EVENT_HTTP_AUTH_BASIC,
            Event::Request { .. } => EVENT_REQUEST,
        }
    }

    /// The asker gave up (timeout, client gone): no point running Lua for it.
    pub fn is_abandoned(&self) -> bool {
        match self {
            Event::AuthRfc1929 { reply, .. } => reply.is_closed(),
            Event::HttpAuthBasic { reply, .. } => reply.is_closed(),
            Event::Request { reply, .. } => reply.is_closed(),
        }
    }
}

pub const EVENT_AUTH_RFC1929: &str = "proxy_server_auth_rfc1929";
pub const EVENT_HTTP_AUTH_BASIC: &str = "http_server_validate_auth_basic";
pub const EVENT_REQUEST: &str = "proxy_server_request";

/// Every event name `kumoproxy.on` accepts, with its bit in [`registered`].
pub const EVENTS: &[&str] = &[EVENT_AUTH_RFC1929, EVENT_HTTP_AUTH_BASIC, EVENT_REQUEST];

/// Which events have a Lua handler. Process-global and lock-free, so it stays
/// valid across fork and runtime tasks can read it without asking the host.
static REGISTERED: AtomicU64 = AtomicU64::new(0);

pub fn event_bit(name: &str) -> Option<u64> {
    EVENTS.iter().position(|e| *e == name).map(|i| 1 << i)
}

pub fn set_registered(name: &str, on: bool) {
    if let Some(bit) = event_bit(name) {
        if on {
            REGISTERED.fetch_or(bit, Ordering::AcqRel);
        } else {
            REGISTERED.fetch_and(!bit, Ordering::AcqRel);
        }
    }
}

pub fn registered(name: &str) -> bool {
    event_bit(name).is_some_and(|bit| REGISTERED.load(Ordering::Acquire) & bit != 0)
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

pub struct Pump {
    queue: Mutex<VecDeque<Event>>,
    efd: OwnedFd,
    max_pending: AtomicUsize,
    /// Questions refused because the queue was full.
    pub overloaded: AtomicU64,
    stop: AtomicBool,
    /// Wakes runtime-side waiters (the embedding wake socket) as `wake` does the fd.
    notify: tokio::sync::Notify,
    /// How long Lua handlers take, per event (the `/metrics` histogram).
    pub event_latency: crate::metrics::EventLatency,
}

impl Pump {
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
    fn submit(&self, ev: Event) -> Result<(), Event> {
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
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Event,
    ) -> Result<T, AskError> {
        let (tx, rx) = oneshot::channel();
        if self.submit(make(tx)).is_err() {
            self.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(AskError::Overloaded(self.max_pending()));
        }
        rx.await.map_err(|_| AskError::NoAnswer)
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
    pub fn requeue(&self, events: VecDeque<Event>) {
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
    pub fn drain(&self) -> VecDeque<Event> {
        self.reset_wake();
        std::mem::take(&mut *self.queue.lock().unwrap())
    }

    /// The oldest queued event. The host dispatches one at a time with this (not
    /// `drain`), so events it has not reached yet stay in the queue, where a
    /// nested `run_until`/`poll`/`run_command` inside a handler finds them.
    pub fn pop(&self) -> Option<Event> {
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
