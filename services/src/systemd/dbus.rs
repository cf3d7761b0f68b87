//! The slice of systemd's D-Bus API we use (`org.freedesktop.systemd1(5)`),
//! plus connecting the way `systemctl` does.
//!
//! Proxies are built without a property cache: every read we do wants the
//! current value, and the cache would cost a `PropertiesChanged` subscription
//! per proxy.

use zbus::proxy::CacheProperties;
use zbus::{Connection, OwnedObjectPath};

use crate::error::ServiceError;
use crate::host::HostEnv;
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
    /// How the last main process ended: `CLD_EXITED` (1), `CLD_KILLED` (2),
    /// `CLD_DUMPED` (3); 0 before any ran.
    #[zbus(property)]
    fn exec_main_code(&self) -> zbus::Result<i32>;
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

/// Whether `err` means "this unit is not loaded": `NoSuchUnit` from
/// `GetUnit`, `UnitNotLoaded` from operations on it, or `UnknownObject` when
/// systemd unloaded the unit between our `GetUnit` and a property read.
pub(crate) fn is_no_such_unit(err: &zbus::Error) -> bool {
    match err {
        zbus::Error::MethodError(name, _, _) => {
            let name = name.as_str();
            name.ends_with(".NoSuchUnit")
                || name.ends_with(".UnitNotLoaded")
                || name == "org.freedesktop.DBus.Error.UnknownObject"
        }
        zbus::Error::FDO(e) => matches!(**e, zbus::fdo::Error::UnknownObject(_)),
        _ => false,
    }
}

/// Connects to the bus that carries the manager for `scope`: the system bus,
/// or the user's session bus (`$DBUS_SESSION_BUS_ADDRESS`, else
/// `$XDG_RUNTIME_DIR/bus`, which `dbus-user-session` provides).
///
/// Why not the managers' private sockets (`/run/systemd/private`,
/// `$XDG_RUNTIME_DIR/systemd/private`) as `systemctl` uses them: on those
/// peer-to-peer connections systemd puts its well-known name
/// `org.freedesktop.systemd1` in the sender field, and zbus 6 rejects any
/// message whose sender is not a unique name (`:1.42`), so the first reply
/// already fails.
pub(crate) async fn connect(
    scope: ServiceScope,
    host: &HostEnv,
) -> Result<Connection, ServiceError> {
    let (address, hint) = match scope {
        ServiceScope::System => (
            host.dbus_system_bus_address
                .clone()
                .unwrap_or_else(|| "unix:path=/run/dbus/system_bus_socket".into()),
            "is systemd running as PID 1 with dbus (the `dbus` package)?",
        ),
        ServiceScope::User => (
            host.dbus_session_bus_address.clone().unwrap_or_else(|| {
                format!("unix:path={}", host.runtime_dir().join("bus").display())
            }),
            "the user's systemd manager and session bus must be running: install dbus-user-session, \
             and for a user without a login session run `loginctl enable-linger <user>`",
        ),
    };
    zbus::connection::Builder::address(address.as_str())
        .build()
        .await
        .map_err(|source| ServiceError::Connect {
            scope,
            address,
            hint,
            source,
        })
}
