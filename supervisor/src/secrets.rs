//! API secrets: who may call what.
//!
//! An `admin` secret may call every method; a `user` secret the read-only
//! ones plus the job methods ([`Scope`]). Callers send `Authorization:
//! Bearer <secret>` on HTTP requests and on the WebSocket upgrade.
//!
//! Secrets come from a file (TOML or JSON: `admin = ["…"]`, `user =
//! ["…"]`) that only its owner can read — a looser mode is refused with the
//! `chmod` that fixes it — or from the environment
//! ([`ENV_ADMIN_SECRETS`], [`ENV_USER_SECRETS`], comma-separated), never
//! from the command line, where `ps` shows them to every user. They are
//! compared in constant time: both sides are hashed with SHA-256 and the
//! digests compared with `subtle`, so neither the content nor the length of
//! a secret leaks through timing.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::SupervisorError;

/// Environment variable: admin secrets, comma-separated.
pub const ENV_ADMIN_SECRETS: &str = "SUPERVISOR_ADMIN_SECRETS";
/// Environment variable: user secrets, comma-separated.
pub const ENV_USER_SECRETS: &str = "SUPERVISOR_USER_SECRETS";
/// Shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Read-only methods and jobs.
    User,
    /// Everything.
    Admin,
}

impl Scope {
    /// `user` / `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
        }
    }
}

/// The configured secrets, kept only as SHA-256 digests.
#[derive(Clone, Default)]
pub struct Secrets {
    admin: Vec<[u8; 32]>,
    user: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("admin", &self.admin.len())
            .field("user", &self.user.len())
            .finish()
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecretsFile {
    #[serde(default)]
    admin: Vec<String>,
    #[serde(default)]
    user: Vec<String>,
    #[serde(default)]
    redis_url: Option<String>,
}

/// What a secrets file holds: the API secrets and, optionally, the Redis
/// URL (a URL with a password belongs in a 0600 file, not in argv or a
/// world-readable unit file).
#[derive(Debug, Clone)]
pub struct SecretsFile {
    /// The API secrets.
    pub secrets: Secrets,
    /// `redis_url = "…"`, if given.
    pub redis_url: Option<String>,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Secrets {
    /// No secrets: the API is open (and bound to loopback only).
    pub fn none() -> Self {
        Self::default()
    }

    /// Secrets from lists of plain text; each must be at least
    /// [`MIN_SECRET_LEN`] characters.
    pub fn new(
        admin: impl IntoIterator<Item = impl AsRef<str>>,
        user: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<Self, SupervisorError> {
        let mut secrets = Self::default();
        for (scope, list) in [
            (
                Scope::Admin,
                admin
                    .into_iter()
                    .map(|s| s.as_ref().to_string())
                    .collect::<Vec<_>>(),
            ),
            (
                Scope::User,
                user.into_iter().map(|s| s.as_ref().to_string()).collect(),
            ),
        ] {
            for (i, s) in list.iter().enumerate() {
                let s = s.trim();
                if s.chars().count() < MIN_SECRET_LEN {
                    return Err(SupervisorError::Config(format!(
                        "{} secret #{} is shorter than {MIN_SECRET_LEN} characters; use a long random one (e.g. `openssl rand -hex 32`)",
                        scope.as_str(),
                        i + 1
                    )));
                }
                match scope {
                    Scope::Admin => secrets.admin.push(digest(s)),
                    Scope::User => secrets.user.push(digest(s)),
                }
            }
        }
        Ok(secrets)
    }

    /// Secrets (and maybe the Redis URL) from a TOML or JSON file that only
    /// its owner may read.
    pub fn from_file(path: &Path) -> Result<SecretsFile, SupervisorError> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|e| {
            SupervisorError::io(format!("reading the secrets file {}", path.display()), e)
        })?;
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SupervisorError::Config(format!(
                "the secrets file {} has mode {mode:04o}: other users can read it; run `chmod 600 {}`",
                path.display(),
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            SupervisorError::io(format!("reading the secrets file {}", path.display()), e)
        })?;
        let parsed: RawSecretsFile = if text.trim_start().starts_with('{') {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        }
        .map_err(|e| {
            // The parser's message may quote the file: never the secrets.
            let _ = e;
            SupervisorError::Config(format!(
                "the secrets file {} is not valid: expected TOML `admin = [\"…\"]` / `user = [\"…\"]` or the same as JSON",
                path.display()
            ))
        })?;
        let secrets = Self::new(parsed.admin, parsed.user)?;
        if secrets.is_empty() {
            return Err(SupervisorError::Config(format!(
                "the secrets file {} lists no secrets",
                path.display()
            )));
        }
        Ok(SecretsFile {
            secrets,
            redis_url: parsed.redis_url,
        })
    }

