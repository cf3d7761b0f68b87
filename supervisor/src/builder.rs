//! [`SupervisorBuilder`]: the supervisor's settings with their defaults,
//! validated in one place before anything starts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use circles_supervise::RestartPolicy;

use crate::error::SupervisorError;
use crate::runner::ManagerKind;
use crate::secrets::Secrets;
use crate::supervisor::{AddRunner, Supervisor, SupervisorSettings};

/// The API's default port.
pub const DEFAULT_PORT: u16 = 3030;
/// Default prefix of the supervisor's own Redis keys.
pub const DEFAULT_NAMESPACE: &str = "hero";
/// Default data directory (the launcher's: circle databases are shared).
pub const DEFAULT_DATA_DIR: &str = "launch_data";
/// Default WebSocket server, for runner URLs.
pub const DEFAULT_WS_URL: &str = "ws://127.0.0.1:8080";

/// Where and how the API listens.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Address and port.
    pub addr: SocketAddr,
    /// Secrets; none means loopback only.
    pub secrets: Secrets,
}

/// Builds a [`Supervisor`]; see each setter for its default.
#[derive(Debug, Clone)]
pub struct SupervisorBuilder {
    redis_url: String,
    namespace: String,
    secrets: Secrets,
    runners: Vec<AddRunner>,
    manager: Option<ManagerKind>,
    bind: IpAddr,
    port: u16,
    data_dir: PathBuf,
    worker_binary: Option<PathBuf>,
    ws_url: String,
    worker_log_level: String,
    restart_policy: RestartPolicy,
    init_timeout: Duration,
}

impl Default for SupervisorBuilder {
    fn default() -> Self {
        Self {
            redis_url: circles_dispatcher::protocol::DEFAULT_REDIS_URL.into(),
            namespace: DEFAULT_NAMESPACE.into(),
            secrets: Secrets::none(),
            runners: Vec::new(),
            manager: None,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: DEFAULT_PORT,
            data_dir: DEFAULT_DATA_DIR.into(),
            worker_binary: None,
            ws_url: DEFAULT_WS_URL.into(),
            worker_log_level: "info".into(),
            restart_policy: RestartPolicy::default(),
            init_timeout: Duration::from_secs(
                circles_dispatcher::protocol::DEFAULT_TASK_TIMEOUT_SECS,
            ),
        }
    }
}

impl SupervisorBuilder {
    /// All defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Redis of the circles (default `redis://127.0.0.1:6379`).
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = url.into();
        self
    }

    /// Prefix of the supervisor's own Redis keys (default `hero`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// API secrets (default none: loopback only).
    pub fn secrets(mut self, secrets: Secrets) -> Self {
        self.secrets = secrets;
        self
    }

    /// A runner to have: added (and started if `start`) when it is not
    /// among the stored runners yet.
    pub fn runner(mut self, runner: AddRunner) -> Self {
        self.runners.push(runner);
        self
    }

    /// Manager of runners added without one (default: systemd when root on
    /// a booted systemd, else child).
    pub fn manager(mut self, manager: ManagerKind) -> Self {
        self.manager = Some(manager);
        self
    }

    /// API address (default 127.0.0.1).
    pub fn bind(mut self, addr: IpAddr) -> Self {
        self.bind = addr;
        self
    }

    /// API port (default 3030; 0 picks a free one).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Data directory: state file, logs, circle databases (default
    /// `launch_data`, the launcher's).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = dir.into();
        self
    }

    /// Worker binary of runners added without one (default: `worker` next
    /// to this program, else on PATH).
    pub fn worker_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.worker_binary = Some(path.into());
        self
    }

    /// The WebSocket server's `ws://host:port`, for runner URLs (default
    /// `ws://127.0.0.1:8080`).
    pub fn ws_url(mut self, url: impl Into<String>) -> Self {
        self.ws_url = url.into();
        self
    }

    /// `RUST_LOG` of workers (default `info`).
    pub fn worker_log_level(mut self, level: impl Into<String>) -> Self {
        self.worker_log_level = level.into();
        self
    }

    /// How child runners are restarted.
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.restart_policy = policy;
        self
    }

    /// How long an init script may take (default 30 s).
    pub fn init_timeout(mut self, timeout: Duration) -> Self {
        self.init_timeout = timeout;
        self
    }

    /// Validates the settings, opens the supervisor (restoring stored
    /// runners) and adds the builder's runners that are new.
    pub async fn build(self) -> Result<Arc<Supervisor>, SupervisorError> {
        let namespace_ok = !self.namespace.is_empty()
            && self.namespace.len() <= 64
            && self
                .namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
        if !namespace_ok {
            return Err(SupervisorError::Config(format!(
                "namespace {:?} must be 1 to 64 of letters, digits, `_-.:`",
                circles_dispatcher::text::clip(&self.namespace, 80)
            )));
        }
        let data_dir = std::path::absolute(&self.data_dir).map_err(|e| {
            SupervisorError::io(format!("resolving {}", self.data_dir.display()), e)
        })?;
        std::fs::create_dir_all(&data_dir).map_err(|e| {
            SupervisorError::io(
                format!("creating the data directory {}", data_dir.display()),
                e,
            )
        })?;
        let worker_binary = match self.worker_binary {
            Some(p) => Some(
                std::path::absolute(&p)
                    .map_err(|e| SupervisorError::io(format!("resolving {}", p.display()), e))?,
            ),
            None => default_worker_binary(),
        };
        let settings = SupervisorSettings {
            redis_url: self.redis_url,
            namespace: self.namespace,
            data_dir,
            default_manager: self.manager.unwrap_or_else(ManagerKind::host_default),
            worker_binary,
            ws_url: self.ws_url,
            worker_log_level: self.worker_log_level,
            restart_policy: self.restart_policy,
            init_timeout: self.init_timeout,
            api: ApiSettings {
                addr: SocketAddr::new(self.bind, self.port),
                secrets: self.secrets,
            },
        };
        let supervisor = Supervisor::open(settings).await?;
        let existing = supervisor.list_runners();
        for runner in self.runners {
            if !existing.contains(&runner.name) {
                supervisor.add_runner(runner).await?;
            }
        }
        Ok(supervisor)
    }
}

/// `worker` next to this program (or one level up, for tests and examples
/// in `target/<profile>/deps|examples`), else on PATH.
pub fn default_worker_binary() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let dir = me.parent()?;
    let mut candidates = vec![dir.join("worker")];
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        candidates.extend(dir.parent().map(|d| d.join("worker")));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("worker")));
    }
    candidates.into_iter().find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
