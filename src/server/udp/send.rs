//! Sending a batch (GSO runs where possible) and counting what went.

use super::leg::*;
use super::relay::*;
use super::*;
use crate::policy::limits::Dir;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;

impl Relay {
    pub(super) fn bytes(&self, p: &Pending) -> &[u8] {
        if p.extra {
            &self.extra[p.start]
        } else {
            &self.area[p.start..p.end]
        }
    }

    /// Sends what the batch produced: runs of same-sized datagrams to one
    /// destination as one GSO send, the others one by one from where they are.
    pub(super) async fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let mut i = 0;
        while i < pending.len() {
            let p = &pending[i];
            let len = self.bytes(p).len();
            let leg = self.leg(p.leg).expect("leg of a pending datagram exists");
            let max = leg.gso().min(64);
            let mut j = i + 1;
            if max > 1 && len <= GSO_MAX_SEGMENT {
                while j < pending.len()
                    && j - i < max
                    && pending[j].leg == p.leg
                    && pending[j].to == p.to
                    && self.bytes(&pending[j]).len() == len
                {
                    j += 1;
                }
            }
            let run = &pending[i..j];
            let ok = if run.len() == 1 {
                self.send(p.leg, p.to, self.bytes(p), None).await
            } else {
                let mut buf = std::mem::take(&mut self.gso_buf);
                buf.clear();
                for q in run {
                    buf.extend_from_slice(self.bytes(q));
                }
                let sent = self.send(p.leg, p.to, &buf, Some(len)).await;
                self.gso_buf = buf;
                if sent.is_err() {
                    // GSO refused (a device without it, say): one by one instead.
                    for q in run {
                        let r = self.send(q.leg, q.to, self.bytes(q), None).await;
                        self.account(q, 1, r);
                    }
                    i = j;
                    continue;
                }
                sent
            };
            let n = run.len() as u64;
            let payload: usize = run.iter().map(|q| q.payload).sum();
            self.account_run(p.leg, p.to, n, payload as u64, ok);
            i = j;
        }
        self.pending = pending;
        self.pending.clear();
    }

    pub(super) async fn send(
        &self,
        id: LegId,
        to: SocketAddr,
        bytes: &[u8],
        segment: Option<usize>,
    ) -> Result<(), io::Error> {
        let leg = self.leg(id).expect("leg exists");
        leg.send(to, bytes, segment).await
    }

    pub(super) fn account(&mut self, p: &Pending, n: u64, r: io::Result<()>) {
        self.account_run(p.leg, p.to, n, p.payload as u64, r)
    }

    pub(super) fn account_run(
        &mut self,
        leg: LegId,
        to: SocketAddr,
        n: u64,
        payload: u64,
        r: io::Result<()>,
    ) {
        let dir = if leg == LegId::Client {
            Dir::Down
        } else {
            Dir::Up
        };
        self.account_limits(dir, payload, r.is_ok());
        let c = &self.a.counters;
        match r {
            Ok(()) if leg == LegId::Client => {
                c.datagrams_to_client.fetch_add(n, Relaxed);
                c.bytes_to_client.fetch_add(payload, Relaxed);
            }
            Ok(()) => {
                c.datagrams_to_remote.fetch_add(n, Relaxed);
                c.bytes_to_remote.fetch_add(payload, Relaxed);
            }
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                self.log_drop(DropReason::Oversize, n, || {
                    format!("{payload} bytes to {to}: larger than the path carries")
                });
            }
            Err(e) => {
                self.log_drop(DropReason::SendError, n, || format!("to {to}: {e}"));
            }
        }
    }
}
