//! Errors of the launcher library. Each names the object at fault; the
//! validation ones are raised before anything is started or written.

use std::path::PathBuf;

use circles_dispatcher::InvalidKey;

/// Everything the launcher can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A circle key is not a secp256k1 public key.
    #[error(transparent)]
    InvalidKey(#[from] InvalidKey),
    /// `--use-service-manager` without `--worker-binary`.
    #[error(
        "worker binary path required: --use-service-manager needs --worker-binary PATH (e.g. --worker-binary target/release/worker)"
    )]
    WorkerBinaryRequired,
    /// A binary that is not there or cannot be run.
    #[error("{what} binary {path} {problem}")]
    Binary {
        /// "worker" or "server".
        what: &'static str,
        /// The path given or found.
        path: PathBuf,
        /// "does not exist", "is not executable", ...
        problem: String,
    },
    /// An init script that cannot be read.
    #[error("failed to read init script {path} for circle {circle}: {source}")]
    InitScript {
        /// The circle it belongs to.
        circle: String,
        /// The script path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The same circle given twice.
    #[error("circle {key} is given more than once")]
    DuplicateCircle {
        /// The canonical key.
        key: String,
    },
    /// Two listeners on one port.
    #[error("port {port} is assigned twice ({first} and {second})")]
    DuplicatePort {
        /// The port.
        port: u16,
        /// Its first user.
        first: String,
        /// Its second user.
        second: String,
    },
    /// A port something else already listens on.
    #[error(
        "port {port} is already in use on {host} (needed for {purpose}); stop what uses it or pick another port"
    )]
    PortInUse {
        /// Host part.
        host: String,
        /// The port.
        port: u16,
        /// What we wanted it for.
        purpose: String,
    },
    /// A Redis URL the client cannot use.
    #[error(
        "invalid Redis URL `{url}`: {reason} (expected redis://[:password@]host[:port][/db], rediss://… or unix:///path/to/redis.sock)"
    )]
    InvalidRedisUrl {
        /// The URL (shown redacted).
        url: circles_dispatcher::RedisUrl,
        /// What the parser said.
        reason: String,
    },
    /// Nothing answers at the Redis URL (and we will not start one).
    #[error("Redis unreachable at {url}: {reason}")]
    RedisUnreachable {
        /// The URL (shown redacted).
        url: circles_dispatcher::RedisUrl,
        /// Why, with a hint.
        reason: String,
    },
    /// This run names another Redis than the installed services use.
    #[error(
        "the installed circle services use Redis at {installed}, not {given}: pass the --redis-url (or REDIS_URL) they were installed with, or leave it out to use it, or `launcher cleanup` first to move them"
    )]
    RedisMismatch {
        /// The URL given now (shown redacted).
        given: circles_dispatcher::RedisUrl,
        /// The URL the services were installed with (shown redacted).
        installed: circles_dispatcher::RedisUrl,
    },
    /// No circles to launch.
    #[error(
        "no circles given: pass -c PUBLIC_KEY[:init.rhai] (see `launcher keygen`), or a circles.json file; {DEFAULT_HINT}"
    )]
    NoCircles,
    /// A circles.json that cannot be used.
    #[error("circles config {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A generated key that cannot be stored or read back.
    #[error("circle key file {path}: {message}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The data directory cannot be created or written.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A data directory systemd cannot give to unprivileged services.
    #[error(
        "data directory {path}: system services keep their databases in a systemd StateDirectory=, owned by each service's own unprivileged user, which must lie under /var/lib (the default is /var/lib/circles); choose a --data-dir there"
    )]
    DataDirNotState {
        /// The directory given.
        path: PathBuf,
    },
    /// A worker never became ready.
    #[error("worker for circle {circle} did not become ready: {reason}")]
    WorkerNotReady {
        /// The circle.
        circle: String,
        /// Why (exit status, timeout, last log lines).
        reason: String,
    },
    /// Direct mode: not one circle could be served; everything the run
    /// started was stopped again.
    #[error(
        "no circle could be served; stopped everything this run started:{}",
        lines(failures)
    )]
    NothingServed {
        /// (circle name, why).
        failures: Vec<(String, String)>,
    },
    /// Init scripts failed. Direct mode stops what it started; service mode
    /// leaves the services installed and running.
    #[error("{}{}", init_failures(failures), if *services_kept {
        "\nthe services stay installed and running: fix the script and run again (only circles whose script changed are restarted)"
    } else {
        "\nstopped everything this run started"
    })]
    InitFailed {
        /// (circle name, the script's error).
        failures: Vec<(String, String)>,
        /// Whether the circles keep running (service mode).
        services_kept: bool,
    },
    /// A circle name, key or prefix that names no circle, or several.
    #[error(transparent)]
    Address(#[from] circles_deploy::address::AddressError),
    /// A private redis-server could not be started.
    #[error("could not start a private redis-server: {0}")]
    LocalRedis(String),
    /// The WebSocket server failed.
    #[error(transparent)]
    Server(#[from] circles_server::ServerError),
    /// The service manager refused or failed.
    #[error(transparent)]
    Service(#[from] circles_services::ServiceError),
    /// A dispatcher error outside a task outcome.
    #[error(transparent)]
    Dispatch(#[from] circles_dispatcher::DispatchError),
    /// A worker serves the circle (on this host or another), so it cannot
    /// be backed up from here or restored.
    #[error("circle {circle} is served by pid {pid} on host {host}: {hint}")]
    CircleServed {
        /// The circle.
        circle: String,
        /// The owner's host name.
        host: String,
        /// The owner's process id (on that host).
        pid: u32,
        /// What to do instead.
        hint: String,
    },
    /// A live worker could not give a snapshot of its database.
    #[error("could not take a snapshot of circle {circle}'s database: {reason}")]
    Snapshot {
        /// The circle.
        circle: String,
        /// Why.
        reason: String,
    },
    /// No database of a circle that no worker serves.
    #[error(
        "circle {circle} has no live worker and no database in {} (wrong --data-dir, or backing up on the wrong host?)",
        looked_in.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NoDatabase {
        /// The circle.
        circle: String,
        /// Every place its database was looked for.
        looked_in: Vec<PathBuf>,
    },
    /// A circle name or key that the data directory does not know.
    #[error(
        "no circle `{given}` in {} (neither a key file under keys/ nor a circle in services.json); give its public key or --data-dir",
        data_dirs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" or ")
    )]
    UnknownCircle {
        /// What was given.
        given: String,
        /// The data directories searched.
        data_dirs: Vec<PathBuf>,
    },
    /// A backup that cannot be written.
    #[error("backup {path}: {message}")]
    Backup {
        /// The backup file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A backup that cannot be restored; nothing was written.
    #[error("cannot restore {path}: {message}")]
    Restore {
        /// The backup file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The circle database failed.
    #[error(transparent)]
    Store(#[from] circles_worker::StoreError),
    /// A Redis command failed.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Other I/O.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

const DEFAULT_HINT: &str = "no ./circles.json found either";

/// `\n  name: reason` per entry.
fn lines(items: &[(String, String)]) -> String {
    items
        .iter()
        .map(|(name, why)| format!("\n  {name}: {why}"))
        .collect()
}

/// `init script of circle X failed: …`, one line per circle.
fn init_failures(items: &[(String, String)]) -> String {
    items
        .iter()
        .map(|(name, why)| format!("init script of circle {name} failed: {why}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl LaunchError {
    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
