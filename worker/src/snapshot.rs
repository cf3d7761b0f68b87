//! Snapshot tasks: a consistent copy of the circle's database, taken while
//! the worker runs.
//!
//! The worker holds its redb file locked for as long as it runs, so nothing
//! else can read it; a backup of a live circle is therefore asked of the
//! worker itself, as a task of kind `snapshot` (see
//! [`circles_dispatcher::TaskKind`]). The worker exports the database inside
//! one read transaction into `<db_dir>/snapshots/<task id>.jsonl` (mode
//! 0600, written to a temporary name and renamed, so a reader never sees half
//! a file) and answers where it is. The path is the worker's choice, never
//! the client's: a Redis client cannot make it write anywhere else.
//! Snapshots nobody collected are deleted after
//! [`SNAPSHOT_KEEP_SECS`](circles_dispatcher::protocol::SNAPSHOT_KEEP_SECS).

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use circles_dispatcher::SnapshotReport;
use circles_dispatcher::protocol::{SNAPSHOT_DIR, SNAPSHOT_KEEP_SECS};

use crate::store::CircleStore;

/// Where a worker whose database lives in `db_dir` writes its snapshots.
pub fn snapshot_dir(db_dir: &Path) -> PathBuf {
    db_dir.join(SNAPSHOT_DIR)
}

/// Writes a snapshot of `store` for task `task_id` (a UUID: it becomes the
/// file name) and reports where. Errors are messages for the task's error
/// field.
pub fn write_snapshot(
    store: &CircleStore,
    db_dir: &Path,
    task_id: &str,
    host: &str,
) -> Result<SnapshotReport, String> {
    if task_id.is_empty() || !task_id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(format!(
            "snapshot task id `{}` is not a UUID",
            task_id.escape_debug()
        ));
    }
    let dir = std::path::absolute(snapshot_dir(db_dir))
        .map_err(|e| format!("cannot resolve the snapshot directory: {e}"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    prune(&dir, Duration::from_secs(SNAPSHOT_KEEP_SECS));
    let file = dir.join(format!("{task_id}.jsonl"));
    let tmp = dir.join(format!(".{task_id}.jsonl.tmp"));
    let result = (|| {
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let mut out = std::io::BufWriter::new(out);
        let counts = store.export_jsonl(&mut out).map_err(|e| e.to_string())?;
        let out = out
            .into_inner()
            .map_err(|e| format!("writing {}: {}", tmp.display(), e.error()))?;
        out.sync_all()
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        let bytes = out.metadata().map(|m| m.len()).unwrap_or_default();
        std::fs::rename(&tmp, &file)
            .map_err(|e| format!("cannot rename {}: {e}", tmp.display()))?;
        Ok(SnapshotReport {
            file: file.display().to_string(),
            host: host.to_string(),
            values: counts.values,
            counters: counts.counters,
            bytes,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Deletes snapshot files older than `keep` (left by a backup that never
/// collected its file), so they cannot pile up.
fn prune(dir: &Path, keep: Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten().take(10_000) {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > keep);
        let name = entry.file_name();
        let ours = name.to_string_lossy().ends_with(".jsonl")
            || name.to_string_lossy().ends_with(".jsonl.tmp");
        if old && ours {
            tracing::info!(file = %entry.path().display(), "deleting a snapshot nobody collected");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_is_private_complete_and_named_by_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let store = CircleStore::open(&dir.path().join("db.redb")).unwrap();
        store.set("a", "1").unwrap();
        store.insert("c", "2").unwrap();
        let id = "6f1c2d1e-1111-4222-8333-944455556666";
        let report = write_snapshot(&store, dir.path(), id, "h").unwrap();
        assert_eq!((report.values, report.counters), (2, 1));
        let path = PathBuf::from(&report.file);
        assert_eq!(
            path,
            dir.path().join("snapshots").join(format!("{id}.jsonl"))
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let records: Vec<_> = crate::store::read_records(std::io::BufReader::new(
            std::fs::File::open(&path).unwrap(),
        ))
        .collect::<Result<_, _>>()
        .unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(report.bytes, std::fs::metadata(&path).unwrap().len());
        for bad in ["../../etc/x", "", "a/b"] {
            assert!(write_snapshot(&store, dir.path(), bad, "h").is_err());
        }
    }
}
