//! File handling shared by the backends: planning against what is on disk,
//! atomic writes, deletes that tolerate absence, and listing our files.
//!
//! Writes go to a temporary file in the same directory and are renamed into
//! place, so a service manager never reads half a unit, and a crash leaves
//! either the old file or the new one.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::backend::{Plan, PlannedAction, Rendered, SECRET_FILE_MODE, SecretFile};
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
        let Some(previous) = read_optional(&r.name, &r.path).await? else {
            items.push((r, PlannedAction::Create));
            continue;
        };
        if !is_ours(&previous) {
            return Err(ServiceError::AlreadyExists {
                name: r.name,
                path: r.path,
            });
        }
        let previous_secret = match &r.secret {
            Some(secret) => {
                read_optional(&r.name, &secret.path)
                    .await?
                    .map(|contents| SecretFile {
                        path: secret.path.clone(),
                        contents,
                    })
            }
            None => None,
        };
        let previous_mode = file_mode(&r.path).await.unwrap_or(r.mode);
        let action =
            if previous == r.contents && previous_secret == r.secret && previous_mode == r.mode {
                PlannedAction::Unchanged
            } else {
                PlannedAction::Update {
                    previous,
                    previous_mode,
                    previous_secret,
                }
            };
        items.push((r, action));
    }
    Ok(Plan { items })
}

/// A file's text, `None` when it does not exist.
async fn read_optional(name: &ServiceName, path: &Path) -> Result<Option<String>, ServiceError> {
    match tokio::fs::read(path).await {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ServiceError::Read {
            name: name.clone(),
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The permission bits of `path`, when it can be read.
async fn file_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        tokio::fs::metadata(path)
            .await
            .ok()
            .map(|m| m.permissions().mode() & 0o7777)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Writes a rendered service file and, first, its secret file.
pub(crate) async fn write_rendered(rendered: &Rendered) -> Result<(), ServiceError> {
    if let Some(secret) = &rendered.secret {
        write_secret(&rendered.name, secret).await?;
    }
    write_file(
        &rendered.name,
        &rendered.path,
        &rendered.contents,
        rendered.mode,
    )
    .await
}

/// Writes a secret file with mode 0600 in a directory of mode 0700.
pub(crate) async fn write_secret(
    name: &ServiceName,
    secret: &SecretFile,
) -> Result<(), ServiceError> {
    if let Some(dir) = secret.path.parent() {
        create_private_dir(dir).await?;
    }
    write_file(name, &secret.path, &secret.contents, SECRET_FILE_MODE).await
}

/// `mkdir -p` whose last directory is (made) mode 0700.
async fn create_private_dir(dir: &Path) -> Result<(), ServiceError> {
    create_dir(dir).await?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .await
            .map_err(|source| ServiceError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

/// Puts back what a rolled-back update replaced: the previous secret file
/// (or none), then the previous service file.
pub(crate) async fn restore_previous(
    rendered: &Rendered,
    previous: &str,
    previous_mode: u32,
    previous_secret: Option<&SecretFile>,
) -> Result<(), ServiceError> {
    match (previous_secret, &rendered.secret) {
        (Some(old), _) => write_secret(&rendered.name, old).await?,
        (None, Some(new)) => {
            remove_file(&rendered.name, &new.path).await?;
        }
        (None, None) => {}
    }
    write_file(&rendered.name, &rendered.path, previous, previous_mode).await
}

/// Deletes a rendered file and its secret file.
pub(crate) async fn remove_rendered(rendered: &Rendered) -> Result<bool, ServiceError> {
    if let Some(secret) = &rendered.secret {
        remove_file(&rendered.name, &secret.path).await?;
    }
    remove_file(&rendered.name, &rendered.path).await
}

/// Writes `contents` to `path` atomically with permission bits `mode`,
/// creating the directory.
pub(crate) async fn write_file(
    name: &ServiceName,
    path: &Path,
    contents: &str,
    mode: u32,
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
    let result = tokio::task::spawn_blocking(move || write_with_mode(&tmp_for_write, &data, mode))
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

fn write_with_mode(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write as _;
    // A leftover temporary file from a crashed run could have a wider mode;
    // `create_new` below must create it afresh with ours.
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        // Created with the final mode (less the umask), never wider: a
        // secret is not readable by others even for a moment.
        options.mode(mode);
    }
    let mut file = options.open(path)?;
    // The mode given to open() is filtered by the umask; set it exactly
    // before any data is written.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    file.write_all(data)?;
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
