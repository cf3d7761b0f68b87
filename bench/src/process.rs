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
