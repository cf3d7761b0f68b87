//! Taking over what an earlier install left: circle databases in another
//! place, written by root.
//!
//! Before services ran unprivileged, every circle's database lay flat in the
//! data directory the launcher was started with (`./launch_data` by
//! default, wherever that was), owned by root, and the worker unit's
//! `WorkingDirectory=` named that directory. Now each circle's database has
//! a directory of its own, `<data>/db/<pk>/`, owned by the service's
//! account, and service mode's data directory defaults to the platform's
//! place (`/var/lib/circles` for system services).
//!
//! So when this run installs a circle whose installed worker service (ours)
//! ran somewhere else, and that place holds the circle's database while the
//! new place holds none, the run
//!
//! 1. stops the old worker (so the file is not being written),
//! 2. copies the database into the new place (root-owned: systemd hands a
//!    `StateDirectory=` to the dynamic user at start, chowning it; the
//!    launchd backend does the same for daemons), and
//! 3. installs the new service, which starts on the copy.
//!
//! The old file is left where it was — nothing is deleted — and the run
//! says so. If the install fails, the copies are removed and the old
//! workers started again (their unit files are restored by the rollback).
//! The earlier data directory's record (`services.json`: ports, host,
//! authentication, circle names) and generated keys are taken over too, so
//! circles.json circles keep their identities.

use std::path::{Path, PathBuf};

use circles_dispatcher::CirclePublicKey;
use circles_services::{ServiceBackend, ServiceName};

use crate::error::LaunchError;
use crate::service_mode::{circle_of, db_dir, worker_service_name};
use crate::service_record::{RECORD_FILE, ServiceRecord};

/// What an earlier install left that this run takes over.
#[derive(Debug, Default)]
pub struct Migration {
    /// Data directory of an earlier install with a record, other than this
    /// run's: its record and keys are taken over when this one has none.
    pub earlier_data_dir: Option<PathBuf>,
    /// Databases to copy.
    pub databases: Vec<DatabaseCopy>,
}

/// One circle database to copy into its new place.
#[derive(Debug, Clone)]
pub struct DatabaseCopy {
    /// The circle.
    pub circle: CirclePublicKey,
    /// Its worker service (stopped before the copy).
    pub service: ServiceName,
    /// The database file the installed service uses.
    pub from: PathBuf,
    /// Where the new service will look for it.
    pub to: PathBuf,
}

impl Migration {
    /// Keeps the databases of `circles`, the circles this run installs: a
    /// circle left out keeps running its installed service on its old file.
    pub fn retain(&mut self, circles: &[CirclePublicKey]) {
        self.databases.retain(|c| circles.contains(&c.circle));
    }
}

/// Finds what an earlier install left for a run with data in `data_dir`
/// (every installed circle; [`Migration::retain`] keeps this run's); reads
/// only.
pub async fn discover(backend: &ServiceBackend, data_dir: &Path) -> Result<Migration, LaunchError> {
    let mut migration = Migration::default();
    // Files only: what matters is where the installed files run the
    // services, and asking the service manager is not needed for that.
    for name in backend.list_installed_files().await? {
        let Some(circle) = circle_of(&name) else {
            continue;
        };
        let Some(ran_in) = backend.installed_working_directory(&name).await? else {
            continue;
        };
        if ran_in != data_dir
            && migration.earlier_data_dir.is_none()
            && ran_in.join(RECORD_FILE).is_file()
        {
            migration.earlier_data_dir = Some(ran_in.clone());
        }
        let new_dir = db_dir(data_dir, &circle);
        if ran_in == new_dir {
            continue;
        }
        let file = circles_worker::store::database_file_name(&circle.to_hex());
        let (from, to) = (ran_in.join(&file), new_dir.join(&file));
        if from.is_file() && !to.exists() {
            migration.databases.push(DatabaseCopy {
                circle,
                service: worker_service_name(&circle),
                from,
                to,
            });
        }
    }
    Ok(migration)
}

/// The earlier install's record, for a data directory that has none yet.
pub fn earlier_record(migration: &Migration, data_dir: &Path) -> Option<ServiceRecord> {
    let earlier = migration.earlier_data_dir.as_ref()?;
    (!ServiceRecord::path(data_dir).exists()).then(|| ServiceRecord::load(earlier))
}

/// Stops the old workers and copies their databases (steps 1 and 2 of the
/// module docs). On failure, removes what it copied and starts the old
/// workers again.
pub async fn copy_databases(
    backend: &ServiceBackend,
    migration: &Migration,
) -> Result<(), LaunchError> {
    if migration.databases.is_empty() {
        return Ok(());
    }
    let services: Vec<ServiceName> = migration
        .databases
        .iter()
        .map(|c| c.service.clone())
        .collect();
    backend.stop(&services).await?;
    for (i, copy) in migration.databases.iter().enumerate() {
        if let Err(e) = copy_file(&copy.from, &copy.to) {
            undo(backend, &migration.databases[..i]).await;
            let _ = backend.restart(&services).await;
            return Err(LaunchError::io(
                format!(
                    "copying the database of circle {} from {} to {}",
                    copy.circle,
                    copy.from.display(),
                    copy.to.display()
                ),
                e,
            ));
        }
        tracing::info!(
            circle = %copy.circle,
            from = %copy.from.display(),
            to = %copy.to.display(),
            "copied the circle database into its new place (the old file stays)"
        );
    }
    Ok(())
}

/// After a failed install: removes the copies and starts the old workers
/// again (their unit files are back by then).
pub async fn undo(backend: &ServiceBackend, copies: &[DatabaseCopy]) {
    for copy in copies {
        if let Err(e) = std::fs::remove_file(&copy.to) {
            tracing::warn!("could not remove the copy {}: {e}", copy.to.display());
        }
    }
    let services: Vec<ServiceName> = copies.iter().map(|c| c.service.clone()).collect();
    if !services.is_empty()
        && let Err(e) = backend.restart(&services).await
    {
        tracing::error!("could not start the previous workers again: {e}");
    }
}

/// Copies `from` to `to` through a temporary file that is synced and then
/// renamed, so `to` is never half a database; `to`'s directory is made
/// (mode 0700) if needed.
fn copy_file(from: &Path, to: &Path) -> std::io::Result<()> {
    let dir = to.parent().expect("a database file has a directory");
    crate::settings::create_private_dir(dir)?;
    let tmp = dir.join(format!(".migrating-{}", std::process::id()));
    let result = (|| {
        std::fs::copy(from, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, to)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Lines for a dry run.
pub fn describe(migration: &Migration) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(dir) = &migration.earlier_data_dir {
        lines.push(format!(
            "# take over the record and keys of the earlier install in {}",
            dir.display()
        ));
    }
    for copy in &migration.databases {
        lines.push(format!(
            "# stop `{}`, copy its database {} to {}",
            copy.service,
            copy.from.display(),
            copy.to.display()
        ));
    }
    lines
}
