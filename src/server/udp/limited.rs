//! An association under the identity's `limits` (issue 14), through the same
//! public limiter API as a CONNECT relay, with one difference: a datagram is
//! never split and never waits. It goes whole, now, or it is dropped (counted
//! as `udp_dropped_limit`); a quota that runs out ends the association.

use super::relay::Relay;
use super::DropReason;
use crate::policy::limits::{Cut, Dir, Scope, SessionLimits};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// Polls a future that completes without waiting (`Waker::noop` needs Rust 1.85).
struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

impl Relay {
    /// Whether a datagram of `len` payload bytes may go now. Follow a `true`
    /// with [`Relay::account_limits`] once the send's outcome is known.
    pub(super) fn permit(&mut self, dir: Dir, len: usize) -> bool {
        let Some(l) = &self.a.limits else {
            return true;
        };
        if len == 0 || !l.meters_bytes() {
            return true;
        }
        // A datagram larger than the shaper's whole bucket goes from a full one.
        let whole = take_whole(l, dir, len, &self.refilling).and_then(|ok| {
            if ok {
                Ok(true)
            } else {
                l.try_permit_oversized(dir, len)
            }
        });
        match whole {
            Ok(true) => true,
            Ok(false) => {
                self.log_drop(DropReason::Limit, 1, || {
                    let way = match dir {
                        Dir::Up => "to a destination",
                        Dir::Down => "to the client",
                    };
                    format!("{len} bytes {way}: over the bandwidth limit")
                });
                false
            }
            Err(c) => {
                self.cut.get_or_insert(c);
                false
            }
        }
    }

    /// Counts `payload` bytes of permitted datagrams in `dir`: moved when
    /// `sent`, else given back to the shaper and the quota.
    pub(super) fn account_limits(&self, dir: Dir, payload: u64, sent: bool) {
        let moved = if sent { payload } else { 0 };
        let b = &self.a.bytes;
        match dir {
            Dir::Up => b.up.fetch_add(moved, Relaxed),
            Dir::Down => b.down.fetch_add(moved, Relaxed),
        };
        let Some(l) = &self.a.limits else {
            return;
        };
        if l.meters_bytes() {
            l.record(dir, payload as usize, moved as usize);
        } else {
            l.count(dir, moved);
        }
    }
}

/// All `len` bytes or none: a partial grant (a quota chunk ending, the shaper's
/// bucket nearly empty) is completed once after a refill that does not wait,
/// else given back.
fn take_whole(
    l: &Arc<SessionLimits>,
    dir: Dir,
    len: usize,
    refilling: &Arc<AtomicBool>,
) -> Result<bool, Cut> {
    let mut got = 0;
    for round in 0..2 {
        match l.try_permit(dir, len - got) {
            Ok(Some(n)) => {
                got += n;
                if got >= len {
                    return Ok(true);
                }
            }
            Ok(None) => {}
            Err(c) => {
                l.record(dir, got, 0);
                return Err(c);
            }
        }
        if round == 0 {
            if let Err(c) = refill(l, dir, refilling) {
                l.record(dir, got, 0);
                return Err(c);
            }
        }
    }
    l.record(dir, got, 0);
    Ok(false)
}

/// Makes the next quota chunk available without waiting. Local scope takes it
/// from this process's count at once (`permit_slow` for 0 bytes completes on
/// its first poll: no shaper wait for 0 bytes, no I/O); fleet scope asks Redis
/// in the background, and datagrams are dropped until the chunk is there.
fn refill(l: &Arc<SessionLimits>, dir: Dir, refilling: &Arc<AtomicBool>) -> Result<(), Cut> {
    match l.spec().scope {
        Scope::Local => {
            let mut f = std::pin::pin!(l.permit_slow(dir, 0));
            let waker = Waker::from(Arc::new(Noop));
            match f.as_mut().poll(&mut Context::from_waker(&waker)) {
                Poll::Ready(Err(c)) => Err(c),
                _ => Ok(()),
            }
        }
        Scope::Fleet => {
            if !refilling.swap(true, Relaxed) {
                let (l, flag) = (l.clone(), refilling.clone());
                tokio::spawn(async move {
                    // A used-up quota shows in the next `try_permit` as a cut.
                    let _ = l.permit_slow(dir, 0).await;
                    flag.store(false, Relaxed);
                });
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::limits::{limiter, LimitsSpec, Raw};

    fn spec(key: &str, value: &str) -> Arc<LimitsSpec> {
        let e = [(key.to_string(), Raw::Str(value.into()))];
        Arc::new(LimitsSpec::from_entries(&e).unwrap())
    }

    async fn admit(key: &str, spec: &Arc<LimitsSpec>) -> Arc<SessionLimits> {
        Arc::new(limiter().admit(key, spec).await.unwrap())
    }

    #[tokio::test]
    async fn datagrams_across_quota_chunks_go_whole_and_are_counted() {
        // 64 MiB/hour: chunks of 256 KiB, which 1,000-byte datagrams straddle.
        let sp = spec("quota", "64 MiB/hour");
        let l = admit("udp-unit-chunks", &sp).await;
        let flag = Arc::default();
        let n = 3 * 256 * 1024 / 1000 + 1;
        for _ in 0..n {
            assert!(take_whole(&l, Dir::Up, 1000, &flag).unwrap());
            l.record(Dir::Up, 1000, 1000);
        }
        let st = limiter().stats("udp-unit-chunks", &sp).await.unwrap();
        assert_eq!(st.bytes_up, n as u64 * 1000);
    }

    #[tokio::test]
    async fn a_used_up_quota_cuts() {
        let sp = spec("quota", "5000 bytes/hour");
        let l = admit("udp-unit-cut", &sp).await;
        let flag = Arc::default();
        for _ in 0..5 {
            assert!(take_whole(&l, Dir::Down, 1000, &flag).unwrap());
            l.record(Dir::Down, 1000, 1000);
        }
        let cut = take_whole(&l, Dir::Down, 1000, &flag).unwrap_err();
        assert!(cut.reason.contains("quota used up"), "{cut}");
    }

    #[tokio::test]
    async fn a_datagram_larger_than_the_bucket_goes_from_a_full_one() {
        // 10 KB/s: a bucket of 500 bytes. A 1,400-byte datagram goes when the
        // bucket is full (the bucket owes 140 ms), the next one is dropped.
        let sp = spec("bandwidth", "10 KB/s");
        let l = admit("udp-unit-oversized", &sp).await;
        let flag = Arc::default();
        let whole = |len| {
            take_whole(&l, Dir::Up, len, &flag)
                .and_then(|ok| {
                    if ok {
                        Ok(true)
                    } else {
                        l.try_permit_oversized(Dir::Up, len)
                    }
                })
                .unwrap()
        };
        assert!(whole(1400));
        l.record(Dir::Up, 1400, 1400);
        assert!(!whole(1400));
        assert!(!whole(100));
    }

    #[tokio::test]
    async fn over_the_bandwidth_is_dropped_whole_and_given_back() {
        // 10 KB/s: a bucket of 500 bytes. 600 cannot go; what it was partly
        // granted goes back, so 400 still can.
        let sp = spec("bandwidth", "10 KB/s");
        let l = admit("udp-unit-shaped", &sp).await;
        let flag = Arc::default();
        assert!(!take_whole(&l, Dir::Up, 600, &flag).unwrap());
        assert!(take_whole(&l, Dir::Up, 400, &flag).unwrap());
        // The other direction has its own bucket.
        assert!(take_whole(&l, Dir::Down, 500, &flag).unwrap());
    }
}
