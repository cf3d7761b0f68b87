//! What to run: a generic child spec, the same shape as the services crate's
//! `ServiceSpec` (program, arguments, environment, where output goes, whether
//! the program reports readiness), so one description of a circle worker can
//! feed every way of running it.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// One child process to supervise. Plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSpec {
    /// Name used in logs and messages (e.g. the circle's name).
    pub name: String,
    /// The executable.
    pub program: PathBuf,
    /// Arguments after the program. Never put secrets here: argv is visible
    /// to every user of the host (`ps`); use [`ChildSpec::env`].
    pub args: Vec<String>,
    /// Variables added to (or replacing those of) the parent's environment.
    pub env: BTreeMap<String, String>,
    /// Variables of the parent's environment the child must not inherit.
    pub env_remove: Vec<String>,
    /// Working directory; the parent's when `None`.
    pub working_dir: Option<PathBuf>,
    /// stdout and stderr are appended here (the directory must exist).
    pub log_file: PathBuf,
    /// Wait for `READY=1` on the notify socket before counting the child as
    /// running; otherwise it is running once spawned.
    pub wait_ready: bool,
    /// The program asks for the parent-death signal itself, first thing
    /// ([`crate::parent::arm_death_signal`]; the circles worker does). Then
    /// nothing has to run between fork and exec, and the standard library
    /// can start the child with `posix_spawn` (on Linux with glibc, for a
    /// program given by path), which does not copy this process's page
    /// tables: measured starting a thousand workers, the copies (made and
    /// thrown away at exec) were a fifth of the launcher's CPU. Otherwise the
    /// signal is set between fork and exec ([`crate::parent::die_with_parent`]).
    pub arms_death_signal: bool,
}

impl ChildSpec {
    /// A spec with no arguments or environment that waits for `READY=1`.
    pub fn new(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        log_file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            env_remove: Vec::new(),
            working_dir: None,
            log_file: log_file.into(),
            wait_ready: true,
            arms_death_signal: false,
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets one environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Whether the program arms the parent-death signal itself (default:
    /// no); see [`ChildSpec::arms_death_signal`].
    pub fn arms_death_signal(mut self, arms: bool) -> Self {
        self.arms_death_signal = arms;
        self
    }

    /// Whether to wait for `READY=1` (default: yes).
    pub fn wait_ready(mut self, wait: bool) -> Self {
        self.wait_ready = wait;
        self
    }
}