    /// Secrets from [`ENV_ADMIN_SECRETS`] and [`ENV_USER_SECRETS`]; `None`
    /// when neither is set.
    pub fn from_env() -> Result<Option<Self>, SupervisorError> {
        let split = |v: Option<String>| -> Vec<String> {
            v.map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
        };
        let admin = std::env::var(ENV_ADMIN_SECRETS).ok();
        let user = std::env::var(ENV_USER_SECRETS).ok();
        if admin.is_none() && user.is_none() {
            return Ok(None);
        }
        Self::new(split(admin), split(user)).map(Some)
    }

    /// Whether no secret is configured.
    pub fn is_empty(&self) -> bool {
        self.admin.is_empty() && self.user.is_empty()
    }

    /// The scope `presented` grants: admin, user, or none. Every configured
    /// secret is compared, in constant time, whatever matches first.
    pub fn scope_of(&self, presented: &str) -> Option<Scope> {
        let d = digest(presented);
        let mut admin = subtle::Choice::from(0);
        for s in &self.admin {
            admin |= s.ct_eq(&d);
        }
        let mut user = subtle::Choice::from(0);
        for s in &self.user {
            user |= s.ct_eq(&d);
        }
        if bool::from(admin) {
            Some(Scope::Admin)
        } else if bool::from(user) {
            Some(Scope::User)
        } else {
            None
        }
    }
}

/// What the server learned about a caller from its `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// No secrets are configured: everyone is admin (loopback only).
    Open,
    /// A valid secret of this scope.
    Authorized(Scope),
    /// No `Authorization: Bearer` header.
    Missing,
    /// A secret that matches none.
    Invalid,
}

impl Caller {
    /// From the `Authorization` header value, if any.
    pub fn from_header(secrets: &Secrets, header: Option<&str>) -> Self {
        let Some(value) = header else {
            return Self::from_bearer(secrets, None);
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim);
        // A header that is not `Bearer …` is a wrong credential, not a
        // missing one.
        Self::from_bearer(secrets, Some(token.unwrap_or("")))
    }

    /// From a bearer token however it came (the `Authorization` header, or
    /// the WebSocket subprotocol a browser can set): the same constant-time
    /// comparison and the same scopes.
    pub fn from_bearer(secrets: &Secrets, token: Option<&str>) -> Self {
        if secrets.is_empty() {
            return Self::Open;
        }
        let Some(token) = token else {
            return Self::Missing;
        };
        match secrets.scope_of(token) {
            Some(scope) => Self::Authorized(scope),
            None => Self::Invalid,
        }
    }

    /// The scope this caller has: everything when no secrets are
    /// configured, none without a valid secret.
    pub fn scope(self) -> Option<Scope> {
        match self {
            Self::Open => Some(Scope::Admin),
            Self::Authorized(scope) => Some(scope),
            Self::Missing | Self::Invalid => None,
        }
    }

