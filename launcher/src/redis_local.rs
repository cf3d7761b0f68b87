//! Making sure there is a Redis: check the URL, and in development start a
//! private `redis-server` when a local URL does not answer.
//!
//! The private server keeps its data under `<data>/redis`, lives exactly as
//! long as the launcher (it is killed with it, even on SIGKILL, through the
//! parent-death signal) and is announced in the log, so a fresh machine needs
//! nothing prepared by hand.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::error::LaunchError;
use crate::settings::find_on_path;
use circles_supervise::parent::die_with_parent;

/// What a Redis check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisCheck {
    /// Something answers PING.
    Reachable,
    /// Nothing answers at a local URL; a private server can be started on this port.
    StartLocal {
        /// The port from the URL.
        port: u16,
        /// The redis-server executable.
        program: PathBuf,
    },
}

/// Pings `url`; if nothing answers and `autostart` allows it and the URL is
/// local, says how to start a private server instead. Errors name the URL
/// and what to do.
pub async fn check(url: &str, autostart: bool) -> Result<RedisCheck, LaunchError> {
    let unreachable = |reason: String| LaunchError::RedisUnreachable {
        url: url.into(),
        reason,
    };
    crate::settings::check_redis_url(url)?;
    let info = redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|e| unreachable(format!("invalid URL: {e}")))?;
    let err = match ping(url).await {
        Ok(()) => return Ok(RedisCheck::Reachable),
        Err(e) => e,
    };
    let local_port = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) if is_local(host) => Some(*port),
        _ => None,
    };
    match local_port {
        // A private server has no password, so the URL's would fail: say
        // so before starting one rather than after.
        Some(_) if autostart && circles_dispatcher::RedisUrl::new(url).has_credentials() => {
            Err(unreachable(format!(
                "{err}; a private redis-server is started only for a URL without a password: start Redis with that password there, or drop it from --redis-url"
            )))
        }
        Some(port) if autostart => match find_on_path("redis-server") {
            Some(program) => Ok(RedisCheck::StartLocal { port, program }),
            None => Err(unreachable(format!(
                "{err}; and redis-server is not installed to start a private one: install it (Debian/Ubuntu: sudo apt-get install -y redis-server; macOS: brew install redis)"
            ))),
        },
        _ => Err(unreachable(format!(
            "{err}; start Redis there or pass --redis-url"
        ))),
    }
}

fn is_local(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]")
}

/// One PING with a short timeout.
pub async fn ping(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())?;
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A redis-server owned by this launcher.
#[derive(Debug)]
pub struct LocalRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl LocalRedis {
    /// Starts `program` on 127.0.0.1:`port` with data under `dir`, and waits
    /// until it answers.
    pub async fn start(program: &Path, port: u16, dir: &Path) -> Result<Self, LaunchError> {
        std::fs::create_dir_all(dir).map_err(|source| LaunchError::DataDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let log = std::fs::File::create(dir.join("redis.log"))
            .map_err(|e| LaunchError::io("creating redis.log", e))?;
        let mut cmd = Command::new(program);
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .args(["--save", "60 1", "--appendonly", "no"]);
        if major_version(program).is_some_and(|v| v >= 7) {
            // SIGTERM (the parent-death signal) makes Redis save, and by
            // default it refuses to exit when the save fails — as it does
            // when the data directory is gone, leaving an orphan. (An
            // option of Redis 7; older ones do not know it.)
            cmd.args(["--shutdown-on-sigterm", "force"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| LaunchError::io("redis.log", e))?,
            )
            .stderr(log)
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| LaunchError::LocalRedis(format!("{}: {e}", program.display())))?;
        let url = format!("redis://127.0.0.1:{port}");
        let start = Instant::now();
        loop {
            if ping(&url).await.is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(LaunchError::LocalRedis(format!(
                    "it exited with {status}; see {}",
                    dir.join("redis.log").display()
                )));
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(LaunchError::LocalRedis(
                    "it did not answer within 10 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            child,
            port,
            dir: dir.to_path_buf(),
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops it with SIGTERM (so it saves), SIGKILL after 5 s.
    pub async fn stop(mut self) {
        circles_supervise::terminate(&mut self.child, Duration::from_secs(5)).await;
    }
}

/// The major version of a `redis-server` (`Redis server v=7.0.15 …`).
fn major_version(program: &Path) -> Option<u32> {
    let out = std::process::Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().find_map(|w| w.strip_prefix("v="))?;
    version.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_private_server_is_offered_for_a_url_with_a_password() {
        let port = circles_test_support::free_port();
        let url = format!("redis://:s3cret@127.0.0.1:{port}");
        let err = check(&url, true).await.unwrap_err().to_string();
        assert!(err.contains("only for a URL without a password"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        // Without one, the same unreachable port is offered one.
        let plain = format!("redis://127.0.0.1:{port}");
        if find_on_path("redis-server").is_some() {
            assert!(matches!(
                check(&plain, true).await,
                Ok(RedisCheck::StartLocal { port: p, .. }) if p == port
            ));
        }
    }
}
