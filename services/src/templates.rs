//! The service templates: embedded copies of `service_templates/`, optionally
//! replaced file by file from a directory.
//!
//! Embedding means an installed launcher needs no data files; the directory
//! override lets an operator adjust, say, the hardening of the units without
//! rebuilding. A file missing from the directory falls back to the embedded
//! copy, so a directory may override just one template.

use std::path::{Path, PathBuf};

use crate::error::ServiceError;
use crate::spec::ServiceTemplate;

/// One template's text and where it came from (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// `embedded systemd/circle-worker.service`, or the file's path.
    pub origin: String,
    /// The template text.
    pub text: String,
}

/// The four templates, by backend and service kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    systemd_worker: Template,
    systemd_ws_server: Template,
    launchd_worker: Template,
    launchd_ws_server: Template,
}

/// The files under `service_templates/` and their embedded copies.
const EMBEDDED: [(&str, &str); 4] = [
    (
        "systemd/circle-worker.service",
        include_str!("../../service_templates/systemd/circle-worker.service"),
    ),
    (
        "systemd/circle-ws-server.service",
        include_str!("../../service_templates/systemd/circle-ws-server.service"),
    ),
    (
        "launchd/circle-worker.plist",
        include_str!("../../service_templates/launchd/circle-worker.plist"),
    ),
    (
        "launchd/circle-ws-server.plist",
        include_str!("../../service_templates/launchd/circle-ws-server.plist"),
    ),
];

impl Templates {
    /// The copies compiled into this crate.
    pub fn embedded() -> Self {
        let get = |rel: &str| {
            let (rel, text) = EMBEDDED
                .iter()
                .find(|(r, _)| *r == rel)
                .expect("every template is embedded");
            Template {
                origin: format!("embedded {rel}"),
                text: (*text).to_string(),
            }
        };
        Self {
            systemd_worker: get("systemd/circle-worker.service"),
            systemd_ws_server: get("systemd/circle-ws-server.service"),
            launchd_worker: get("launchd/circle-worker.plist"),
            launchd_ws_server: get("launchd/circle-ws-server.plist"),
        }
    }

    /// Templates from `dir` (laid out like `service_templates/`: `systemd/…`,
    /// `launchd/…`); each file missing there is the embedded copy. A file that
    /// exists but cannot be read is an error, not a silent fallback.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, ServiceError> {
        let dir = dir.as_ref();
        let load = |rel: &str, embedded: Template| -> Result<Template, ServiceError> {
            let path: PathBuf = dir.join(rel);
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(Template {
                    origin: path.display().to_string(),
                    text,
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(embedded),
                Err(source) => Err(ServiceError::ReadTemplate { path, source }),
            }
        };
        let embedded = Self::embedded();
        Ok(Self {
            systemd_worker: load("systemd/circle-worker.service", embedded.systemd_worker)?,
            systemd_ws_server: load(
                "systemd/circle-ws-server.service",
                embedded.systemd_ws_server,
            )?,
            launchd_worker: load("launchd/circle-worker.plist", embedded.launchd_worker)?,
            launchd_ws_server: load("launchd/circle-ws-server.plist", embedded.launchd_ws_server)?,
        })
    }

    /// The systemd unit template for `template`.
    pub fn systemd(&self, template: ServiceTemplate) -> &Template {
        match template {
            ServiceTemplate::Worker => &self.systemd_worker,
            ServiceTemplate::WsServer => &self.systemd_ws_server,
        }
    }

    /// The launchd plist template for `template`.
    pub fn launchd(&self, template: ServiceTemplate) -> &Template {
        match template {
            ServiceTemplate::Worker => &self.launchd_worker,
            ServiceTemplate::WsServer => &self.launchd_ws_server,
        }
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::embedded()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_overrides_only_the_files_it_has() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("systemd")).unwrap();
        let custom = "[Service]\nExecStart={{exec_start}}\n";
        std::fs::write(dir.path().join("systemd/circle-worker.service"), custom).unwrap();

        let templates = Templates::from_dir(dir.path()).unwrap();
        let worker = templates.systemd(ServiceTemplate::Worker);
        assert_eq!(worker.text, custom);
        assert!(worker.origin.ends_with("systemd/circle-worker.service"));
        assert!(!worker.origin.starts_with("embedded"));
        assert_eq!(
            templates.systemd(ServiceTemplate::WsServer),
            Templates::embedded().systemd(ServiceTemplate::WsServer)
        );
        assert_eq!(
            templates.launchd(ServiceTemplate::Worker),
            Templates::embedded().launchd(ServiceTemplate::Worker)
        );
    }

    #[test]
    fn an_unreadable_template_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where a file is expected cannot be read as text.
        std::fs::create_dir_all(dir.path().join("launchd/circle-ws-server.plist")).unwrap();
        let err = Templates::from_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("circle-ws-server.plist"), "{err}");
    }
}
