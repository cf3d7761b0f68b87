//! The slice of systemd's D-Bus API we use (`org.freedesktop.systemd1(5)`),
//! plus connecting the way `systemctl` does.
//!
//! Proxies are built without a property cache: the cache would subscribe to
//! `PropertiesChanged` through the bus daemon, which the private socket does
//! not have, and every read we do wants the current value anyway.

use std::path::{Path, PathBuf};

use zbus::proxy::CacheProperties;
use zbus::{Connection, OwnedObjectPath};

use crate::error::ServiceError;
use crate::spec::ServiceScope;

/// One row of `ListUnitsByPatterns`: name, description, load state, active
/// state, sub state, following, unit path, job id, job type, job path.
pub(crate) type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

/// `org.freedesktop.systemd1.Manager`.
#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
pub(crate) trait Manager {
    /// Ask for job and unit signals (systemd sends none to a client that has
    /// not subscribed).
    fn subscribe(&self) -> zbus::Result<()>;

    /// `daemon-reload`; the reply comes once the reload is done.
    fn reload(&self) -> zbus::Result<()>;

    /// `systemctl enable`: returns (carries install info, changes).
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;

    /// `systemctl disable`.
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;

    /// Enqueues a start job; returns its object path.
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// Enqueues a restart job (starts the unit when it is not running).
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// Enqueues a stop job.
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// `systemctl reset-failed`: forgets the failed state and the start-limit
    /// counter, and lets an unneeded unit be unloaded.
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;

    /// The object of a loaded unit; `NoSuchUnit` when it is not loaded.
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    /// Loaded units whose state is in `states` (all when empty) and whose
    /// name matches one of `patterns`.
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<Vec<UnitRow>>;
}

/// `org.freedesktop.systemd1.Unit` properties.
#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
pub(crate) trait Unit {
    /// `loaded`, `not-found`, `masked`, ...
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
    /// `active`, `failed`, `activating`, ...
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    /// `running`, `auto-restart`, `dead`, ...
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
    /// The unit file it was loaded from, or empty.
    #[zbus(property)]
    fn fragment_path(&self) -> zbus::Result<String>;
}

/// `org.freedesktop.systemd1.Service` properties.
#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
pub(crate) trait Service {
    /// PID of the main process, 0 when none.
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;
    /// Automatic restarts so far.
    #[zbus(property, name = "NRestarts")]
    fn n_restarts(&self) -> zbus::Result<u32>;
    /// Exit status (or signal number) of the last main process.
    #[zbus(property)]
    fn exec_main_status(&self) -> zbus::Result<i32>;
    /// `success`, `exit-code`, `signal`, `start-limit-hit`, ...
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
}

pub(crate) async fn manager(conn: &Connection) -> zbus::Result<ManagerProxy<'static>> {
    ManagerProxy::builder(conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

pub(crate) async fn unit(
    conn: &Connection,
    path: OwnedObjectPath,
) -> zbus::Result<UnitProxy<'static>> {
    UnitProxy::builder(conn)
        .path(path)
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

pub(crate) async fn service(
    conn: &Connection,
    path: OwnedObjectPath,
) -> zbus::Result<ServiceProxy<'static>> {
    ServiceProxy::builder(conn)
        .path(path)
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

/// Whether `err` is systemd's "unit not loaded" (`NoSuchUnit`, or
/// `LoadFailed`/`UnitNotLoaded` from operations on a vanished unit).
pub(crate) fn is_no_such_unit(err: &zbus::Error) -> bool {
    matches!(err, zbus::Error::MethodError(name, _, _)
        if name.as_str().ends_with(".NoSuchUnit") || name.as_str().ends_with(".UnitNotLoaded"))
}

/// Connects to the manager for `scope` like `systemctl` does: the manager's
/// private socket when we may use it (no bus daemon needed), else the bus.
pub(crate) async fn connect(
    scope: ServiceScope,
    euid: u32,
    runtime_dir: &Path,
    session_bus_address: Option<&str>,
) -> Result<Connection, ServiceError> {
    let private: Option<PathBuf> = match scope {
        // Only root may talk to PID 1's private socket.
        ServiceScope::System => (euid == 0).then(|| PathBuf::from("/run/systemd/private")),
        ServiceScope::User => Some(runtime_dir.join("systemd/private")),
    };
    let mut tried = Vec::new();
    let mut last_error = None;
    if let Some(socket) = private.filter(|p| p.exists()) {
        let address = format!("unix:path={}", socket.display());
        match zbus::connection::Builder::address(address.as_str())
            .p2p()
            .build()
            .await
        {
            Ok(conn) => return Ok(conn),
            Err(e) => {
                tracing::debug!("private systemd socket {address}: {e}");
                tried.push(address);
                last_error = Some(e);
            }
        }
    }
    let (builder, address) = match scope {
        ServiceScope::System => (
            zbus::connection::Builder::system(),
            "the system bus".to_string(),
        ),
        ServiceScope::User => {
            let address = session_bus_address
                .map(str::to_string)
                .unwrap_or_else(|| format!("unix:path={}", runtime_dir.join("bus").display()));
            (
                zbus::connection::Builder::address(address.as_str()),
                address,
            )
        }
    };
    tried.push(address);
    match builder.build().await {
        Ok(conn) => Ok(conn),
        Err(e) => Err(ServiceError::Connect {
            scope,
            address: tried.join(" or "),
            // Both failed: the private socket's error is usually the telling
            // one (permission, refused), so report it and log the other.
            source: match last_error {
                Some(private_error) => {
                    tracing::debug!("bus connection failed too: {e}");
                    private_error
                }
                None => e,
            },
        }),
    }
}
