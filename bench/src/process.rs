//! Child processes the bench starts: signals, bounded waits, and the tail of
//! a log to show when one misbehaves.

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::Context as _;
use rustix::process::{Pid, Signal, kill_process};
use tokio::process::Child;

/// Sends `signal` to a child that has not been waited for yet.
pub fn send_signal(child: &Child, signal: Signal) -> anyhow::Result<()> {
    let pid = child
        .id()
        .and_then(|id| Pid::from_raw(id as i32))
        .context("the process has already been reaped")?;
    kill_process(pid, signal).with_context(|| format!("sending {signal:?} to pid {pid:?}"))
}

/// Waits for a child to exit, failing (the child is killed when dropped,
/// as every bench child is spawned with `kill_on_drop`) after `timeout`.
pub async fn wait_exit(
    child: &mut Child,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<ExitStatus> {
    tokio::time::timeout(timeout, child.wait())
        .await
        .with_context(|| format!("{what} did not exit within {timeout:?}"))?
        .with_context(|| format!("waiting for {what}"))
}

/// Waits until the process has a handler for `signal` installed (Linux:
/// the `SigCgt` mask in `/proc/<pid>/status`). A tokio program installs its
/// handler only when it first polls the signal future, so a signal sent
/// before that takes the default action (death) instead of a clean stop.
pub async fn wait_signal_caught(
    child: &Child,
    signal: Signal,
    timeout: Duration,
) -> anyhow::Result<()> {
    let pid = child.id().context("the process has already been reaped")?;
    let bit = 1u64 << (signal.as_raw() - 1);
    let started = std::time::Instant::now();
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .context("no SigCgt in /proc/<pid>/status")?;
        if caught & bit != 0 {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "pid {pid} installed no {signal:?} handler within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    format!("last lines of {}:\n{tail}", path.display())
}

/// A `kB` figure of `/proc/<pid>/status` (`VmRSS:`, `RssAnon:`, …); 0 when
/// the process or the field is gone.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    kib_field(&format!("/proc/{pid}/status"), field)
}

/// Resident memory, counting shared pages (the binary) in full.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The process's own memory: anonymous pages only.
pub fn anon_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:")
}

/// Proportional set size: shared pages split between their users.
pub fn pss_kib(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// The children of `pid` (every thread's), from `/proc/<pid>/task/*/children`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn kib_field(file: &str, field: &str) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of a process, in seconds (`/proc/<pid>/stat`).
pub fn process_cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    (field(11) + field(12)) / clock_ticks_per_sec()
}

fn clock_ticks_per_sec() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// CPU seconds a process's live threads have run, to the nanosecond, from
/// the scheduler (`/proc/<pid>/task/*/sched`, `se.sum_exec_runtime` in ms).
/// For short-lived work: `/proc/<pid>/stat` counts whole clock ticks per
/// process, so a worker that started in 7 ms of CPU reads as 0 there, and a
/// thousand of them as nothing. Falls back to the ticks where the kernel
/// has no `sched` files.
pub fn precise_cpu_secs(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let mut total_ms = 0.0;
    for task in tasks.flatten() {
        let Ok(sched) = std::fs::read_to_string(task.path().join("sched")) else {
            return process_cpu_secs(pid);
        };
        let runtime = sched
            .lines()
            .find(|l| l.starts_with("se.sum_exec_runtime"))
            .and_then(|l| l.rsplit(':').next())
            .and_then(|v| v.trim().parse::<f64>().ok());
        match runtime {
            Some(ms) => total_ms += ms,
            None => return process_cpu_secs(pid),
        }
    }
    total_ms / 1000.0
}
