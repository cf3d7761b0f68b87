//! Installing and removing circles as systemd services, three ways, in the
//! same run:
//!
//! - **launcher**: the real `launcher --use-service-manager` binary (no init
//!   scripts), then `launcher cleanup` — what users get, process start,
//!   binary hashing and the status table included;
//! - **ServiceBackend**: the services crate in-process, `plan` + `apply`
//!   then `cleanup`, on the specs the launcher renders
//!   (`circles_launcher::service_mode::build_specs`) — the D-Bus work alone;
//! - **baseline**: the same rendered unit files written by hand, then one
//!   `systemctl` process per action as a shell script would:
//!   `daemon-reload` once, `enable` and `start` per unit (a `start` of a
//!   `Type=notify` unit returns once it sent READY=1), `is-active` until all
//!   are active; cleanup `stop`, `disable`, `rm`, `daemon-reload`,
//!   `reset-failed` per unit.
//!
//! Every way installs N worker services plus the WebSocket server service
//! and waits until all are running and ready. Workers need Redis: a
//! bench-owned `redis-server` (the sandbox shares the host network).
//!
//! This installs into `/etc/systemd/system` and removes *every*
//! `tf.ourworld.circles.*` service, so it refuses to run anywhere but inside
//! `scripts/systemd-sandbox` (`scripts/bench.sh` boots one when root). Data
//! directories live under `target/bench-data/` (the sandbox's `/tmp` is
//! private and units have `PrivateTmp=`) and are removed afterwards, as is
//! every unit, on error too.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use circles_dispatcher::{CircleKeypair, CirclePublicKey};
use circles_launcher::service_mode::build_specs;
use circles_launcher::settings::{CircleSpec, LaunchSettings, Program, short_name};
use circles_services::{
    BackendKind, SERVICE_PREFIX, ServiceBackend, ServiceScope, ServiceSpec, Templates,
};
use circles_test_support::{RedisServer, binary, free_port};
use comfy_table::Table;
use futures_util::FutureExt as _;
use tokio::process::Command;

use crate::process::log_tail;
use crate::stats::{fmt_duration, ratio};

/// Circle counts measured (each plus the one server service).
const CIRCLES: [usize; 3] = [1, 10, 50];
/// `scripts/systemd-sandbox` boots systemd with this in its environment.
const SANDBOX_ENV: &[u8] = b"container=systemd-sandbox";
/// Where installed units go (system scope).
const UNIT_DIR: &str = "/etc/systemd/system";
/// How long the baseline waits for every unit to be active.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// Install and cleanup times of one way.
#[derive(Debug, Clone, Copy)]
struct Times {
    install: Duration,
    cleanup: Duration,
}

/// The binaries the services run.
#[derive(Debug)]
struct Binaries {
    launcher: PathBuf,
    worker: PathBuf,
    server: PathBuf,
}

/// What every measurement needs.
struct Bench {
    backend: ServiceBackend,
    redis: RedisServer,
    bins: Binaries,
    data_root: PathBuf,
}

