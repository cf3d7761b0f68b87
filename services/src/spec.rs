//! What the launcher asks for: generic, backend-neutral service descriptions.
//!
//! A [`ServiceSpec`] is plain data with every path absolute, so rendering it
//! is a pure function and the same spec renders to the same file on every
//! run. [`ServiceSpec::validate`] rejects, before anything is written, the
//! values no backend can carry faithfully (relative paths, NUL bytes,
//! multi-line descriptions, invalid environment names).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::ServiceError;
use crate::name::ServiceName;

/// Which template a service is rendered from: `service_templates/<backend>/`
/// `<file_stem>.service` / `.plist`. A row of the template table
/// ([`crate::Templates`]), not a closed enum: a new kind of service is one
/// template file per backend and one constant here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceTemplate {
    stem: &'static str,
}

// Named like the enum variants they replace, so callers read the same.
#[allow(non_upper_case_globals)]
impl ServiceTemplate {
    /// A circle's worker process: `circle-worker.*`.
    pub const Worker: ServiceTemplate = ServiceTemplate {
        stem: "circle-worker",
    };
    /// The WebSocket server shared by all circles: `circle-ws-server.*`.
    pub const WsServer: ServiceTemplate = ServiceTemplate {
        stem: "circle-ws-server",
    };
    /// The supervisor daemon: `supervisor.*`.
    pub const Supervisor: ServiceTemplate = ServiceTemplate { stem: "supervisor" };

    /// Every template, for loading and listing.
    pub const ALL: [ServiceTemplate; 3] = [Self::Worker, Self::WsServer, Self::Supervisor];

    /// The template's file stem under `service_templates/<backend>/`.
    pub fn file_stem(self) -> &'static str {
        self.stem
    }
}

/// How the service manager restarts a service that exits.
///
/// Services always restart; these numbers bound how fast and how often, so a
/// service that cannot start (bad configuration, missing binary) ends up
/// `failed` instead of looping forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RestartPolicy {
    /// Seconds between an exit and the restart (systemd `RestartSec=`, launchd
    /// `ThrottleInterval`).
    pub restart_sec: u32,
    /// Window for counting starts (systemd `StartLimitIntervalSec=`).
    pub start_limit_interval_sec: u32,
    /// Starts allowed within the window before systemd gives up
    /// (`StartLimitBurst=`).
    pub start_limit_burst: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            restart_sec: 2,
            start_limit_interval_sec: 60,
            start_limit_burst: 5,
        }
    }
}

/// Which account a service runs as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServiceAccount {
    /// The service manager's own: root for system services, the user for
    /// user services. For services that must manage other services.
    Manager,
    /// System services: an account with no privileges. systemd allocates a
    /// fresh one per service (`DynamicUser=yes`), owning only the service's
    /// [`ServiceSpec::state_dir`]; launchd daemons run as `user`/`group`
    /// (`UserName`/`GroupName`), which must exist. User services run as the
    /// user either way.
    Unprivileged {
        /// launchd `UserName`.
        user: String,
        /// launchd `GroupName`.
        group: String,
    },
}

/// OS-enforced ceilings on a service's resources; `None` is no ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ResourceLimits {
    /// Memory of the whole service in bytes (systemd `MemoryMax=`, with
    /// `MemorySwapMax=0` so the ceiling is real memory). launchd cannot
    /// enforce one.
    pub memory_max: Option<u64>,
    /// Processes and threads (systemd `TasksMax=`). launchd cannot enforce
    /// one per service.
    pub tasks_max: Option<u64>,
    /// Open file descriptors (systemd `LimitNOFILE=`, launchd
    /// `NumberOfFiles`).
    pub nofile: Option<u64>,
}

/// Environment values that must stay out of world-readable places (a Redis
/// URL with a password): never in a unit file (systemd shows `Environment=`
/// to every user over D-Bus), only in a file of mode 0600. `Debug` hides the
/// values.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretEnv(pub BTreeMap<String, String>);

impl SecretEnv {
    /// Whether there is nothing secret.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<secret>")))
            .finish()
    }
}

/// One service to install. Pure data; every path absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Unit name / launchd label.
    pub name: ServiceName,
    /// Which template to render.
    pub template: ServiceTemplate,
    /// One line shown by `systemctl status`.
    pub description: String,
    /// Absolute path of the binary.
    pub program: PathBuf,
    /// Arguments after the program; any text, quoted by the renderer.
    pub args: Vec<String>,
    /// Environment of the process.
    pub env: BTreeMap<String, String>,
    /// Environment of the process that must not appear in world-readable
    /// files: systemd reads it from `<secrets_dir>/<name>.env` (mode 0600,
    /// `EnvironmentFile=`); a launchd plist that holds it is written 0600.
    pub secret_env: SecretEnv,
    /// Where the systemd backend keeps the 0600 environment file of a
    /// service with [`ServiceSpec::secret_env`] (created mode 0700).
    pub secrets_dir: PathBuf,
    /// The account the service runs as.
    pub account: ServiceAccount,
    /// The one directory the service writes (a worker's database). systemd
    /// system services with an unprivileged account get it as
    /// `StateDirectory=`, owned by their dynamic user, so it must lie under
    /// `/var/lib`; elsewhere it is added to `ReadWritePaths=`. launchd
    /// daemons get it owned by their account.
    pub state_dir: Option<PathBuf>,
    /// OS-enforced resource ceilings.
    pub limits: ResourceLimits,
    /// Working directory of the process.
    pub working_directory: PathBuf,
    /// Paths the service may write to (systemd `ReadWritePaths=`; the rest of
    /// the file system is read-only under `ProtectSystem=strict`). They must
    /// exist when the service starts.
    pub read_write_paths: Vec<PathBuf>,
    /// launchd writes `<log_dir>/<name>.out.log` and `.err.log` here; systemd
    /// logs to the journal and ignores it.
    pub log_dir: PathBuf,
    /// The program tells the service manager it is ready (systemd
    /// `Type=notify` with `READY=1`), so a start completes only then.
    pub notify_ready: bool,
    /// Restart timing.
    pub restart: RestartPolicy,
    /// Rendered into the file (comments in a unit, a dict in a plist) so that
    /// a change to, say, the binary's hash changes the file and the service is
    /// restarted by the next apply. Keys `[A-Za-z0-9._-]+`, one-line values.
    pub fingerprint: BTreeMap<String, String>,
}

