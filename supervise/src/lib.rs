//! Supervised child processes, the way the launcher's direct mode and the
//! supervisor's `child` process manager run circle workers.
//!
//! A [`ChildSpec`] says what to run (program, arguments, environment, log
//! file, whether to wait for `READY=1`); [`SupervisedChild::spawn`] starts it
//! and keeps it up under a [`RestartPolicy`]:
//!
//! - **readiness**: with `wait_ready`, the child is told the notify socket
//!   in `NOTIFY_SOCKET` and counts as running only once it sends `READY=1`
//!   — the `sd_notify` protocol systemd uses, so a program has one readiness
//!   path under both. On Linux one socket serves every child of the process
//!   and a `READY=1` counts only from the child's own PID (systemd's
//!   `NotifyAccess=main`: not from a grandchild, nor `systemd-notify`);
//!   elsewhere each child has a socket of its own ([`notify`]);
//! - **restarts**: an exit is followed by a restart after an exponential
//!   backoff; a crash loop (too many fast failures in a row) ends in
//!   [`ChildState::Failed`] instead of looping forever ([`RestartTracker`],
//!   a pure value with its own tests);
//! - **no orphans**: the child gets the kernel's parent-death signal and the
//!   parent's PID in [`parent::ENV_PARENT_PID`] ([`parent`]);
//! - **one state model**: every change is published as a [`ChildStatus`] on a
//!   `watch` channel ([`SupervisedChild::status`]); last exits are an exit
//!   code *or* a signal ([`ExitStatus`]), never a signal shown as "exit 0";
//! - **stop on drop**: dropping the handle stops the child (SIGTERM, then
//!   SIGKILL after the grace period), like mini-redis's `DbDropGuard`.
//!
//! ```no_run
//! # async fn demo() {
//! use circles_supervise::{ChildSpec, RestartPolicy, SupervisedChild};
//! let spec = ChildSpec::new("sleeper", "/bin/sleep", "/tmp/sleeper.log").arg("60");
//! let child = SupervisedChild::spawn(spec, RestartPolicy::default());
//! child.ready().await.expect("running");
//! println!("{:?}", child.current().pid);
//! child.stop().await;
//! # }
//! ```

mod child;
mod error;
pub mod logs;
pub mod notify;
pub mod parent;
mod policy;
mod spec;
mod status;

pub use child::{SupervisedChild, terminate, wait_ready};
pub use error::NotReady;
pub use policy::{RestartDecision, RestartPolicy, RestartTracker};
pub use spec::ChildSpec;
pub use status::{ChildState, ChildStatus, ExitStatus, signal_name};