/// Runs the systemd benchmark and returns its table. Refuses to run outside
/// the sandbox; removes every unit it installed and its data, also on error.
pub async fn run() -> anyhow::Result<Table> {
    ensure_sandbox()?;
    let backend = ServiceBackend::detect(Some(ServiceScope::System), Templates::embedded())
        .await
        .context("connecting to systemd")?;
    anyhow::ensure!(
        backend.kind() == BackendKind::Systemd,
        "expected systemd, found {}",
        backend.describe()
    );
    let already = backend.list_installed().await?;
    anyhow::ensure!(
        already.is_empty(),
        "circle services are already installed ({}); the bench removes every one, so it does not start",
        already
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    // System services keep their data under /var/lib (StateDirectory=,
    // owned by each service's dynamic user); inside the sandbox that is a
    // private overlay.
    let data_root = PathBuf::from(BENCH_DATA_ROOT);
    remove_data(&data_root);
    std::fs::create_dir_all(&data_root)?;
    let bench = Bench {
        backend,
        redis: RedisServer::start(),
        bins: Binaries {
            launcher: binary("launcher"),
            worker: binary("worker"),
            server: binary("server"),
        },
        data_root,
    };

    let measured = AssertUnwindSafe(bench.measure()).catch_unwind().await;
    let cleaned = bench.remove_everything().await;
    match measured {
        Err(panic) => std::panic::resume_unwind(panic),
        Ok(Err(e)) => Err(match cleaned {
            Ok(()) => e,
            Err(c) => e.context(format!("and cleaning up failed too: {c:#}")),
        }),
        Ok(Ok(table)) => cleaned.map(|()| table),
    }
}

/// Fails unless this runs inside `scripts/systemd-sandbox` (PID 1's
/// environment says so).
pub fn ensure_sandbox() -> anyhow::Result<()> {
    let env = std::fs::read("/proc/1/environ").unwrap_or_default();
    anyhow::ensure!(
        env.split(|b| *b == 0).any(|kv| kv == SANDBOX_ENV),
        "the systemd section installs services and then removes every \
         `{SERVICE_PREFIX}*` service, so it runs only inside scripts/systemd-sandbox: \
         run `scripts/bench.sh systemd` as root, which boots one"
    );
    Ok(())
}

impl Bench {
    async fn measure(&self) -> anyhow::Result<Table> {
        let mut table = Table::new();
        table.load_style(comfy_table::presets::ASCII_MARKDOWN);
        table.set_header([
            "circles",
            "services",
            "launcher: install+start",
            "ServiceBackend: plan+apply",
            "systemctl per action: install+start",
            "launcher ÷ systemctl",
            "launcher cleanup",
            "ServiceBackend cleanup",
            "systemctl per action: cleanup",
            "cleanup ÷ systemctl",
        ]);
        for n in CIRCLES {
            let ours = self.launcher_binary(n).await.context("launcher binary")?;
            let lib = self.service_backend(n).await.context("ServiceBackend")?;
            let base = self
                .systemctl_per_action(n)
                .await
                .context("systemctl baseline")?;
            table.add_row([
                n.to_string(),
                (n + 1).to_string(),
                fmt_duration(ours.install),
                fmt_duration(lib.install),
                fmt_duration(base.install),
                ratio(ours.install.as_secs_f64(), base.install.as_secs_f64()),
                fmt_duration(ours.cleanup),
                fmt_duration(lib.cleanup),
                fmt_duration(base.cleanup),
                ratio(ours.cleanup.as_secs_f64(), base.cleanup.as_secs_f64()),
            ]);
        }
        Ok(table)
    }

    /// A fresh data directory for one way and circle count.
    fn data_dir(&self, way: &str, n: usize) -> anyhow::Result<PathBuf> {
        let dir = self.data_root.join(format!("{way}-{n}"));
        std::fs::create_dir_all(dir.join("logs"))?;
        Ok(dir)
    }

    /// The launcher binary, timed from spawn to exit, both ways.
    async fn launcher_binary(&self, n: usize) -> anyhow::Result<Times> {
        let dir = self.data_dir("launcher", n)?;
        let out = self.data_root.join(format!("launcher-{n}.out"));
        let mut launch = Command::new(&self.bins.launcher);
        launch
            .args(["--use-service-manager", "--system"])
            .arg("--worker-binary")
            .arg(&self.bins.worker)
            .arg("--server-binary")
            .arg(&self.bins.server)
            .arg("--redis-url")
            .arg(self.redis.url())
            .arg("-p")
            .arg(free_port().to_string())
            .arg("--data-dir")
            .arg(&dir);
        for key in fresh_keys(n) {
            launch.arg("-c").arg(key.to_hex());
        }
        let started = Instant::now();
        run_logged(&mut launch, &out).await?;
        let install = started.elapsed();
        self.ensure_all_active(n + 1).await?;

        let mut cleanup = Command::new(&self.bins.launcher);
        cleanup
            .args(["cleanup", "--system"])
            .arg("--data-dir")
            .arg(&dir);
        let started = Instant::now();
        run_logged(&mut cleanup, &out).await?;
        let cleanup = started.elapsed();
        self.ensure_none_installed().await?;
        Ok(Times { install, cleanup })
    }

    /// `ServiceBackend` in-process: plan + apply, then cleanup.
    async fn service_backend(&self, n: usize) -> anyhow::Result<Times> {
        let specs = self.specs(&self.data_dir("backend", n)?, n)?;
        let started = Instant::now();
        let plan = self.backend.plan(&specs).await?;
        let report = self.backend.apply(&plan).await?;
        let install = started.elapsed();
        anyhow::ensure!(
            report.created.len() == n + 1,
            "apply created {:?}",
            report.created
        );
        self.ensure_all_active(n + 1).await?;

        let started = Instant::now();
        let removed = self.backend.cleanup().await?;
        let cleanup = started.elapsed();
        anyhow::ensure!(removed.len() == n + 1, "cleanup removed {removed:?}");
        self.ensure_none_installed().await?;
        Ok(Times { install, cleanup })
    }

    /// The baseline: the same unit files, one `systemctl` process per action.
    async fn systemctl_per_action(&self, n: usize) -> anyhow::Result<Times> {
        let specs = self.specs(&self.data_dir("systemctl", n)?, n)?;
        let rendered = specs
            .iter()
            .map(|s| self.backend.render(s))
            .collect::<Result<Vec<_>, _>>()?;
        let units: Vec<String> = rendered.iter().map(|r| r.name.unit_name()).collect();

        let started = Instant::now();
        for r in &rendered {
            std::fs::write(&r.path, &r.contents)
                .with_context(|| format!("writing {}", r.path.display()))?;
        }
        systemctl(&["daemon-reload"]).await?;
        for unit in &units {
            systemctl(&["enable", unit]).await?;
            systemctl(&["start", unit]).await?;
        }
        wait_active(&units).await?;
        let install = started.elapsed();
        self.ensure_all_active(n + 1).await?;

        let started = Instant::now();
        for (unit, r) in units.iter().zip(&rendered) {
            systemctl(&["stop", unit]).await?;
            systemctl(&["disable", unit]).await?;
            std::fs::remove_file(&r.path)
                .with_context(|| format!("removing {}", r.path.display()))?;
            systemctl(&["daemon-reload"]).await?;
            // Fails for a unit that is no longer loaded, as a script's
            // `|| true` would allow.
            let _ = systemctl(&["reset-failed", unit]).await;
        }
        let cleanup = started.elapsed();
        self.ensure_none_installed().await?;
        Ok(Times { install, cleanup })
    }

    /// The specs `launcher --use-service-manager` would install for `n`
    /// fresh circles with data in `dir`.
    fn specs(&self, dir: &Path, n: usize) -> anyhow::Result<Vec<ServiceSpec>> {
        let settings = LaunchSettings {
            circles: fresh_keys(n)
                .into_iter()
                .map(|key| CircleSpec {
                    name: short_name(&key),
                    key,
                    init_script: None,
                    port: None,
                    ceilings: Default::default(),
                })
                .collect(),
            host: circles_server::DEFAULT_HOST.to_string(),
            port: free_port(),
            redis_url: self.redis.url(),
            enable_auth: false,
            data_dir: dir.to_path_buf(),
            init_timeout: Duration::from_secs(30),
            redis_autostart: false,
            log_level: "info",
            worker_ceilings: Default::default(),
            server_nofile: None,
        };
        let server = Program {
            path: self.bins.server.clone(),
            leading_args: Vec::new(),
        };
        // No circle with its own port is installed besides these.
        Ok(build_specs(&settings, &[], &self.bins.worker, &server)?)
    }

    /// Every installed circle service is active, and there are `expected`.
    async fn ensure_all_active(&self, expected: usize) -> anyhow::Result<()> {
        let names = self.backend.list_installed().await?;
        anyhow::ensure!(
            names.len() == expected,
            "{} circle services installed, expected {expected}",
            names.len()
        );
        for name in &names {
            let status = self.backend.status(name).await?;
            anyhow::ensure!(
                status.active_state == "active",
                "`{name}` is {} ({})",
                status.active_state,
                status.sub_state
            );
        }
        Ok(())
    }

    async fn ensure_none_installed(&self) -> anyhow::Result<()> {
        let left = self.backend.list_installed().await?;
        anyhow::ensure!(left.is_empty(), "left installed: {left:?}");
        Ok(())
    }

    /// Removes every circle service and the data directories. Falls back to
    /// `systemctl` per unit file should the D-Bus cleanup fail.
    async fn remove_everything(&self) -> anyhow::Result<()> {
        let result = match self.backend.cleanup().await {
            Ok(_) => Ok(()),
            Err(e) => {
                eprintln!("cleanup over D-Bus failed ({e}); removing unit files with systemctl");
                remove_unit_files().await.context(e)
            }
        };
        remove_data(&self.data_root);
        result
    }
}

/// Where the bench's services keep their data.
const BENCH_DATA_ROOT: &str = "/var/lib/circles-bench";

/// Removes a data directory under /var/lib and what the services' dynamic
/// users wrote for it under /var/lib/private.
fn remove_data(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    if let Ok(rel) = dir.strip_prefix("/var/lib") {
        let _ = std::fs::remove_dir_all(Path::new("/var/lib/private").join(rel));
    }
}

fn fresh_keys(n: usize) -> Vec<CirclePublicKey> {
    (0..n).map(|_| CircleKeypair::generate().public).collect()
}

/// Runs a command to completion with its output appended to `log`; fails
/// with the log's tail unless it succeeds.
async fn run_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .kill_on_drop(true)
        .status()
        .await
        .with_context(|| format!("running {:?}", cmd.as_std().get_program()))?;
    anyhow::ensure!(
        status.success(),
        "{:?} {:?} exited with {status}\n{}",
        cmd.as_std().get_program(),
        cmd.as_std().get_args().collect::<Vec<_>>(),
        log_tail(log, 30)
    );
    Ok(())
}

