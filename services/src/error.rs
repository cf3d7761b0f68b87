//! The one error type of this crate.
//!
//! Every message names the service and, where there is one, the path or the
//! command, so the launcher can print `{:#}` and the user knows what to look
//! at without a debugger.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::name::ServiceName;
use crate::spec::{BackendKind, ServiceScope};

/// Everything that can go wrong rendering, planning, installing or removing
/// services.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// A name outside [`crate::SERVICE_PREFIX`] or with odd characters.
    #[error("invalid service name `{name}`: {reason}")]
    InvalidName {
        /// The rejected text.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A spec that no backend can carry faithfully.
    #[error("service `{name}` cannot be installed: {reason}")]
    InvalidSpec {
        /// The service.
        name: ServiceName,
        /// What is wrong with it.
        reason: String,
    },
    /// The same name twice in one batch.
    #[error("service `{name}` appears more than once in the same batch")]
    Duplicate {
        /// The repeated name.
        name: ServiceName,
    },
    /// `CIRCLES_SERVICE_BACKEND` holds something we do not know.
    #[error(
        "unknown service backend {value:?} in CIRCLES_SERVICE_BACKEND (expected systemd, launchd or fallback)"
    )]
    UnknownBackend {
        /// The value found.
        value: String,
    },
    /// The backend has no way to do this.
    #[error("the {backend} service backend cannot {what}")]
    Unsupported {
        /// The backend.
        backend: BackendKind,
        /// What was asked.
        what: String,
    },
    /// Per-user services need a home directory.
    #[error("cannot find the home directory for {scope}-scope services (HOME is not set)")]
    NoHome {
        /// The scope asked for.
        scope: ServiceScope,
    },
    /// A template that cannot be used.
    #[error("service template {template}: {reason}")]
    Template {
        /// Template file, e.g. `systemd/circle-worker.service` or a full path.
        template: String,
        /// What is wrong.
        reason: String,
    },
    /// A template directory entry that exists but cannot be read.
    #[error("failed to read service template {path}: {source}")]
    ReadTemplate {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file with our name that we did not write: we never overwrite it.
    #[error("service `{name}` already exists at {path} and was not installed by circles")]
    AlreadyExists {
        /// The service.
        name: ServiceName,
        /// The foreign file.
        path: PathBuf,
    },
    /// Reading an installed file failed.
    #[error("failed to read the installed file of `{name}` at {path}: {source}")]
    Read {
        /// The service.
        name: ServiceName,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Writing a unit or plist failed.
    #[error("failed to write unit `{name}` at {path}: {source}")]
    Write {
        /// The service.
        name: ServiceName,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Deleting a unit or plist failed.
    #[error("failed to delete unit `{name}` at {path}: {source}")]
    Remove {
        /// The service.
        name: ServiceName,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Listing the unit / agent directory failed.
    #[error("failed to list {path}: {source}")]
    ListDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Creating a directory (unit dir, log dir) failed.
    #[error("failed to create directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// No D-Bus connection to the service manager.
    #[error("cannot connect to the systemd {scope} manager at {address}: {source} ({hint})")]
    Connect {
        /// System or user manager.
        scope: ServiceScope,
        /// The bus address tried.
        address: String,
        /// What usually fixes it.
        hint: &'static str,
        /// The D-Bus error.
        source: zbus::Error,
    },
    /// A D-Bus call to systemd failed.
    #[error("systemd call {call} failed: {source}")]
    DBus {
        /// The method and its main argument, e.g. `StartUnit(x.service)`.
        call: String,
        /// The D-Bus error.
        source: zbus::Error,
    },
    /// A systemd job ended with a result other than `done`.
    #[error("systemd job to {verb} `{name}` failed: {result}; status: {status}")]
    JobFailed {
        /// The service.
        name: ServiceName,
        /// `start`, `restart` or `stop`.
        verb: &'static str,
        /// systemd's job result (`failed`, `timeout`, `dependency`, ...).
        result: String,
        /// Unit state and, when the journal has them, its last log lines.
        status: String,
    },
    /// A systemd job did not end in time.
    #[error("timed out after {secs}s waiting for systemd to {verb} `{name}`")]
    JobTimeout {
        /// The service.
        name: ServiceName,
        /// `start`, `restart` or `stop`.
        verb: &'static str,
        /// How long we waited.
        secs: u64,
    },
    /// A helper program (`launchctl`) could not be run at all.
    #[error("failed to run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The I/O error.
        source: io::Error,
    },
    /// A helper program ran and failed.
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status.
        status: String,
        /// Its stderr (or stdout when stderr is empty), trimmed.
        output: String,
    },
    /// A plist that cannot be built or serialized.
    #[error("failed to build the plist of `{name}`: {source}")]
    Plist {
        /// The service.
        name: ServiceName,
        /// The plist error.
        source: plist::Error,
    },
    /// The `service-manager` crate failed.
    #[error("the fallback service manager could not {action} `{name}`: {source}")]
    Fallback {
        /// The service.
        name: ServiceName,
        /// `install`, `start`, ...
        action: &'static str,
        /// Its error.
        source: io::Error,
    },
    /// An apply failed and was rolled back (see `rollback` for how far).
    #[error("installing services failed while {step}: {source}\n{rollback}")]
    Apply {
        /// The service and step that failed, e.g. "starting `tf.ourworld.circles.x`".
        step: String,
        /// The underlying error.
        source: Box<ServiceError>,
        /// What the rollback did.
        rollback: Rollback,
    },
}

/// What an apply's rollback did, reported with [`ServiceError::Apply`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rollback {
    /// Services created by the failed apply and now removed again.
    pub removed: Vec<ServiceName>,
    /// Services updated by the failed apply whose previous file is back.
    pub restored: Vec<ServiceName>,
    /// Rollback steps that failed themselves; empty when the system is back
    /// where it was.
    pub failures: Vec<String>,
}

impl fmt::Display for Rollback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |v: &[ServiceName]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        if self.failures.is_empty() {
            write!(
                f,
                "rolled back: removed {}; restored {}",
                names(&self.removed),
                names(&self.restored)
            )
        } else {
            write!(
                f,
                "ROLLBACK INCOMPLETE (removed {}; restored {}): {}",
                names(&self.removed),
                names(&self.restored),
                self.failures.join("; ")
            )
        }
    }
}
