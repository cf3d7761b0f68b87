//! What service-mode runs installed from a data directory, kept in
//! `<data>/services.json`: the one server's settings and every circle's
//! name, own port and last init outcome. A later run renders the server for
//! old and new circles alike from it; `launcher status` reads names, URLs and
//! init outcomes from it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use circles_dispatcher::{CirclePublicKey, RedisUrl};

use crate::cli::{CommonArgs, LaunchArgs};
use crate::error::LaunchError;
use crate::settings::{DEFAULT_SERVER_NOFILE, LaunchSettings, WorkerCeilings};

/// File in the data directory remembering what service-mode runs installed
/// from it: the server's settings and every circle, so that a later run
/// renders the one server for old and new circles alike, and `launcher
/// status` knows names, URLs and init outcomes.
pub const RECORD_FILE: &str = "services.json";

/// Directory (mode 0700) of the data directory holding secrets: the Redis
/// URL with its password, and the services' environment files.
pub use circles_deploy::SECRETS_DIR;

/// File in [`SECRETS_DIR`] (mode 0600) with the full Redis URL, when it
/// carries credentials: [`RECORD_FILE`] holds only its redacted form.
pub const REDIS_URL_FILE: &str = "redis-url";

/// The contents of [`RECORD_FILE`]. It is world-readable and holds no
/// secret: the Redis URL is written redacted, its full text kept in
/// [`REDIS_URL_FILE`].
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ServiceRecord {
    /// WebSocket server address.
    pub host: Option<String>,
    /// WebSocket server port.
    pub port: Option<u16>,
    /// Redis the services use; serialised redacted.
    #[serde(default, with = "redis_url_text")]
    pub redis_url: Option<RedisUrl>,
    /// Whether the server requires authentication.
    #[serde(default)]
    pub enable_auth: bool,
    /// Open files of the server service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_limit_nofile: Option<u64>,
    /// Circle key (hex) → what we know of it.
    #[serde(default)]
    pub circles: BTreeMap<String, RecordedCircle>,
}

/// A Redis URL in the record: written redacted (what `RedisUrl` serialises
/// as); read back as text, which [`ServiceRecord::load`] completes from
/// [`REDIS_URL_FILE`].
mod redis_url_text {
    use circles_dispatcher::RedisUrl;
    use serde::{Deserialize as _, Serialize as _};

    pub fn serialize<S: serde::Serializer>(
        url: &Option<RedisUrl>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        url.serialize(s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<RedisUrl>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(RedisUrl::new))
    }
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
    /// Resource ceilings its worker service was installed with.
    #[serde(default)]
    pub ceilings: WorkerCeilings,
}

impl ServiceRecord {
    pub(crate) fn path(data_dir: &Path) -> std::path::PathBuf {
        data_dir.join(RECORD_FILE)
    }

    /// `<data>/secrets/redis-url`
    pub(crate) fn redis_url_path(data_dir: &Path) -> PathBuf {
        data_dir.join(SECRETS_DIR).join(REDIS_URL_FILE)
    }

    /// The record in `data_dir`, or an empty one. A redacted Redis URL is
    /// completed from [`REDIS_URL_FILE`] (records written before secrets
    /// were kept apart hold the full URL, which is used as it is).
    pub fn load(data_dir: &Path) -> Self {
        let mut record: Self = std::fs::read_to_string(Self::path(data_dir))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        if let Some(recorded) = &record.redis_url
            && let Ok(full) = std::fs::read_to_string(Self::redis_url_path(data_dir))
        {
            let full = RedisUrl::new(full.trim_end_matches('\n'));
            if full.redacted() == recorded.expose_secret() {
                record.redis_url = Some(full);
            }
        }
        record
    }

