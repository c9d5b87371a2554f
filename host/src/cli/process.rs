//! Memory and time of processes as the OS reports them: this process's
//! resident memory and its peak (which can be reset, so each benchmark run
//! gets its own), and a child's wall time and CPU time (from `wait4`) and
//! peak resident memory (its `VmHWM`, polled).
//!
//! Not `wait4`'s `ru_maxrss` for the peak: Linux carries the parent's
//! resident memory at the fork (or, for a `vfork`-style spawn, the parent's
//! own peak) over into the child's `ru_maxrss` when it executes the new
//! program, so a child of a large benchmark process would report the
//! benchmark's memory. `VmHWM` in `/proc/PID/status` belongs to the new
//! program's address space alone; it only grows, and is read every
//! [`POLL`] until the child ends (a peak reached in its last few
//! milliseconds would be missed).

use std::io;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often a child's peak memory is read.
pub const POLL: Duration = Duration::from_millis(5);

/// Resident memory of this process now, from `/proc/self/statm`.
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| text.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Peak resident memory of this process (`VmHWM`) since it started or since
/// the last [`reset_peak_rss`].
pub fn peak_rss() -> u64 {
    peak_rss_of("self").unwrap_or(0)
}

/// `VmHWM` of process `pid` (`self` for this one), in bytes; `None` when
/// it is gone or has no address space any more (a zombie).
fn peak_rss_of(pid: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib = line.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    Some(kib * 1024)
}

/// Resident memory of process `pid` now (its `VmRSS`).
pub fn resident_of(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib = line.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    Some(kib * 1024)
}

/// Threads of process `pid` now.
pub fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |tasks| tasks.count())
}

/// User plus system CPU time process `pid` has used so far (from
/// `/proc/PID/stat`).
pub fn cpu_of(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// Resets this process's peak resident memory to its resident memory now
/// (Linux ≥ 4.0: `5` into `/proc/self/clear_refs`); false where that is
/// not possible (the peak then covers the whole process's life).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Threads of this process now.
pub fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |tasks| tasks.count())
}

/// How a child process ended and what it used.
#[derive(Debug, Clone, Copy)]
pub struct ChildUsage {
    /// Its exit status (`WEXITSTATUS`), or `None` when a signal ended it.
    pub exit_code: Option<i32>,
    /// From `started` (given to [`wait_measured`]) to its end.
    pub elapsed: Duration,
    /// User plus system CPU time.
    pub cpu: Duration,
    /// Peak resident memory (its last `VmHWM` read).
    pub peak_rss: u64,
}

/// Waits for `child` (spawned at `started`) with `wait4`, which reports
/// its CPU time, reading its peak memory every [`POLL`] meanwhile; `child`
/// must not have been waited for.
pub fn wait_measured(child: Child, started: Instant) -> io::Result<ChildUsage> {
    let pid = child.id() as libc::pid_t;
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                if let Some(now) = peak_rss_of(&pid.to_string()) {
                    peak = peak.max(now);
                }
                std::thread::sleep(POLL);
            }
            peak
        })
    };
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is a plain C struct of integers, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = loop {
        // SAFETY: `pid` is our own child, not yet reaped (`Child::wait` was
        // not called: we own `child`); `status` and `usage` are valid,
        // writable and live for the call.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped == pid {
            break Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            break Err(error);
        }
    };
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let peak_rss = poller.join().unwrap_or(0);
    reaped?;
    // `child` is reaped: dropping it neither waits nor kills.
    drop(child);
    let time =
        |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    Ok(ChildUsage {
        exit_code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        elapsed,
        cpu: time(usage.ru_utime) + time(usage.ru_stime),
        peak_rss,
    })
}

/// The noida-db binary `tests/broker/install` installs (the benchmarks'
/// Kafka broker and Elasticsearch server), relative to the repository root.
pub fn installed_noida() -> anyhow::Result<PathBuf> {
    let lib = Path::new("target/kafka-broker/venv/lib");
    std::fs::read_dir(lib)
        .ok()
        .and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path().join("site-packages/noida_db/noida-db"))
                .find(|path| path.is_file())
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "noida-db is not installed in {}: run `tests/broker/install` from the repository \
                 root (`--suite kafka` also takes `--brokers`)",
                lib.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_measured_by_pid() {
        let pid = std::process::id();
        assert!(resident_of(pid).is_some_and(|bytes| bytes > 0));
        assert!(threads_of(pid) >= 1);
        let before = cpu_of(pid).unwrap();
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(spin.elapsed());
        }
        assert!(cpu_of(pid).unwrap() > before);
    }

    #[test]
    fn a_child_is_measured() {
        let started = Instant::now();
        // A child that lives long enough to be read at least once.
        let child = std::process::Command::new("sh")
            .args(["-c", "sleep 0.05; exit 3"])
            .spawn()
            .unwrap();
        let usage = wait_measured(child, started).unwrap();
        assert_eq!(usage.exit_code, Some(3));
        assert!(usage.peak_rss > 0);
        assert!(usage.elapsed >= Duration::from_millis(50));
        // Not this test process's memory: a shell is small.
        assert!(usage.peak_rss < 64 << 20, "{}", usage.peak_rss);
    }

    #[test]
    fn the_peak_covers_memory_touched_since_its_reset() {
        assert!(resident_bytes() > 0);
        if !reset_peak_rss() {
            return;
        }
        // Other tests run beside this one and free memory too: compare
        // with what this test itself holds, not with the peak before.
        let touched = vec![1u8; 64 << 20];
        std::hint::black_box(&touched);
        let (resident, peak) = (resident_bytes(), peak_rss());
        assert!(peak >= 64 << 20, "peak {peak} below the 64 MiB just touched");
        assert!(peak >= resident, "peak {peak} below the resident {resident}");
    }
}
