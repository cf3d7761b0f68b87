//! From command-line flags to validated launch settings.
//!
//! Everything that can be wrong with the input is found here, before the
//! launcher starts, writes or installs anything: keys, init scripts,
//! duplicates, binaries, ports. (Redis is checked by [`crate::redis_local`].)
//! The one thing this module may create afterwards is the key file of a
//! circles.json circle seen for the first time — and only through
//! [`ResolvedCircles::persist_new_keys`], called once validation passed.

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use circles_dispatcher::{CircleKeypair, CirclePublicKey};
use serde::{Deserialize, Serialize};

use crate::cli::{Ceiling, CommonArgs, DEFAULT_CONFIG_FILE, DEFAULT_DATA_DIR, LaunchArgs};
use crate::error::LaunchError;

/// An init script, read during validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitScript {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its text.
    pub source: String,
}

/// One circle to launch.
#[derive(Debug, Clone)]
pub struct CircleSpec {
    /// A short human name (from circles.json, or derived from the key).
    pub name: String,
    /// The circle's identity.
    pub key: CirclePublicKey,
    /// Sent through the dispatcher once the worker is ready.
    pub init_script: Option<InitScript>,
    /// Its own WebSocket port (circles.json format), besides the path route.
    pub port: Option<u16>,
    /// Resource ceilings of its worker service from circles.json; flags and
    /// the installed values fill in what is not set.
    pub ceilings: WorkerCeilings,
}

/// Resource ceilings of a worker service (see `--memory-max` and friends);
/// `None` means "not chosen here".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCeilings {
    /// Memory (systemd `MemoryMax=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<Ceiling>,
    /// Processes and threads (systemd `TasksMax=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_max: Option<Ceiling>,
    /// Open files (systemd `LimitNOFILE=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_nofile: Option<u64>,
}

impl WorkerCeilings {
    /// What workers get when nothing else is chosen: 1 GiB (well above
    /// the worker's own per-task memory budget, so that trips first and the
    /// kernel's ceiling is the backstop), 64 tasks (the worker runs one
    /// script at a time on a handful of threads), 1024 files (a few Redis
    /// connections and one database file).
    pub const DEFAULT: WorkerCeilings = WorkerCeilings {
        memory_max: Some(Ceiling::Limit(1 << 30)),
        tasks_max: Some(Ceiling::Limit(64)),
        limit_nofile: Some(1024),
    };

    /// Each ceiling from `self`, else from `fallback`.
    pub fn or(self, fallback: WorkerCeilings) -> WorkerCeilings {
        WorkerCeilings {
            memory_max: self.memory_max.or(fallback.memory_max),
            tasks_max: self.tasks_max.or(fallback.tasks_max),
            limit_nofile: self.limit_nofile.or(fallback.limit_nofile),
        }
    }
}

/// Open files of the WebSocket server service when nothing else is chosen.
pub const DEFAULT_SERVER_NOFILE: u64 = 65_536;

/// A program to run, possibly the launcher itself with a subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// Absolute path of the executable.
    pub path: PathBuf,
    /// Arguments that come before the program's own (e.g. `run-worker`).
    pub leading_args: Vec<String>,
}

/// Validated settings of a launch.
#[derive(Debug, Clone)]
pub struct LaunchSettings {
    /// The circles, in the order given.
    pub circles: Vec<CircleSpec>,
    /// WebSocket server address.
    pub host: String,
    /// WebSocket server port.
    pub port: u16,
    /// Redis URL.
    pub redis_url: String,
    /// WebSocket authentication on.
    pub enable_auth: bool,
    /// Absolute data directory.
    pub data_dir: PathBuf,
    /// How long each init script may take.
    pub init_timeout: Duration,
    /// Start a private redis-server when a local URL does not answer.
    pub redis_autostart: bool,
    /// Log filter for the launcher and the workers it starts.
    pub log_level: &'static str,
    /// Worker ceilings given as flags for this run's circles.
    pub worker_ceilings: WorkerCeilings,
    /// `--server-limit-nofile`, if given.
    pub server_nofile: Option<u64>,
}

