//! Process figures for `/metrics`, read from `/proc/self` at scrape time: the
//! same sources and names as the Prometheus client libraries' process
//! collectors (`process_cpu_seconds_total`, `process_open_fds`, ...), so
//! standard dashboards and alerts work unchanged. Linux only; elsewhere every
//! figure is absent.

/// One reading. A figure that cannot be read is `None` and is left out.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub resident_memory_bytes: Option<u64>,
    pub virtual_memory_bytes: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

pub fn read() -> ProcessStats {
    let mut s = ProcessStats::default();
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name, which is in parentheses and may hold spaces.
        if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // proc(5) numbers fields from 1 (pid); `rest` starts at field 3 (state).
            let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
            if ticks > 0 {
                let t = ticks as f64;
                if let (Some(utime), Some(stime)) = (field(14), field(15)) {
                    s.cpu_seconds = Some((utime + stime) as f64 / t);
                }
                if let (Some(start), Some(btime)) = (field(22), boot_time()) {
                    s.start_time_seconds = Some(btime as f64 + start as f64 / t);
                }
            }
        }
    }
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        let mut it = statm.split_whitespace().map(|v| v.parse::<u64>().ok());
        if let (Some(Some(size)), Some(Some(resident)), true) = (it.next(), it.next(), page > 0) {
            s.virtual_memory_bytes = Some(size * page as u64);
            s.resident_memory_bytes = Some(resident * page as u64);
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // Minus the directory's own fd, open while we count.
        s.open_fds = Some((dir.count() as u64).saturating_sub(1));
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        s.max_fds = Some(lim.rlim_cur);
    }
    s
}

/// Seconds since the epoch at boot (`btime` in /proc/stat).
fn boot_time() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let s = read();
        assert!(s.open_fds.unwrap() >= 4, "{s:?}"); // stdio + the file above
        assert!(s.max_fds.unwrap() >= s.open_fds.unwrap());
        assert!(s.resident_memory_bytes.unwrap() > 1 << 20);
        assert!(s.virtual_memory_bytes.unwrap() >= s.resident_memory_bytes.unwrap());
        assert!(s.cpu_seconds.unwrap() >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = s.start_time_seconds.unwrap();
        assert!(
            start <= now + 1.0 && start > now - 86400.0 * 365.0,
            "{start} vs {now}"
        );
        drop(f);
    }
}
