//! The service templates: embedded copies of `service_templates/`, optionally
//! replaced file by file from a directory.
//!
//! Embedding means an installed launcher needs no data files; the directory
//! override lets an operator adjust, say, the hardening of the units without
//! rebuilding. A file missing from the directory falls back to the embedded
//! copy, so a directory may override just one template.

use std::collections::BTreeMap;
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

/// Every template, by backend and service kind: a table with one row per
/// file of `service_templates/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    /// `(backend directory, template)` → text; every row of [`EMBEDDED`].
    table: BTreeMap<(&'static str, ServiceTemplate), Template>,
}

/// The backend directories under `service_templates/` and their file suffix.
const SYSTEMD: (&str, &str) = ("systemd", ".service");
const LAUNCHD: (&str, &str) = ("launchd", ".plist");

/// The files under `service_templates/` and their embedded copies: one row
/// per (backend, template).
const EMBEDDED: [(&str, ServiceTemplate, &str); 6] = [
    (
        SYSTEMD.0,
        ServiceTemplate::Worker,
        include_str!("../../service_templates/systemd/circle-worker.service"),
    ),
    (
        SYSTEMD.0,
        ServiceTemplate::WsServer,
        include_str!("../../service_templates/systemd/circle-ws-server.service"),
    ),
    (
        SYSTEMD.0,
        ServiceTemplate::Supervisor,
        include_str!("../../service_templates/systemd/supervisor.service"),
    ),
    (
        LAUNCHD.0,
        ServiceTemplate::Worker,
        include_str!("../../service_templates/launchd/circle-worker.plist"),
    ),
    (
        LAUNCHD.0,
        ServiceTemplate::WsServer,
        include_str!("../../service_templates/launchd/circle-ws-server.plist"),
    ),
    (
        LAUNCHD.0,
        ServiceTemplate::Supervisor,
        include_str!("../../service_templates/launchd/supervisor.plist"),
    ),
];

/// `systemd/circle-worker.service`
fn relative_path(backend: &str, template: ServiceTemplate) -> String {
    let suffix = if backend == SYSTEMD.0 {
        SYSTEMD.1
    } else {
        LAUNCHD.1
    };
    format!("{backend}/{}{suffix}", template.file_stem())
}

impl Templates {
    /// The copies compiled into this crate.
    pub fn embedded() -> Self {
        Self {
            table: EMBEDDED
                .iter()
                .map(|(backend, template, text)| {
                    let origin = format!("embedded {}", relative_path(backend, *template));
                    (
                        (*backend, *template),
                        Template {
                            origin,
                            text: (*text).to_string(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Templates from `dir` (laid out like `service_templates/`: `systemd/…`,
    /// `launchd/…`); each file missing there is the embedded copy. A file that
    /// exists but cannot be read is an error, not a silent fallback.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, ServiceError> {
        let dir = dir.as_ref();
        let mut templates = Self::embedded();
        for ((backend, template), entry) in templates.table.iter_mut() {
            let path: PathBuf = dir.join(relative_path(backend, *template));
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    *entry = Template {
                        origin: path.display().to_string(),
                        text,
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ServiceError::ReadTemplate { path, source }),
            }
        }
        Ok(templates)
    }

    /// The systemd unit template for `template`.
    pub fn systemd(&self, template: ServiceTemplate) -> &Template {
        &self.table[&(SYSTEMD.0, template)]
    }

    /// The launchd plist template for `template`.
    pub fn launchd(&self, template: ServiceTemplate) -> &Template {
        &self.table[&(LAUNCHD.0, template)]
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
