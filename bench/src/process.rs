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

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    format!("last lines of {}:\n{tail}", path.display())
}