/// Circles plus the key files that must be written once validation passed.
#[derive(Debug)]
pub struct ResolvedCircles {
    /// The circles.
    pub circles: Vec<CircleSpec>,
    /// Keypairs generated for circles.json entries seen for the first time.
    new_keys: Vec<(PathBuf, StoredKey)>,
}

/// A generated circle identity on disk (`<data>/keys/<name>.json`, mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredKey {
    /// The circle name.
    pub name: String,
    /// Public key, canonical hex.
    pub public_key: String,
    /// Secret key, hex.
    pub secret_key: String,
}

/// One entry of circles.json (the older format).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigEntry {
    name: String,
    port: u16,
    #[serde(default)]
    script_path: Option<PathBuf>,
    /// Memory ceiling of its worker service: bytes or "infinity".
    #[serde(default)]
    memory_max: Option<Ceiling>,
    /// Task ceiling of its worker service: a count or "infinity".
    #[serde(default)]
    tasks_max: Option<Ceiling>,
    /// Open files of its worker service.
    #[serde(default)]
    limit_nofile: Option<u64>,
}

impl LaunchSettings {
    /// Validates the launch flags of direct mode, ports included; the data
    /// directory defaults to `./launch_data`. Reads files; starts and writes
    /// nothing.
    pub fn resolve(
        args: &LaunchArgs,
        common: &CommonArgs,
    ) -> Result<(Self, ResolvedCircles), LaunchError> {
        let data_dir = common
            .data_dir
            .clone()
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        let (settings, resolved) = Self::resolve_without_ports(args, common, &data_dir, None)?;
        check_ports(&settings.host, settings.port, &resolved.circles)?;
        Ok((settings, resolved))
    }

    /// [`Self::resolve`] with the data directory chosen by the caller and
    /// without the port check (service mode checks ports itself: its own
    /// running server may hold them).
    ///
    /// Keys of circles.json circles missing from `data_dir` are taken from
    /// `earlier_data_dir` (an earlier install's, see [`crate::migrate`])
    /// when they are there, and copied over with the new keys.
    pub fn resolve_without_ports(
        args: &LaunchArgs,
        common: &CommonArgs,
        data_dir: &Path,
        earlier_data_dir: Option<&Path>,
    ) -> Result<(Self, ResolvedCircles), LaunchError> {
        let data_dir = absolute(data_dir)?;
        let redis_url = common.redis_url_or_default();
        check_redis_url(&redis_url)?;
        let resolved = resolve_circles(args, &data_dir, earlier_data_dir)?;
        let port = args.port.unwrap_or(circles_server::DEFAULT_PORT);
        check_duplicate_ports(port, &resolved.circles)?;
        let settings = Self {
            circles: resolved.circles.clone(),
            host: args
                .host
                .clone()
                .unwrap_or_else(|| circles_server::DEFAULT_HOST.to_string()),
            port,
            redis_url,
            enable_auth: args.enable_auth,
            data_dir,
            init_timeout: Duration::from_secs(args.init_timeout),
            redis_autostart: !args.no_redis_autostart,
            log_level: common.log_level(),
            worker_ceilings: WorkerCeilings {
                memory_max: args.memory_max,
                tasks_max: args.tasks_max,
                limit_nofile: args.limit_nofile,
            },
            server_nofile: args.server_limit_nofile,
        };
        Ok((settings, resolved))
    }

    /// `ws://host:port/<pk>` of a circle.
    pub fn ws_url(&self, key: &CirclePublicKey) -> String {
        format!("ws://{}:{}/{key}", url_host(&self.host), self.port)
    }

    /// Where worker logs go in direct mode, and launchd's log files.
    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }
}

fn url_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