/// One `systemctl` process; fails with its stderr unless it succeeds.
async fn systemctl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("systemctl")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running systemctl")?;
    anyhow::ensure!(
        out.status.success(),
        "systemctl {} exited with {}: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `systemctl is-active` on all units until every one says `active`.
async fn wait_active(units: &[String]) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let out = Command::new("systemctl")
            .arg("is-active")
            .args(units)
            .stdin(Stdio::null())
            .output()
            .await?;
        let states = String::from_utf8_lossy(&out.stdout);
        if states.lines().filter(|s| *s == "active").count() == units.len() {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < ACTIVE_TIMEOUT,
            "not all units active after {ACTIVE_TIMEOUT:?}: {}",
            states.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Last resort: stop, disable and delete every circle unit file by hand.
async fn remove_unit_files() -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(UNIT_DIR)? {
        let path = entry?.path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        if !file.starts_with(SERVICE_PREFIX) || !file.ends_with(".service") {
            continue;
        }
        let _ = systemctl(&["stop", file]).await;
        let _ = systemctl(&["disable", file]).await;
        if let Err(e) = std::fs::remove_file(&path) {
            failures.push(format!("{}: {e}", path.display()));
        }
    }
    let _ = systemctl(&["daemon-reload"]).await;
    let _ = systemctl(&["reset-failed"]).await;
    anyhow::ensure!(
        failures.is_empty(),
        "could not remove {}",
        failures.join(", ")
    );
    Ok(())
}
