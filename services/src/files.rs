//! File handling shared by the backends: planning against what is on disk,
//! atomic writes, deletes that tolerate absence, and listing our files.
//!
//! Writes go to a temporary file in the same directory and are renamed into
//! place, so a service manager never reads half a unit, and a crash leaves
//! either the old file or the new one.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::backend::{Plan, PlannedAction, Rendered};
use crate::error::ServiceError;
use crate::name::ServiceName;

/// Compares each rendered file with the file at its path.
///
/// Renders `specs`, then per file: missing → `Create`; identical → `Unchanged`; different and ours (per
/// `is_ours`) → `Update`; different and not ours → [`ServiceError::AlreadyExists`].
pub(crate) async fn plan_files(
    specs: &[crate::spec::ServiceSpec],
    render: impl Fn(&crate::spec::ServiceSpec) -> Result<Rendered, ServiceError>,
    is_ours: fn(&str) -> bool,
) -> Result<Plan, ServiceError> {
    let rendered = specs.iter().map(render).collect::<Result<Vec<_>, _>>()?;
    let mut seen = BTreeSet::new();
    let mut items = Vec::with_capacity(rendered.len());
    for r in rendered {
        if !seen.insert(r.name.clone()) {
            return Err(ServiceError::Duplicate { name: r.name });
        }
        let action = match tokio::fs::read(&r.path).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => PlannedAction::Create,
            Err(source) => {
                return Err(ServiceError::Read {
                    name: r.name,
                    path: r.path,
                    source,
                });
            }
            Ok(bytes) => {
                let previous = String::from_utf8_lossy(&bytes).into_owned();
                if previous == r.contents {
                    PlannedAction::Unchanged
                } else if is_ours(&previous) {
                    PlannedAction::Update { previous }
                } else {
                    return Err(ServiceError::AlreadyExists {
                        name: r.name,
                        path: r.path,
                    });
                }
            }
        };
        items.push((r, action));
    }
    Ok(Plan { items })
}

/// Writes `contents` to `path` atomically with mode 0644 (launchd refuses
/// group- or world-writable plists), creating the directory.
pub(crate) async fn write_file(
    name: &ServiceName,
    path: &Path,
    contents: &str,
) -> Result<(), ServiceError> {
    let write_error = |source| ServiceError::Write {
        name: name.clone(),
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().ok_or_else(|| {
        write_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path has no parent directory",
        ))
    })?;
    create_dir(dir).await?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.circles-tmp-{}", std::process::id()));
    let data = contents.as_bytes().to_vec();
    let tmp_for_write = tmp.clone();
    let result = tokio::task::spawn_blocking(move || write_with_mode(&tmp_for_write, &data))
        .await
        .map_err(io::Error::other)
        .and_then(|r| r);
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(write_error(e));
    }
    if let Err(e) = tokio::fs::rename(&tmp, path).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(write_error(e));
    }
    Ok(())
}

fn write_with_mode(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o644);
    }
    let mut file = options.open(path)?;
    file.write_all(data)?;
    // The mode given to open() is filtered by the umask; set it exactly.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    file.sync_all()
}

/// `mkdir -p`.
pub(crate) async fn create_dir(dir: &Path) -> Result<(), ServiceError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|source| ServiceError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Deletes `path`; `Ok(false)` when it was already gone.
pub(crate) async fn remove_file(name: &ServiceName, path: &Path) -> Result<bool, ServiceError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(ServiceError::Remove {
            name: name.clone(),
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Our service names among the files `<name><suffix>` in `dir` (a missing
/// directory has none). Names outside the prefix are never returned.
pub(crate) async fn list_names(dir: &Path, suffix: &str) -> Result<Vec<ServiceName>, ServiceError> {
    let list_error = |source| ServiceError::ListDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(list_error(e)),
    };
    let mut names = Vec::new();
    while let Some(entry) = entries.next_entry().await.map_err(list_error)? {
        if let Some(name) = entry
            .file_name()
            .to_str()
            .and_then(|f| ServiceName::from_file_name(f, suffix))
        {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// `<dir>/<name><suffix>`.
pub(crate) fn service_file(dir: &Path, name: &ServiceName, suffix: &str) -> PathBuf {
    dir.join(format!("{name}{suffix}"))
}
