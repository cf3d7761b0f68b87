//! Both sides of the no-orphans protocol: a supervised child dies with its
//! parent.
//!
//! - Parent side, [`die_with_parent`]: the kernel's parent-death signal
//!   (Linux `PR_SET_PDEATHSIG`), set between fork and exec, so even a
//!   SIGKILLed parent takes its children along.
//! - Child side, [`arm_death_signal`]: the same signal asked for by the
//!   child itself, first thing, for children started without code between
//!   fork and exec (`ChildSpec::arms_death_signal`).
//! - Child side, [`orphaned`]: where there is no such signal (macOS), the
//!   child watches for being reparented away from the PID given in
//!   [`ENV_PARENT_PID`].

use std::time::Duration;

/// Environment variable holding the supervising process's PID. (The name
/// predates this crate: the launcher was the first supervisor.)
pub const ENV_PARENT_PID: &str = "CIRCLES_LAUNCHER_PID";

/// Asks the kernel to SIGTERM the child when this process dies, even by
/// SIGKILL (Linux). If the parent is already gone by the time the child
/// runs, the spawn fails instead of leaving an orphan. Elsewhere children
/// use [`orphaned`]. Strictly the signal comes when the *thread* that
/// spawned the child ends (`prctl(2)`): spawn from threads that live as
/// long as the process (a runtime's workers, not `spawn_blocking`).
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    #[cfg(target_os = "linux")]
    {
        let parent = rustix::process::getpid();
        #[allow(unsafe_code)]
        // SAFETY: the closure runs between fork and exec; prctl and getppid
        // are async-signal-safe system calls that touch only the child's own
        // process attributes, and nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::TERM,
                ))?;
                // The parent may have died between fork and prctl.
                if rustix::process::getppid() != Some(parent) {
                    return Err(std::io::Error::other("the supervising process is gone"));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// For a supervised program, first thing in `main`: asks the kernel (Linux)
/// to SIGTERM this process when the one in [`ENV_PARENT_PID`] dies, as
/// [`die_with_parent`] does from the parent's side. `false` when that
/// process is already gone (we were reparented before asking, and the
/// signal will never come): the caller should exit. Not supervised (no
/// [`ENV_PARENT_PID`]): nothing to do, `true`.
pub fn arm_death_signal() -> bool {
    let Some(parent) = parent_pid() else {
        return true;
    };
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
    {
        // Before the program's logging is set up: straight to stderr.
        eprintln!("warning: cannot ask for the parent-death signal: {e}");
    }
    std::os::unix::process::parent_id() == parent
}

/// The supervising process's PID, from [`ENV_PARENT_PID`].
fn parent_pid() -> Option<u32> {
    std::env::var(ENV_PARENT_PID)
        .ok()
        .and_then(|p| p.parse().ok())
}

/// For a supervised program: resolves once the process named in
/// [`ENV_PARENT_PID`] is no longer our parent (we were reparented because
/// it died). Never resolves when the variable is not set.
pub async fn orphaned() {
    let Some(parent) = parent_pid() else {
        return std::future::pending().await;
    };
    loop {
        if std::os::unix::process::parent_id() != parent {
            tracing::warn!(parent, "the supervising process is gone; stopping");
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