impl ServiceSpec {
    /// Checks what every backend needs; see the module docs.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let invalid = |reason: String| ServiceError::InvalidSpec {
            name: self.name.clone(),
            reason,
        };
        check_path("program", &self.program).map_err(invalid)?;
        check_path("working directory", &self.working_directory).map_err(invalid)?;
        check_path("log directory", &self.log_dir).map_err(invalid)?;
        for path in &self.read_write_paths {
            check_path("read-write path", path).map_err(invalid)?;
        }
        check_path("secrets directory", &self.secrets_dir).map_err(invalid)?;
        if let Some(dir) = &self.state_dir {
            check_path("state directory", dir).map_err(invalid)?;
        }
        if let ServiceAccount::Unprivileged { user, group } = &self.account {
            let valid = |n: &str| {
                !n.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            };
            if !valid(user) || !valid(group) {
                return Err(invalid(format!(
                    "the account {user:?}:{group:?} is not a plain user and group name"
                )));
            }
        }
        for (key, value) in &self.secret_env.0 {
            if self.env.contains_key(key) {
                return Err(invalid(format!(
                    "environment variable {key} is given both as secret and as plain"
                )));
            }
            if value.contains('\0') || value.contains('\n') || value.contains('\r') {
                return Err(invalid(format!(
                    "secret environment variable {key} must be one line without NUL bytes"
                )));
            }
        }
        if self.limits.memory_max == Some(0)
            || self.limits.tasks_max == Some(0)
            || self.limits.nofile == Some(0)
        {
            return Err(invalid(
                "a resource ceiling of 0 would stop the service from running at all".into(),
            ));
        }
        if self.description.trim().is_empty() {
            return Err(invalid("the description is empty".into()));
        }
        if self.description.chars().any(char::is_control) {
            return Err(invalid(format!(
                "the description {:?} must be one line without control characters",
                self.description
            )));
        }
        for arg in &self.args {
            if arg.contains('\0') {
                return Err(invalid(format!("argument {arg:?} contains a NUL byte")));
            }
        }
        for (key, value) in self.env.iter().chain(self.secret_env.0.iter()) {
            let mut chars = key.chars();
            let valid_key = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_key {
                return Err(invalid(format!(
                    "environment variable name {key:?} is not [A-Za-z_][A-Za-z0-9_]*"
                )));
            }
            if value.contains('\0') {
                return Err(invalid(format!(
                    "environment variable {key} contains a NUL byte"
                )));
            }
        }
        for (key, value) in &self.fingerprint {
            let valid_key = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid_key {
                return Err(invalid(format!(
                    "fingerprint key {key:?} is not [A-Za-z0-9._-]+"
                )));
            }
            if value.chars().any(char::is_control) {
                return Err(invalid(format!(
                    "fingerprint value for {key} must be one line"
                )));
            }
        }
        if self.restart.start_limit_burst == 0 {
            return Err(invalid("start_limit_burst must be at least 1".into()));
        }
        Ok(())
    }
}

/// A path that can go into a unit file or plist as it is: absolute, UTF-8,
/// no control characters (a newline would end the unit-file line).
fn check_path(what: &str, path: &Path) -> Result<(), String> {
    let Some(text) = path.to_str() else {
        return Err(format!("the {what} {} is not UTF-8", path.display()));
    };
    if !path.is_absolute() {
        return Err(format!("the {what} {text:?} is not an absolute path"));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("the {what} {text:?} contains control characters"));
    }
    if text.ends_with(char::is_whitespace) || text.ends_with('\\') {
        // Unit-file parsers strip trailing whitespace and treat a final `\` as
        // a line continuation, so such a path cannot round-trip.
        return Err(format!(
            "the {what} {text:?} ends in whitespace or a backslash"
        ));
    }
    Ok(())
}

/// Whether services belong to the whole system or to the calling user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceScope {
    /// `/etc/systemd/system`, `/Library/LaunchDaemons`; needs root.
    System,
    /// `~/.config/systemd/user`, `~/Library/LaunchAgents`.
    User,
}

impl fmt::Display for ServiceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceScope::System => "system",
            ServiceScope::User => "user",
        })
    }
}

/// Which service manager a backend drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// systemd over D-Bus (Linux).
    Systemd,
    /// launchd through `launchctl` (macOS).
    Launchd,
    /// The `service-manager` crate, for every other platform.
    Fallback,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Systemd => "systemd",
            BackendKind::Launchd => "launchd",
            BackendKind::Fallback => "fallback",
        })
    }
}
