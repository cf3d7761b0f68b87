//! Child-process plumbing shared by everything the launcher spawns.

use std::time::Duration;

use tokio::process::{Child, Command};

/// Asks the kernel to SIGTERM the child when the launcher dies, even by
/// SIGKILL, so no worker or private Redis outlives it (Linux). Elsewhere the
/// workers watch their parent PID instead (see `CIRCLES_LAUNCHER_PID`).
pub fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        #[allow(unsafe_code)]
        // SAFETY: prctl is async-signal-safe and touches only the child's own
        // process attributes; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// SIGTERM, wait up to `grace`, then SIGKILL. Returns once the child is gone.
pub async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        send_signal(pid, libc::SIGTERM);
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
        tracing::warn!(pid, "process did not stop within {grace:?}; killing it");
    }
    let _ = child.kill().await;
}

/// Sends `signal` to `pid`.
pub fn send_signal(pid: u32, signal: libc::c_int) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) with a PID we own (a child we spawned and have not reaped).
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}
