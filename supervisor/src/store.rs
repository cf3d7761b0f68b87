//! The runners and their target states, kept in `<data>/supervisor.json`
//! (mode 0600: a runner's environment may hold secrets) and rewritten
//! atomically on every change, so a supervisor restarted — or a host
//! rebooted — comes back with the same runners in the same target state.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::SupervisorError;
use crate::runner::RunnerConfig;

/// File name of the store in the data directory.
pub const STORE_FILE: &str = "supervisor.json";

/// The file's contents.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StoreFile {
    /// Format version, for future migrations.
    version: u32,
    /// Every runner, in name order.
    runners: Vec<RunnerConfig>,
}

/// Reads and writes the store file.
#[derive(Debug)]
pub struct RunnerStore {
    path: PathBuf,
}

impl RunnerStore {
    /// The store of `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(STORE_FILE),
        }
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The runners stored; none when there is no file yet. A file that
    /// exists but cannot be read is an error: starting with no runners
    /// would silently forget them.
    pub fn load(&self) -> Result<Vec<RunnerConfig>, SupervisorError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(SupervisorError::io(
                    format!("reading {}", self.path.display()),
                    e,
                ));
            }
        };
        let file: StoreFile = serde_json::from_str(&text).map_err(|e| {
            SupervisorError::Config(format!(
                "{} is not a supervisor state file ({e}); move it away to start without runners",
                self.path.display()
            ))
        })?;
        Ok(file.runners)
    }

    /// Replaces the file with `runners`.
    pub fn save<'a>(
        &self,
        runners: impl IntoIterator<Item = &'a RunnerConfig>,
    ) -> Result<(), SupervisorError> {
        let file = StoreFile {
            version: 1,
            runners: runners.into_iter().cloned().collect(),
        };
        let json = serde_json::to_string_pretty(&file).expect("store serialises");
        circles_deploy::fs::write_atomically(&self.path, json.as_bytes(), 0o600)
            .map_err(|e| SupervisorError::io(format!("writing {}", self.path.display()), e))
    }
}
