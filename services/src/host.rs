//! The parts of the process environment the backends read, in one value.
//!
//! Backends never call `std::env` themselves: [`HostEnv::from_process`] reads
//! everything once, and tests build a `HostEnv` by hand (a temporary `HOME`, a
//! `PATH` with a `launchctl` stand-in first) instead of mutating the test
//! process's environment, which is shared by all tests running in parallel.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Selects a backend regardless of the platform: `systemd`, `launchd` or
/// `fallback`. Lets the launchd backend run on Linux against a `launchctl`
/// stand-in, and the fallback backend against a booted systemd.
pub const ENV_SERVICE_BACKEND: &str = "CIRCLES_SERVICE_BACKEND";
/// Home directory: `~/Library/LaunchAgents`, `~/.config/systemd/user`.
pub const ENV_HOME: &str = "HOME";
/// Overrides `~/.config` for systemd user units, as systemd itself does.
pub const ENV_XDG_CONFIG_HOME: &str = "XDG_CONFIG_HOME";
/// Holds the user manager's private socket (`systemd/private`) and bus.
pub const ENV_XDG_RUNTIME_DIR: &str = "XDG_RUNTIME_DIR";
/// Overrides `~/.local/share` for the fallback backend's records.
pub const ENV_XDG_DATA_HOME: &str = "XDG_DATA_HOME";
/// The session bus, which carries the user's systemd manager.
pub const ENV_DBUS_SESSION_BUS_ADDRESS: &str = "DBUS_SESSION_BUS_ADDRESS";
/// The system bus, which carries PID 1's manager (zbus reads it too).
pub const ENV_DBUS_SYSTEM_BUS_ADDRESS: &str = "DBUS_SYSTEM_BUS_ADDRESS";
/// Searched for `launchctl`, `journalctl` and `tail`.
pub const ENV_PATH: &str = "PATH";

/// systemd creates this directory when it is PID 1 (`sd_booted()`).
pub const SYSTEMD_BOOTED_MARKER: &str = "/run/systemd/system";

/// A snapshot of what the backends need from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEnv {
    /// Value of [`ENV_SERVICE_BACKEND`], if set.
    pub backend_override: Option<String>,
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// `$XDG_CONFIG_HOME`.
    pub xdg_config_home: Option<PathBuf>,
    /// `$XDG_RUNTIME_DIR`.
    pub xdg_runtime_dir: Option<PathBuf>,
    /// `$XDG_DATA_HOME` (the fallback backend's records of what it installed).
    pub xdg_data_home: Option<PathBuf>,
    /// `$DBUS_SESSION_BUS_ADDRESS`.
    pub dbus_session_bus_address: Option<String>,
    /// `$DBUS_SYSTEM_BUS_ADDRESS`.
    pub dbus_system_bus_address: Option<String>,
    /// `$PATH`.
    pub path: Option<OsString>,
    /// Effective user id: root installs system services.
    pub euid: u32,
    /// Whether systemd is running as PID 1 (see [`SYSTEMD_BOOTED_MARKER`]).
    pub systemd_booted: bool,
}

impl HostEnv {
    /// Reads the current process's environment.
    pub fn from_process() -> Self {
        let var_path = |key: &str| {
            std::env::var_os(key)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self {
            backend_override: std::env::var(ENV_SERVICE_BACKEND)
                .ok()
                .filter(|v| !v.is_empty()),
            home: var_path(ENV_HOME),
            xdg_config_home: var_path(ENV_XDG_CONFIG_HOME),
            xdg_runtime_dir: var_path(ENV_XDG_RUNTIME_DIR),
            xdg_data_home: var_path(ENV_XDG_DATA_HOME),
            dbus_session_bus_address: std::env::var(ENV_DBUS_SESSION_BUS_ADDRESS)
                .ok()
                .filter(|v| !v.is_empty()),
            dbus_system_bus_address: std::env::var(ENV_DBUS_SYSTEM_BUS_ADDRESS)
                .ok()
                .filter(|v| !v.is_empty()),
            path: std::env::var_os(ENV_PATH),
            euid: effective_uid(),
            systemd_booted: Path::new(SYSTEMD_BOOTED_MARKER).is_dir(),
        }
    }

    /// The user's runtime directory: `$XDG_RUNTIME_DIR`, else
    /// `/run/user/<euid>` as pam_systemd would have set it.
    pub fn runtime_dir(&self) -> PathBuf {
        self.xdg_runtime_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/run/user/{}", self.euid)))
    }

    /// Finds `program` in [`HostEnv::path`], like a shell would; `None` when
    /// it is not there (the caller then reports the bare name).
    pub fn find_program(&self, program: &str) -> Option<PathBuf> {
        let path = self.path.as_ref()?;
        std::env::split_paths(path)
            .map(|dir| dir.join(program))
            .find(|candidate| is_executable(candidate))
    }
}

#[cfg(unix)]
fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// No uids elsewhere; never "root", so per-user services are the default.
#[cfg(not(unix))]
fn effective_uid() -> u32 {
    u32::MAX
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_the_given_path_only() {
        let dir = tempfile::tempdir().unwrap();
        let env = HostEnv {
            path: Some(std::env::join_paths([dir.path()]).unwrap()),
            ..HostEnv::from_process()
        };
        assert_eq!(env.find_program("launchctl"), None);
        let fake = dir.path().join("launchctl");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        // Not executable yet: a shell would not run it either.
        assert_eq!(env.find_program("launchctl"), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
            assert_eq!(env.find_program("launchctl"), Some(fake));
        }
    }

    #[test]
    fn runtime_dir_defaults_to_run_user_uid() {
        let env = HostEnv {
            xdg_runtime_dir: None,
            euid: 1234,
            ..HostEnv::from_process()
        };
        assert_eq!(env.runtime_dir(), PathBuf::from("/run/user/1234"));
    }
}