    /// Whether this caller may call a method that needs `needed`; the error
    /// says what is wrong without echoing what was sent.
    pub fn allow(self, needed: Scope, method: &str) -> Result<(), SupervisorError> {
        match self {
            Self::Open => Ok(()),
            Self::Authorized(scope) if scope >= needed => Ok(()),
            Self::Authorized(scope) => Err(SupervisorError::Unauthorized(format!(
                "`{method}` needs an {} secret; this one is a {} secret",
                needed.as_str(),
                scope.as_str()
            ))),
            Self::Missing => Err(SupervisorError::Unauthorized(format!(
                "`{method}` needs a secret: send `Authorization: Bearer <secret>` (for `supervisor ctl`, set SUPERVISOR_SECRET)"
            ))),
            Self::Invalid => Err(SupervisorError::Unauthorized(
                "the secret given is not valid (Authorization: Bearer <secret>)".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "admin-secret-0123456789";
    const USER: &str = "user-secret-0123456789";

    #[test]
    fn scopes_and_callers() {
        let s = Secrets::new([ADMIN], [USER]).unwrap();
        assert_eq!(s.scope_of(ADMIN), Some(Scope::Admin));
        assert_eq!(s.scope_of(USER), Some(Scope::User));
        assert_eq!(s.scope_of("admin-secret-012345678"), None);
        assert_eq!(s.scope_of(""), None);
        let bearer = |t: &str| format!("Bearer {t}");
        assert_eq!(
            Caller::from_header(&s, Some(&bearer(ADMIN))),
            Caller::Authorized(Scope::Admin)
        );
        assert_eq!(Caller::from_header(&s, None), Caller::Missing);
        assert_eq!(
            Caller::from_header(&s, Some(ADMIN)),
            Caller::Invalid,
            "no Bearer"
        );
        let user = Caller::from_header(&s, Some(&bearer(USER)));
        assert!(user.allow(Scope::User, "list_runners").is_ok());
        let err = user.allow(Scope::Admin, "add_runner").unwrap_err();
        assert_eq!(err.code(), crate::error::codes::UNAUTHORIZED);
        assert!(err.to_string().contains("needs an admin secret"), "{err}");
        let invalid = Caller::Invalid
            .allow(Scope::User, "x")
            .unwrap_err()
            .to_string();
        assert!(!invalid.contains(USER));
        assert_eq!(Caller::from_header(&Secrets::none(), None), Caller::Open);
        assert!(format!("{s:?}").contains("admin: 1"));
        assert!(!format!("{s:?}").contains(ADMIN));
    }

    #[test]
    fn short_secrets_and_open_files_are_refused() {
        let err = Secrets::new(["short"], Vec::<String>::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("shorter than 16"), "{err}");
        assert!(!err.contains("short\""), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.toml");
        std::fs::write(
            &path,
            format!("admin = [\"{ADMIN}\"]\nuser = [\"{USER}\"]\n"),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Secrets::from_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("mode 0644") && err.contains("chmod 600"),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = Secrets::from_file(&path).unwrap();
        assert_eq!(s.secrets.scope_of(USER), Some(Scope::User));
        assert_eq!(s.redis_url, None);
        let json = dir.path().join("secrets.json");
        std::fs::write(&json, format!("{{\"admin\": [\"{ADMIN}\"]}}")).unwrap();
        std::fs::set_permissions(&json, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            Secrets::from_file(&json).unwrap().secrets.scope_of(ADMIN),
            Some(Scope::Admin)
        );
        std::fs::write(
            &json,
            format!("{{\"admin\": [\"{ADMIN}\"], \"redis_url\": \"redis://:pw@h\"}}"),
        )
        .unwrap();
        let loaded = Secrets::from_file(&json).unwrap();
        assert_eq!(loaded.redis_url.as_deref(), Some("redis://:pw@h"));
        std::fs::write(&json, format!("{{\"admin\": [\"{ADMIN}\"], \"oops\": 1")).unwrap();
        let err = Secrets::from_file(&json).unwrap_err().to_string();
        assert!(
            err.contains("is not valid") && !err.contains(ADMIN),
            "{err}"
        );
    }
}