    /// Writes the record (replacing it atomically, mode 0644, the Redis URL
    /// redacted) and the full URL to [`REDIS_URL_FILE`] (0600) when it has
    /// credentials.
    pub(crate) fn save(&self, data_dir: &Path) -> Result<(), LaunchError> {
        let secret = Self::redis_url_path(data_dir);
        let write_error =
            |path: &Path, e| LaunchError::io(format!("writing {}", path.display()), e);
        match &self.redis_url {
            Some(url) if url.has_credentials() => {
                crate::settings::create_private_dir(secret.parent().expect("has a parent"))
                    .map_err(|e| write_error(&secret, e))?;
                crate::settings::write_atomically(&secret, url.expose_secret().as_bytes(), 0o600)
                    .map_err(|e| write_error(&secret, e))?;
            }
            _ => match std::fs::remove_file(&secret) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(write_error(&secret, e));
                }
                _ => {}
            },
        }
        let path = Self::path(data_dir);
        let json = serde_json::to_string_pretty(self).expect("record serialises");
        crate::settings::write_atomically(&path, json.as_bytes(), 0o644)
            .map_err(|e| write_error(&path, e))
    }

    /// Deletes the record and the Redis URL file.
    pub(crate) fn remove(data_dir: &Path) {
        let _ = std::fs::remove_file(Self::path(data_dir));
        let _ = std::fs::remove_file(Self::redis_url_path(data_dir));
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
    pub(crate) fn redis_url(&self, common: &CommonArgs) -> RedisUrl {
        common
            .redis_url
            .clone()
            .map(RedisUrl::new)
            .or_else(|| self.redis_url.clone())
            .unwrap_or_else(|| RedisUrl::new(common.redis_url_or_default()))
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
                None => settings.redis_url = recorded.expose_secret().to_string(),
                // Installed workers stay on their Redis: moving only the
                // server and the new circles would split them.
                Some(given) if given != recorded.expose_secret() && !self.circles.is_empty() => {
                    return Err(LaunchError::RedisMismatch {
                        given: given.as_str().into(),
                        installed: recorded.clone(),
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
        self.redis_url = Some(RedisUrl::new(settings.redis_url.clone()));
        self.enable_auth = settings.enable_auth;
        self.server_limit_nofile = Some(
            settings
                .server_nofile
                .or(self.server_limit_nofile)
                .unwrap_or(DEFAULT_SERVER_NOFILE),
        );
        settings.server_nofile = self.server_limit_nofile;
        for c in &mut settings.circles {
            let entry = self
                .circles
                .entry(c.key.to_hex())
                .or_insert_with(|| RecordedCircle {
                    name: c.name.clone(),
                    port: None,
                    init: "-".into(),
                    ceilings: WorkerCeilings::default(),
                });
            entry.name = c.name.clone();
            entry.port = c.port.or(entry.port);
            // circles.json's own values, then this run's flags, then what
            // the circle was installed with, then the defaults.
            c.ceilings = c
                .ceilings
                .or(settings.worker_ceilings)
                .or(entry.ceilings)
                .or(WorkerCeilings::DEFAULT);
            entry.ceilings = c.ceilings;
        }
        Ok(())
    }

    /// Takes over what an earlier install recorded in another data
    /// directory (circles, server settings, Redis), for a first run in this
    /// one; see [`crate::migrate`].
    pub(crate) fn adopt(&mut self, earlier: ServiceRecord) {
        let ServiceRecord {
            host,
            port,
            redis_url,
            enable_auth,
            server_limit_nofile,
            circles,
        } = earlier;
        self.host = self.host.take().or(host);
        self.port = self.port.or(port);
        self.redis_url = self.redis_url.take().or(redis_url);
        self.enable_auth |= enable_auth;
        self.server_limit_nofile = self.server_limit_nofile.or(server_limit_nofile);
        for (key, circle) in circles {
            self.circles.entry(key).or_insert(circle);
        }
    }

    /// `(circle, port)` for every recorded circle with a port of its own.
    pub(crate) fn circle_ports(&self) -> Vec<(String, u16)> {
        self.circles
            .iter()
            .filter_map(|(k, c)| Some((k.clone(), c.port?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Ceiling;
    use crate::settings::CircleSpec;
    use std::os::unix::fs::PermissionsExt as _;

    const KEY_X: &str = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
    const KEY_Y: &str = "02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5";

    fn circle(key: &str, ceilings: WorkerCeilings) -> CircleSpec {
        let key: CirclePublicKey = key.parse().unwrap();
        CircleSpec {
            name: crate::settings::short_name(&key),
            key,
            init_script: None,
            port: None,
            ceilings,
        }
    }

    #[test]
    fn ceilings_come_from_circles_json_then_flags_then_the_install_then_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = ServiceRecord::default();
        record.circles.insert(
            KEY_X.into(),
            RecordedCircle {
                name: "x".into(),
                port: None,
                init: "-".into(),
                ceilings: WorkerCeilings {
                    memory_max: Some(Ceiling::Limit(2 << 30)),
                    tasks_max: Some(Ceiling::Limit(128)),
                    limit_nofile: None,
                },
            },
        );
        let args = LaunchArgs::default();
        let common = CommonArgs::default();
        let (mut settings, _) = LaunchSettings::resolve_without_ports(
            &LaunchArgs {
                circles: vec![KEY_X.into()],
                ..LaunchArgs::default()
            },
            &common,
            dir.path(),
            None,
        )
        .unwrap();
        settings.circles = vec![
            circle(KEY_X, WorkerCeilings::default()),
            circle(
                KEY_Y,
                WorkerCeilings {
                    memory_max: Some(Ceiling::Limit(512 << 20)),
                    ..WorkerCeilings::default()
                },
            ),
        ];
        settings.worker_ceilings.tasks_max = Some(Ceiling::Infinity);
        record.merge(&args, &common, &mut settings).unwrap();
        let x = settings.circles[0].ceilings;
        assert_eq!(x.memory_max, Some(Ceiling::Limit(2 << 30)), "installed");
        assert_eq!(
            x.tasks_max,
            Some(Ceiling::Infinity),
            "flag wins over installed"
        );
        assert_eq!(x.limit_nofile, Some(1024), "default");
        let y = settings.circles[1].ceilings;
        assert_eq!(
            y.memory_max,
            Some(Ceiling::Limit(512 << 20)),
            "circles.json"
        );
        assert_eq!(record.circles[KEY_Y].ceilings, y, "recorded for next time");
        assert_eq!(record.server_limit_nofile, Some(65_536));
    }

    #[test]
    fn the_record_holds_the_redis_url_redacted_and_the_secret_file_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let url = "redis://:s3cret@127.0.0.1:6390/1";
        let record = ServiceRecord {
            redis_url: Some(RedisUrl::new(url)),
            ..ServiceRecord::default()
        };
        record.save(dir.path()).unwrap();
        let json = std::fs::read_to_string(ServiceRecord::path(dir.path())).unwrap();
        assert!(!json.contains("s3cret"), "{json}");
        assert!(json.contains("redis://:***@127.0.0.1:6390/1"), "{json}");
        let secret = ServiceRecord::redis_url_path(dir.path());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&secret), 0o600);
        assert_eq!(mode(secret.parent().unwrap()), 0o700);
        let loaded = ServiceRecord::load(dir.path());
        assert_eq!(loaded.redis_url.unwrap().expose_secret(), url);

        // Another URL in the secret file than the record names is ignored:
        // the record's redacted text is all there is, never another Redis.
        std::fs::write(&secret, "redis://:other@10.0.0.1:6379").unwrap();
        let loaded = ServiceRecord::load(dir.path());
        assert_eq!(
            loaded.redis_url.unwrap().expose_secret(),
            "redis://:***@127.0.0.1:6390/1"
        );

        // A record written before secrets were kept apart (full URL inside)
        // still loads, and the next save splits it.
        std::fs::remove_file(&secret).unwrap();
        std::fs::write(
            ServiceRecord::path(dir.path()),
            format!(r#"{{"redis_url": "{url}", "circles": {{}}}}"#),
        )
        .unwrap();
        let old = ServiceRecord::load(dir.path());
        assert_eq!(old.redis_url.as_ref().unwrap().expose_secret(), url);
        old.save(dir.path()).unwrap();
        let json = std::fs::read_to_string(ServiceRecord::path(dir.path())).unwrap();
        assert!(!json.contains("s3cret"), "{json}");
        // Without credentials there is no secret file.
        ServiceRecord {
            redis_url: Some(RedisUrl::new("redis://127.0.0.1:6379")),
            ..ServiceRecord::default()
        }
        .save(dir.path())
        .unwrap();
        assert!(!secret.exists());
    }
}
