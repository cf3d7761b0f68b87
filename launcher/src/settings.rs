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

use crate::cli::{CommonArgs, DEFAULT_CONFIG_FILE, LaunchArgs};
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
}

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
}

impl LaunchSettings {
    /// Validates the launch flags, ports included. Reads files; starts and
    /// writes nothing.
    pub fn resolve(
        args: &LaunchArgs,
        common: &CommonArgs,
    ) -> Result<(Self, ResolvedCircles), LaunchError> {
        let (settings, resolved) = Self::resolve_without_ports(args, common)?;
        check_ports(&settings.host, settings.port, &resolved.circles)?;
        Ok((settings, resolved))
    }

    /// [`Self::resolve`] without the port check (service mode checks ports
    /// itself: its own running server may hold them).
    pub fn resolve_without_ports(
        args: &LaunchArgs,
        common: &CommonArgs,
    ) -> Result<(Self, ResolvedCircles), LaunchError> {
        let data_dir = absolute(&common.data_dir)?;
        let resolved = resolve_circles(args, &data_dir)?;
        let port = args.port.unwrap_or(circles_server::DEFAULT_PORT);
        check_duplicate_ports(port, &resolved.circles)?;
        let settings = Self {
            circles: resolved.circles.clone(),
            host: args
                .host
                .clone()
                .unwrap_or_else(|| circles_server::DEFAULT_HOST.to_string()),
            port,
            redis_url: common.redis_url_or_default(),
            enable_auth: args.enable_auth,
            data_dir,
            init_timeout: Duration::from_secs(args.init_timeout.max(1)),
            redis_autostart: !args.no_redis_autostart,
            log_level: common.log_level(),
        };
        Ok((settings, resolved))
    }

    /// `ws://host:port/<pk>` of a circle.
    pub fn ws_url(&self, key: &CirclePublicKey) -> String {
        format!("ws://{}:{}/{key}", url_host(&self.host), self.port)
    }

    /// Where worker logs go in direct mode.
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

fn resolve_circles(args: &LaunchArgs, data_dir: &Path) -> Result<ResolvedCircles, LaunchError> {
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
        load_config(&path, data_dir)?
    } else if Path::new(DEFAULT_CONFIG_FILE).exists() {
        load_config(Path::new(DEFAULT_CONFIG_FILE), data_dir)?
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
    })
}

/// `02abcdef…` → `circle-02abcdef`.
pub fn short_name(key: &CirclePublicKey) -> String {
    format!("circle-{}", &key.to_hex()[..8])
}

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
/// for circles seen for the first time under `data_dir`.
pub fn load_config(path: &Path, data_dir: &Path) -> Result<ResolvedCircles, LaunchError> {
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
        let key_path = key_file(data_dir, &entry.name);
        let key = if key_path.exists() {
            read_key_file(&key_path)?
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
        });
    }
    Ok(ResolvedCircles { circles, new_keys })
}

/// `<data>/keys/<name>.json`
pub fn key_file(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("keys").join(format!("{name}.json"))
}

fn read_key_file(path: &Path) -> Result<CirclePublicKey, LaunchError> {
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
    resolve_program("worker", given, "run-worker")
}

/// The server program: `--server-binary`, else `server` next to the
/// launcher, else on PATH, else the launcher itself (`launcher serve`).
pub fn resolve_server_program(given: Option<&Path>) -> Result<Program, LaunchError> {
    resolve_program("server", given, "serve")
}

fn resolve_program(
    what: &'static str,
    given: Option<&Path>,
    builtin: &str,
) -> Result<Program, LaunchError> {
    if let Some(path) = given {
        return Ok(Program {
            path: check_binary(what, path)?,
            leading_args: Vec::new(),
        });
    }
    let me = std::env::current_exe()
        .map_err(|e| LaunchError::io("locating the launcher executable", e))?;
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
    // A `worker` older than the launcher beside it is likely left from an
    // earlier build (`cargo run --bin launcher` rebuilds only the launcher):
    // the built-in one is the same code as this launcher, so prefer it.
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let stale = |p: &Path| match (modified(p), modified(&me)) {
        (Some(theirs), Some(ours)) => {
            theirs + std::time::Duration::from_secs(60) < ours
                && me.file_stem().is_some_and(|n| n == "launcher")
        }
        _ => false,
    };
    let beside = candidates.iter().filter_map(|p| check_binary(what, p).ok()).find(|p| {
        let old = stale(p);
        if old {
            tracing::warn!("{} is older than the launcher; using the launcher's built-in {what} (rebuild with `cargo build --release`)", p.display());
        }
        !old
    });
    if let Some(path) = beside.or_else(|| find_on_path(what)) {
        return Ok(Program {
            path,
            leading_args: Vec::new(),
        });
    }
    // Only the launcher binary itself has the built-in subcommand; anything
    // else (an example, a test) would start itself again, recursively.
    if me.file_stem().is_some_and(|n| n == "launcher") {
        tracing::debug!("no `{what}` binary found; using the launcher's built-in {what}");
        return Ok(Program {
            path: me,
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
        let first = load_config(&cfg, &data).unwrap();
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
        let second = load_config(&cfg, &data).unwrap();
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
        ] {
            std::fs::write(&cfg, text).unwrap();
            let err = load_config(&cfg, dir.path()).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