impl ResolvedCircles {
    /// Writes key files generated during validation. Call only after every
    /// other check passed.
    pub fn persist_new_keys(&self) -> Result<(), LaunchError> {
        for (path, key) in &self.new_keys {
            write_key_file(path, key)?;
            tracing::info!(circle = %key.name, path = %path.display(), "generated a keypair for circle");
        }
        Ok(())
    }
}

fn resolve_circles(
    args: &LaunchArgs,
    data_dir: &Path,
    earlier_data_dir: Option<&Path>,
) -> Result<ResolvedCircles, LaunchError> {
    let config = args.config_flag.clone().or_else(|| args.config.clone());
    let resolved = if !args.circles.is_empty() {
        ResolvedCircles {
            circles: args
                .circles
                .iter()
                .map(|arg| parse_circle_arg(arg))
                .collect::<Result<_, _>>()?,
            new_keys: Vec::new(),
        }
    } else if let Some(path) = config {
        load_config(&path, data_dir, earlier_data_dir)?
    } else if Path::new(DEFAULT_CONFIG_FILE).exists() {
        load_config(Path::new(DEFAULT_CONFIG_FILE), data_dir, earlier_data_dir)?
    } else {
        return Err(LaunchError::NoCircles);
    };
    let mut seen = HashMap::new();
    for c in &resolved.circles {
        if seen.insert(c.key, ()).is_some() {
            return Err(LaunchError::DuplicateCircle {
                key: c.key.to_hex(),
            });
        }
    }
    Ok(resolved)
}

/// Fails with [`LaunchError::InvalidRedisUrl`] unless `url` is one the
/// Redis client can dial (`redis://`, `rediss://`, `unix://`): a URL of
/// another kind is a mistake to name, not a Redis to call unreachable.
pub fn check_redis_url(url: &str) -> Result<(), LaunchError> {
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(drop)
        .map_err(|e| LaunchError::InvalidRedisUrl {
            url: url.into(),
            reason: e.to_string(),
        })
}

/// `PK` or `PK:path/to/init.rhai`.
pub fn parse_circle_arg(arg: &str) -> Result<CircleSpec, LaunchError> {
    let (key, script) = match arg.split_once(':') {
        Some((k, s)) if !s.is_empty() => (k, Some(PathBuf::from(s))),
        Some((k, _)) => (k, None),
        None => (arg, None),
    };
    let key = CirclePublicKey::parse(key)?;
    let name = short_name(&key);
    let init_script = script.map(|p| read_script(&name, &p)).transpose()?;
    Ok(CircleSpec {
        name,
        key,
        init_script,
        port: None,
        ceilings: WorkerCeilings::default(),
    })
}

pub use circles_deploy::short_name;

