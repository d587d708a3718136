//! What a run costs: proxy CPU from /proc/PID/stat (its whole process tree), the
//! harness's own CPU (getrusage plus `--aux-pids`), machine busy from /proc/stat,
//! and the proxy tree's memory, fds and threads.

use crate::args::Args;
use crate::{f, q};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn clk_tck() -> f64 {
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// (pid, ppid, utime+stime+cutime+cstime ticks, threads) of every process.
fn all_procs() -> Vec<(u32, u32, u64, u64)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some((ppid, ticks, threads)) = stat(pid) {
            out.push((pid, ppid, ticks, threads));
        }
    }
    out
}

fn stat(pid: u32) -> Option<(u32, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: split after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let v: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid=4, utime=14, stime=15, cutime=16, cstime=17, threads=20.
    let n = |field: usize| v.get(field - 3).and_then(|x| x.parse::<u64>().ok());
    let ticks = n(14)? + n(15)? + n(16)? + n(17)?;
    Some((n(4)? as u32, ticks, n(20)?))
}

/// `root` and all of its descendants.
pub fn tree(root: u32) -> Vec<u32> {
    let procs = all_procs();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, ppid, _, _) in &procs {
        children.entry(*ppid).or_default().push(*pid);
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

fn tree_cpu_s(root: u32) -> f64 {
    let ticks: u64 = tree(root)
        .iter()
        .filter_map(|p| stat(*p))
        .map(|s| s.1)
        .sum();
    ticks as f64 / clk_tck()
}

fn self_cpu_s() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// (busy, total) ticks over all CPUs; iowait counts as idle.
fn machine_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = s.lines().next().unwrap_or("");
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn ncpu() -> f64 {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64
}

/// Machine busy fraction over `d`.
async fn busy_over(d: Duration) -> f64 {
    let (b0, t0) = machine_ticks();
    tokio::time::sleep(d).await;
    let (b1, t1) = machine_ticks();
    if t1 > t0 {
        (b1 - b0) as f64 / (t1 - t0) as f64
    } else {
        0.0
    }
}

pub struct Snapshot {
    pub at: Instant,
    pub count: u64,
    proxy_cpu: Option<f64>,
    harness_cpu: f64,
    machine: (u64, u64),
}

fn snapshot(count: u64, proxy: Option<u32>, aux: &[u32]) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        count,
        proxy_cpu: proxy.map(tree_cpu_s),
        harness_cpu: self_cpu_s() + aux.iter().map(|p| tree_cpu_s(*p)).sum::<f64>(),
        machine: machine_ticks(),
    }
}

pub struct Pre {
    sys_busy_before: f64,
    waited_s: f64,
}

pub struct Window {
    pre: Pre,
    pub start: Snapshot,
    pub end: Snapshot,
}

impl Window {
    /// Waits (up to `--quiet-wait` seconds) for the machine to drop below 10% busy,
    /// and records how busy it was just before the run.
    pub async fn prepare(args: &Args) -> Pre {
        let max_wait = Duration::from_secs_f64(args.f64("quiet-wait", 0.0));
        let t0 = Instant::now();
        // A short look when not waiting (smoke runs), half a second otherwise.
        let sample = Duration::from_millis(if max_wait.is_zero() { 100 } else { 500 });
        loop {
            let b = busy_over(sample).await;
            if b < 0.10 || t0.elapsed() >= max_wait {
                return Pre {
                    sys_busy_before: b,
                    waited_s: t0.elapsed().as_secs_f64(),
                };
            }
        }
    }
}

impl Pre {
    pub async fn run(self, args: &Args, count: impl Fn() -> u64) -> Window {
        self.run_with(args, count, |_| {}).await
    }

    /// Warm up, then measure `--duration` seconds; `recording(true/false)` marks the window.
    pub async fn run_with(
        self,
        args: &Args,
        count: impl Fn() -> u64,
        recording: impl Fn(bool),
    ) -> Window {
        let proxy = args.get("proxy-pid").and_then(|p| p.parse().ok());
        let aux: Vec<u32> = args
            .get("aux-pids")
            .unwrap_or("")
            .split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect();
        let dur = Duration::from_secs_f64(args.f64("duration", 5.0));
        let warm = Duration::from_secs_f64(args.f64("warmup", 1.0));
        tokio::time::sleep(warm).await;
        recording(true);
        let start = snapshot(count(), proxy, &aux);
        tokio::time::sleep(dur).await;
        let end = snapshot(count(), proxy, &aux);
        recording(false);
        Window {
            pre: self,
            start,
            end,
        }
    }
}

impl Window {
    pub fn secs(&self) -> f64 {
        (self.end.at - self.start.at).as_secs_f64()
    }

    pub fn proxy_cpu(&self) -> Option<f64> {
        Some(self.end.proxy_cpu? - self.start.proxy_cpu?)
    }

    /// Fields every timed result carries.
    pub fn common(&self, args: &Args) -> Vec<(&'static str, String)> {
        let secs = self.secs();
        let (b0, t0) = self.start.machine;
        let (b1, t1) = self.end.machine;
        let busy = if t1 > t0 {
            (b1 - b0) as f64 / (t1 - t0) as f64
        } else {
            0.0
        };
        let machine_cpu = busy * ncpu() * secs;
        let harness = self.end.harness_cpu - self.start.harness_cpu;
        let proxy = self.proxy_cpu();
        let other = machine_cpu - harness - proxy.unwrap_or(0.0);
        vec![
            ("label", q(args.get("label").unwrap_or(""))),
            ("secs", f(secs)),
            ("sys_busy_before", f(self.pre.sys_busy_before)),
            ("quiet_waited_s", f(self.pre.waited_s)),
            ("machine_busy", f(busy)),
            (
                "proxy_cores",
                proxy.map(|p| f(p / secs)).unwrap_or_else(|| "null".into()),
            ),
            ("harness_cores", f(harness / secs)),
            ("other_cpu_s", f(other)),
        ]
    }
}

/// Footprint of a process tree, summed over its processes.
#[derive(Debug, Clone, Copy)]
pub struct Mem {
    pub rss_kib: u64,
    pub pss_kib: u64,
    pub fds: u64,
    pub threads: u64,
    pub procs: u64,
}

pub fn tree_memory(root: u32) -> Mem {
    let mut m = Mem {
        rss_kib: 0,
        pss_kib: 0,
        fds: 0,
        threads: 0,
        procs: 0,
    };
    for pid in tree(root) {
        let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
            continue;
        };
        let kib = |key: &str| -> u64 {
            rollup
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        m.rss_kib += kib("Rss:");
        m.pss_kib += kib("Pss:");
        m.fds += std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        m.threads += stat(pid).map(|s| s.2).unwrap_or(0);
        m.procs += 1;
    }
    m
}
