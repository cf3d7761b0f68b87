//! What service-mode runs installed from a data directory, kept in
//! `<data>/services.json`: the one server's settings and every circle's
//! name, own port and last init outcome. A later run renders the server for
//! old and new circles alike from it; `launcher status` reads names, URLs and
//! init outcomes from it.

use std::collections::BTreeMap;
use std::path::Path;

use circles_dispatcher::CirclePublicKey;

use crate::cli::{CommonArgs, LaunchArgs};
use crate::error::LaunchError;
use crate::settings::LaunchSettings;

/// File in the data directory remembering what service-mode runs installed
/// from it: the server's settings and every circle, so that a later run
/// renders the one server for old and new circles alike, and `launcher
/// status` knows names, URLs and init outcomes.
pub const RECORD_FILE: &str = "services.json";

/// The contents of [`RECORD_FILE`].
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ServiceRecord {
    /// WebSocket server address.
    pub host: Option<String>,
    /// WebSocket server port.
    pub port: Option<u16>,
    /// Redis the services use.
    pub redis_url: Option<String>,
    /// Whether the server requires authentication.
    #[serde(default)]
    pub enable_auth: bool,
    /// Circle key (hex) → what we know of it.
    #[serde(default)]
    pub circles: BTreeMap<String, RecordedCircle>,
}

/// One circle in the [`ServiceRecord`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RecordedCircle {
    /// Its name.
    pub name: String,
    /// Its own WebSocket port (circles.json circles).
    #[serde(default)]
    pub port: Option<u16>,
    /// Outcome of its last init script.
    pub init: String,
}

impl ServiceRecord {
    pub(crate) fn path(data_dir: &Path) -> std::path::PathBuf {
        data_dir.join(RECORD_FILE)
    }

    /// The record in `data_dir`, or an empty one.
    pub fn load(data_dir: &Path) -> Self {
        std::fs::read_to_string(Self::path(data_dir))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// Writes the record (replacing it atomically).
    pub(crate) fn save(&self, data_dir: &Path) -> Result<(), LaunchError> {
        let path = Self::path(data_dir);
        let json = serde_json::to_string_pretty(self).expect("record serialises");
        crate::settings::write_atomically(&path, json.as_bytes(), 0o644)
            .map_err(|e| LaunchError::io(format!("writing {}", path.display()), e))
    }

    /// `ws://host:port/`
    pub(crate) fn ws_url_root(&self) -> String {
        format!(
            "ws://{}:{}/",
            self.host.as_deref().unwrap_or(circles_server::DEFAULT_HOST),
            self.port.unwrap_or(circles_server::DEFAULT_PORT)
        )
    }

    pub(crate) fn ws_url(&self, key: &CirclePublicKey) -> String {
        format!("{}{key}", self.ws_url_root())
    }

    /// The Redis to inspect: the one given, else the recorded one.
    pub(crate) fn redis_url(&self, common: &CommonArgs) -> String {
        common
            .redis_url
            .clone()
            .or_else(|| self.redis_url.clone())
            .unwrap_or_else(|| common.redis_url_or_default())
    }

    /// Settles this run's server settings against what is installed: flags
    /// given now win; flags left out keep the installed server's values
    /// (port, host) — and authentication, once on, stays on, so leaving out
    /// `--enable-auth` never silently opens a server. Adds this run's
    /// circles.
    pub(crate) fn merge(
        &mut self,
        args: &LaunchArgs,
        common: &CommonArgs,
        settings: &mut LaunchSettings,
    ) -> Result<(), LaunchError> {
        if args.port.is_none()
            && let Some(port) = self.port
        {
            settings.port = port;
        }
        if args.host.is_none()
            && let Some(host) = &self.host
        {
            settings.host = host.clone();
        }
        if let Some(recorded) = &self.redis_url {
            match &common.redis_url {
                None => settings.redis_url = recorded.clone(),
                // Installed workers stay on their Redis: moving only the
                // server and the new circles would split them.
                Some(given) if given != recorded && !self.circles.is_empty() => {
                    return Err(LaunchError::RedisMismatch {
                        given: given.as_str().into(),
                        installed: recorded.as_str().into(),
                    });
                }
                Some(_) => {}
            }
        }
        if self.enable_auth && !settings.enable_auth {
            tracing::info!(
                "keeping authentication on, as installed (`launcher cleanup` to reinstall without)"
            );
            settings.enable_auth = true;
        }
        self.host = Some(settings.host.clone());
        self.port = Some(settings.port);
        self.redis_url = Some(settings.redis_url.clone());
        self.enable_auth = settings.enable_auth;
        for c in &settings.circles {
            let entry = self
                .circles
                .entry(c.key.to_hex())
                .or_insert_with(|| RecordedCircle {
                    name: c.name.clone(),
                    port: None,
                    init: "-".into(),
                });
            entry.name = c.name.clone();
            entry.port = c.port.or(entry.port);
        }
        Ok(())
    }

    /// `(circle, port)` for every recorded circle with a port of its own.
    pub(crate) fn circle_ports(&self) -> Vec<(String, u16)> {
        self.circles
            .iter()
            .filter_map(|(k, c)| Some((k.clone(), c.port?)))
            .collect()
    }
}