fn read_script(circle: &str, path: &Path) -> Result<InitScript, LaunchError> {
    let source = std::fs::read_to_string(path).map_err(|source| LaunchError::InitScript {
        circle: circle.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(InitScript { path, source })
}

/// Longest circle name: names become file names (`keys/<name>.json`) and
/// table cells.
const MAX_CIRCLE_NAME: usize = 64;

/// Whether `name` can name a circle: 1 to [`MAX_CIRCLE_NAME`] ASCII letters,
/// digits, `-` or `_` (it becomes a file name, `keys/<name>.json`).
pub fn is_valid_circle_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CIRCLE_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Reads and validates a circles.json; generates (but does not write) keys
/// for circles seen for the first time under `data_dir` — or takes them from
/// `earlier_data_dir`, an earlier install's (see [`crate::migrate`]).
pub fn load_config(
    path: &Path,
    data_dir: &Path,
    earlier_data_dir: Option<&Path>,
) -> Result<ResolvedCircles, LaunchError> {
    let err = |message: String| LaunchError::Config {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let entries: Vec<ConfigEntry> = serde_json::from_str(&text).map_err(|e| {
        err(format!(
            "expected an array of {{\"name\", \"port\", \"script_path\"?}}: {e}"
        ))
    })?;
    if entries.is_empty() {
        return Err(err("it lists no circles".into()));
    }
    // Script paths are relative to the file, so a config works from any cwd.
    let base = path.parent().unwrap_or(Path::new("."));
    let mut names = BTreeMap::new();
    let mut circles = Vec::new();
    let mut new_keys = Vec::new();
    for entry in entries {
        if !is_valid_circle_name(&entry.name) {
            return Err(err(format!(
                "circle name `{}` must be 1 to {MAX_CIRCLE_NAME} letters, digits, - or _",
                circles_dispatcher::text::clip(&entry.name, 64)
            )));
        }
        if names.insert(entry.name.clone(), ()).is_some() {
            return Err(err(format!("circle name `{}` appears twice", entry.name)));
        }
        if entry.port == 0 {
            return Err(err(format!("circle `{}` has port 0", entry.name)));
        }
        // The same floors as the flags: below them a worker cannot run.
        if let Some(Ceiling::Limit(bytes)) = entry.memory_max
            && bytes < 16 << 20
        {
            return Err(err(format!(
                "circle `{}`: memory_max {bytes} is below 16 MiB, too little for a worker",
                entry.name
            )));
        }
        if let Some(Ceiling::Limit(n)) = entry.tasks_max
            && n < 8
        {
            return Err(err(format!(
                "circle `{}`: tasks_max {n} is below 8, too few for a worker",
                entry.name
            )));
        }
        if entry.limit_nofile.is_some_and(|n| n < 16) {
            return Err(err(format!(
                "circle `{}`: limit_nofile is below 16, too few for a worker",
                entry.name
            )));
        }
        let key_path = key_file(data_dir, &entry.name);
        let earlier_key = earlier_data_dir
            .map(|d| key_file(d, &entry.name))
            .filter(|p| !key_path.exists() && p.exists());
        let key = if key_path.exists() {
            read_key_file(&key_path)?
        } else if let Some(earlier) = earlier_key {
            // The circle's identity from an earlier install: copied over,
            // never replaced by a new one.
            let public = read_key_file(&earlier)?;
            let text = std::fs::read_to_string(&earlier).map_err(|e| LaunchError::KeyFile {
                path: earlier.clone(),
                message: e.to_string(),
            })?;
            let stored: StoredKey =
                serde_json::from_str(&text).map_err(|e| LaunchError::KeyFile {
                    path: earlier.clone(),
                    message: format!("not a key file: {e}"),
                })?;
            new_keys.push((key_path, stored));
            public
        } else {
            let pair = CircleKeypair::generate();
            let stored = StoredKey {
                name: entry.name.clone(),
                public_key: pair.public.to_hex(),
                secret_key: pair.secret_hex(),
            };
            new_keys.push((key_path, stored));
            pair.public
        };
        let init_script = entry
            .script_path
            .map(|p| read_script(&entry.name, &if p.is_absolute() { p } else { base.join(p) }))
            .transpose()?;
        circles.push(CircleSpec {
            name: entry.name,
            key,
            init_script,
            port: Some(entry.port),
            ceilings: WorkerCeilings {
                memory_max: entry.memory_max,
                tasks_max: entry.tasks_max,
                limit_nofile: entry.limit_nofile,
            },
        });
    }
    Ok(ResolvedCircles { circles, new_keys })
}

/// `<data>/keys/<name>.json`
pub fn key_file(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("keys").join(format!("{name}.json"))
}

/// The public key in a circle key file, checked against its secret key.
pub fn read_key_file(path: &Path) -> Result<CirclePublicKey, LaunchError> {
    load_key_file(path).map(|(_, key)| key)
}

/// Reads a key file and checks that its keys belong together.
pub(crate) fn load_key_file(path: &Path) -> Result<(StoredKey, CirclePublicKey), LaunchError> {
    let err = |message: String| LaunchError::KeyFile {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let stored: StoredKey =
        serde_json::from_str(&text).map_err(|e| err(format!("not a key file: {e}")))?;
    let key = stored.check().map_err(err)?;
    Ok((stored, key))
}

impl StoredKey {
    /// The circle key, once the secret key is checked to give it.
    pub fn check(&self) -> Result<CirclePublicKey, String> {
        let pair = CircleKeypair::from_secret_hex(&self.secret_key).map_err(|e| e.to_string())?;
        if pair.public.to_hex() != self.public_key.to_lowercase() {
            return Err("its public key does not match its secret key".into());
        }
        Ok(pair.public)
    }
}

pub(crate) fn write_key_file(path: &Path, key: &StoredKey) -> Result<(), LaunchError> {
    let err = |message: String| LaunchError::KeyFile {
        path: path.to_path_buf(),
        message,
    };
    if path.exists() {
        return Err(err(
            "already exists; not overwriting a circle identity".into()
        ));
    }
    let json = serde_json::to_string_pretty(key).expect("key serialises");
    write_atomically(path, json.as_bytes(), 0o600).map_err(|e| err(e.to_string()))
}

pub use circles_deploy::fs::write_atomically;

/// `mkdir -p`, the last directory (made) mode 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

fn check_ports(host: &str, port: u16, circles: &[CircleSpec]) -> Result<(), LaunchError> {
    for (port, purpose) in check_duplicate_ports(port, circles)? {
        check_port_free(host, port, &purpose)?;
    }
    Ok(())
}

/// Every port with its user; fails if one is used twice.
fn check_duplicate_ports(
    port: u16,
    circles: &[CircleSpec],
) -> Result<BTreeMap<u16, String>, LaunchError> {
    let mut users: BTreeMap<u16, String> = BTreeMap::new();
    users.insert(port, "the WebSocket server".into());
    for c in circles {
        if let Some(p) = c.port {
            let user = format!("circle {}", c.name);
            if let Some(first) = users.insert(p, user.clone()) {
                return Err(LaunchError::DuplicatePort {
                    port: p,
                    first,
                    second: user,
                });
            }
        }
    }
    Ok(users)
}

/// Fails with [`LaunchError::PortInUse`] when `host:port` cannot be bound.
pub fn check_port_free(host: &str, port: u16, purpose: &str) -> Result<(), LaunchError> {
    if port == 0 {
        return Ok(());
    }
    TcpListener::bind((host, port))
        .map(drop)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => LaunchError::PortInUse {
                host: host.to_string(),
                port,
                purpose: purpose.to_string(),
            },
            _ => LaunchError::io(
                format!("cannot listen on {host}:{port} (needed for {purpose})"),
                e,
            ),
        })
}

/// Checks that `path` is an executable file and makes it absolute.
pub fn check_binary(what: &'static str, path: &Path) -> Result<PathBuf, LaunchError> {
    use std::os::unix::fs::PermissionsExt;
    let problem = |problem: &str| LaunchError::Binary {
        what,
        path: path.to_path_buf(),
        problem: problem.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(|_| problem("does not exist"))?;
    if !meta.is_file() {
        return Err(problem("is not a file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(problem("is not executable"));
    }
    // Not canonicalize: multi-call binaries (redis-server → redis-check-rdb)
    // dispatch on the name they were started by.
    std::path::absolute(path).map_err(|e| problem(&format!("cannot be resolved: {e}")))
}

/// The worker program: `--worker-binary`, else `worker` next to the launcher,
/// else on PATH, else the launcher itself (`launcher run-worker`).
pub fn resolve_worker_program(given: Option<&Path>) -> Result<Program, LaunchError> {
    resolve_program("worker", given, "run-worker", runs_our_worker_code)
}

/// Whether the `worker` at `path` runs the launcher's own worker code: its
/// `--version` names the same source fingerprint ([`circles_worker::SOURCE_ID`]).
/// Asked only of a `worker` older than the launcher; one that does not
/// answer within two seconds does not.
fn runs_our_worker_code(path: &Path) -> bool {
    use std::process::{Command, Stdio};
    let Ok(mut child) = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
    let mut out = String::new();
    let _ = child
        .stdout
        .take()
        .map(|mut stdout| std::io::Read::read_to_string(&mut stdout, &mut out));
    out.contains(&format!("(source {})", circles_worker::SOURCE_ID))
}

/// The server program: `--server-binary`, else `server` next to the
/// launcher, else on PATH, else the launcher itself (`launcher serve`).
pub fn resolve_server_program(given: Option<&Path>) -> Result<Program, LaunchError> {
    resolve_program("server", given, "serve", |_| false)
}

fn resolve_program(
    what: &'static str,
    given: Option<&Path>,
    builtin: &str,
    runs_our_code: fn(&Path) -> bool,
) -> Result<Program, LaunchError> {
    if let Some(path) = given {
        return Ok(Program {
            path: check_binary(what, path)?,
            leading_args: Vec::new(),
        });
    }
    let me = std::env::current_exe()
        .map_err(|e| LaunchError::io("locating the launcher executable", e))?;
    resolve_beside(&me, what, builtin, find_on_path, runs_our_code)
}

/// [`resolve_program`] without a given path, for the program `me`: beside
/// it (if older than `me`, only when `runs_our_code` says it is the same
/// code), else `on_path`, else `me` itself with its `builtin` subcommand.
fn resolve_beside(
    me: &Path,
    what: &'static str,
    builtin: &str,
    on_path: impl Fn(&str) -> Option<PathBuf>,
    runs_our_code: impl Fn(&Path) -> bool,
) -> Result<Program, LaunchError> {
    // Beside us, or one level up when we are an example or a test binary
    // (target/debug/examples/…, target/debug/deps/…).
    let dir = me.parent().unwrap_or(Path::new("."));
    let mut candidates = vec![dir.join(what)];
    if dir
        .file_name()
        .is_some_and(|n| n == "examples" || n == "deps")
    {
        candidates.extend(dir.parent().map(|d| d.join(what)));
    }
    // A `worker` older than the launcher beside it may be left from an
    // earlier build (`cargo run --bin launcher` rebuilds only the launcher)
    // — or current: cargo relinks only binaries whose code changed. Unless
    // it shows it runs the same code, prefer the built-in one, which does.
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let stale = |p: &Path| match (modified(p), modified(me)) {
        (Some(theirs), Some(ours)) => {
            theirs + std::time::Duration::from_secs(60) < ours
                && me.file_stem().is_some_and(|n| n == "launcher")
                && !runs_our_code(p)
        }
        _ => false,
    };
    match candidates.iter().find_map(|p| check_binary(what, p).ok()) {
        Some(path) if !stale(&path) => {
            return Ok(Program {
                path,
                leading_args: Vec::new(),
            });
        }
        // Not the one on PATH either: it is no more likely to be current.
        Some(path) => tracing::info!(
            "{} is older than the launcher and not the same code (left from an earlier build?); using the launcher's built-in {what} (--{what}-binary chooses)",
            path.display()
        ),
        None => {
            if let Some(path) = on_path(what) {
                return Ok(Program {
                    path,
                    leading_args: Vec::new(),
                });
            }
        }
    }
    // Only the launcher binary itself has the built-in subcommand; anything
    // else (an example, a test) would start itself again, recursively.
    if me.file_stem().is_some_and(|n| n == "launcher") {
        tracing::debug!("no `{what}` binary found; using the launcher's built-in {what}");
        return Ok(Program {
            path: me.to_path_buf(),
            leading_args: vec![builtin.to_string()],
        });
    }
    Err(LaunchError::Binary {
        what,
        path: dir.join(what),
        problem: format!(
            "was not found (next to {}, or on PATH); build it (cargo build --bins) or pass --{what}-binary",
            me.display()
        ),
    })
}

/// First executable called `name` on PATH.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find_map(|p| check_binary("program", &p).ok())
}

fn absolute(path: &Path) -> Result<PathBuf, LaunchError> {
    std::path::absolute(path).map_err(|source| LaunchError::DataDir {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";

    /// An executable file at `path`, last modified `age` ago.
    fn program(path: &Path, age: std::time::Duration) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(std::time::SystemTime::now() - age)
            .unwrap();
    }

    #[test]
    fn a_worker_runs_our_code_when_its_version_names_our_source_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let fake = |name: &str, version: &str| {
            let path = dir.path().join(name);
            program(&path, std::time::Duration::ZERO);
            std::fs::write(&path, format!("#!/bin/sh\necho '{version}'\n")).unwrap();
            path
        };
        let ours = fake(
            "ours",
            &format!("worker 0.1.0 (source {})", circles_worker::SOURCE_ID),
        );
        let other = fake("other", "worker 0.1.0 (source 0123456789abcdef)");
        assert!(runs_our_worker_code(&ours));
        assert!(!runs_our_worker_code(&other));
        assert!(!runs_our_worker_code(&dir.path().join("missing")));
    }

    #[test]
    fn the_worker_beside_the_launcher_is_used_unless_it_is_older_than_the_launcher() {
        let dir = tempfile::tempdir().unwrap();
        let launcher = dir.path().join("launcher");
        let worker = dir.path().join("worker");
        let elsewhere = || Some(PathBuf::from("/on/path/worker"));
        let minute = std::time::Duration::from_secs(60);
        program(&launcher, minute);

        // The worker for program `me`, with `on_path` on PATH and
        // `same_code` telling which binaries run the launcher's code.
        let choose = |me: &Path, on_path: Option<PathBuf>, same_code: Option<&Path>| {
            resolve_beside(
                me,
                "worker",
                "run-worker",
                |_| on_path.clone(),
                |p| Some(p) == same_code,
            )
        };
        let built_in = (launcher.clone(), vec!["run-worker".to_string()]);

        // As new as the launcher (a build made both): used.
        program(&worker, minute);
        let chosen = choose(&launcher, elsewhere(), None).unwrap();
        assert_eq!((chosen.path, chosen.leading_args), (worker.clone(), vec![]));

        // Much older (only the launcher was rebuilt): the launcher's own
        // built-in worker, not the old one and not one on PATH either.
        program(&worker, 10 * minute);
        let chosen = choose(&launcher, elsewhere(), None).unwrap();
        assert_eq!((chosen.path, chosen.leading_args), built_in);

        // Older but the same code (cargo did not relink it): used.
        let chosen = choose(&launcher, elsewhere(), Some(&worker)).unwrap();
        assert_eq!(chosen.path, worker);

        // None beside it: the one on PATH, else the built-in one.
        std::fs::remove_file(&worker).unwrap();
        let chosen = choose(&launcher, elsewhere(), None).unwrap();
        assert_eq!(chosen.path, PathBuf::from("/on/path/worker"));
        let chosen = choose(&launcher, None, None).unwrap();
        assert_eq!((chosen.path, chosen.leading_args), built_in);

        // A program that is not the launcher (an example, a test) has no
        // built-in worker: an old one beside it is still used, and with
        // none at all it is an error that says what to do.
        let example = dir.path().join("example");
        program(&example, std::time::Duration::ZERO);
        program(&worker, 10 * minute);
        let chosen = choose(&example, None, None).unwrap();
        assert_eq!(chosen.path, worker);
        std::fs::remove_file(&worker).unwrap();
        let err = choose(&example, None, None).unwrap_err();
        assert!(err.to_string().contains("--worker-binary"), "{err}");
    }

    #[test]
    fn circle_args_parse_key_and_script() {
        let c = parse_circle_arg(KEY).unwrap();
        assert_eq!(c.key.to_hex(), KEY);
        assert!(c.init_script.is_none());
        let err = parse_circle_arg(&format!("{KEY}:/nonexistent/init.rhai"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("failed to read init script /nonexistent/init.rhai"),
            "{err}"
        );
        let err = parse_circle_arg("zz:init.rhai").unwrap_err().to_string();
        assert!(err.contains("invalid public key `zz`"), "{err}");
    }

    #[test]
    fn config_keys_are_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("circles.json");
        std::fs::write(dir.path().join("a.rhai"), "1").unwrap();
        std::fs::write(
            &cfg,
            r#"[{"name":"a","port":9001,"script_path":"a.rhai"},{"name":"b","port":9002}]"#,
        )
        .unwrap();
        let data = dir.path().join("data");
        let first = load_config(&cfg, &data, None).unwrap();
        assert_eq!(first.new_keys.len(), 2);
        assert!(
            !key_file(&data, "a").exists(),
            "nothing written during validation"
        );
        first.persist_new_keys().unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(key_file(&data, "a"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let second = load_config(&cfg, &data, None).unwrap();
        assert!(second.new_keys.is_empty());
        assert_eq!(first.circles[0].key, second.circles[0].key);
        assert_ne!(second.circles[0].key, second.circles[1].key);
        assert_eq!(second.circles[0].init_script.as_ref().unwrap().source, "1");
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.json");
        for (text, needle) in [
            ("{}", "expected an array"),
            ("[]", "lists no circles"),
            (r#"[{"name":"a b","port":1}]"#, "letters, digits"),
            (
                r#"[{"name":"a","port":1},{"name":"a","port":2}]"#,
                "appears twice",
            ),
            (
                r#"[{"name":"a","port":1,"script_path":"missing.rhai"}]"#,
                "failed to read init script",
            ),
            (
                r#"[{"name":"a","port":1,"memory_max":1024}]"#,
                "below 16 MiB",
            ),
            (r#"[{"name":"a","port":1,"tasks_max":2}]"#, "below 8"),
            (r#"[{"name":"a","port":1,"limit_nofile":3}]"#, "below 16"),
            (
                r#"[{"name":"a","port":1,"memory_max":"lots"}]"#,
                "expected an array",
            ),
        ] {
            std::fs::write(&cfg, text).unwrap();
            let err = load_config(&cfg, dir.path(), None).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn config_ceilings_and_keys_of_an_earlier_install_are_taken() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("circles.json");
        std::fs::write(
            &cfg,
            r#"[{"name":"a","port":9001,"memory_max":"infinity","tasks_max":32},{"name":"b","port":9002}]"#,
        )
        .unwrap();
        let earlier = dir.path().join("old");
        let first = load_config(&cfg, &earlier, None).unwrap();
        first.persist_new_keys().unwrap();
        assert_eq!(
            first.circles[0].ceilings.memory_max,
            Some(Ceiling::Infinity)
        );
        assert_eq!(
            first.circles[0].ceilings.tasks_max,
            Some(Ceiling::Limit(32))
        );
        assert_eq!(first.circles[1].ceilings, WorkerCeilings::default());

        // A new data directory: the identities come from the earlier one and
        // are copied over once validation passed, never regenerated.
        let data = dir.path().join("new");
        let taken = load_config(&cfg, &data, Some(&earlier)).unwrap();
        assert_eq!(taken.circles[0].key, first.circles[0].key);
        assert_eq!(taken.circles[1].key, first.circles[1].key);
        assert!(!key_file(&data, "a").exists());
        taken.persist_new_keys().unwrap();
        assert_eq!(
            std::fs::read_to_string(key_file(&data, "a")).unwrap(),
            std::fs::read_to_string(key_file(&earlier, "a")).unwrap()
        );
    }
}
