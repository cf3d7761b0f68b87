//! The circle's own database: one redb file per circle.
//!
//! Values are stored as JSON text so any Rhai value made of strings, numbers,
//! booleans, arrays and maps survives the round trip. Every write commits on
//! its own (redb's default, fsync'd durability): a value a script wrote is on
//! disk before the script's next statement runs, so a crash never loses an
//! acknowledged write. Auto-increment ids come from a counter table updated in
//! the same transaction as the value, so ids are never reused.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// Key → JSON value.
const VALUES: TableDefinition<'_, &str, &str> = TableDefinition::new("values");
/// Collection name → last id handed out by [`CircleStore::insert`].
const COUNTERS: TableDefinition<'_, &str, u64> = TableDefinition::new("counters");

/// Errors of the circle store, naming the database file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened or created.
    #[error("failed to open circle database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        source: Box<redb::DatabaseError>,
    },
    /// Another process has the file open (redb locks it): another worker of
    /// the same circle on the same data directory, most likely one that
    /// uses another Redis (with the same Redis, the circle's lease stops a
    /// second worker before it gets here).
    #[error(
        "circle database {path} is in use by {holder}; a circle database has one worker at a time: stop that one, or give this worker its own --db-path"
    )]
    InUse {
        /// The database file.
        path: PathBuf,
        /// Who holds it: `pid 4242 (worker --circle-public-key …)`, or
        /// `another process` when the system does not say.
        holder: String,
    },
    /// A read or write failed.
    #[error("circle database {path}: {message}")]
    Access {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// A circle's persistent key-value store.
#[derive(Debug)]
pub struct CircleStore {
    db: Database,
    path: PathBuf,
}

/// The process holding the whole-file lock of `path`, from `/proc/locks`
/// (Linux; `None` elsewhere or when the lock is not found): `pid 4242
/// (worker --circle-public-key 02… --db-path …)`.
fn lock_holder(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let dev = meta.dev();
    // The kernel's major/minor split of a device number, as /proc/locks
    // prints it (hex, `fe:00:<inode>`).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let id = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid: u32 = locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // `9: FLOCK ADVISORY WRITE 996 fe:00:10010764 0 EOF`; OFD locks
        // have no pid (-1) and waiters are marked `->`.
        match fields.as_slice() {
            [_, "FLOCK" | "POSIX", _, _, pid, file, ..] if *file == id => pid.parse().ok(),
            _ => None,
        }
    })?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let command: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some(if command.is_empty() {
        format!("pid {pid}")
    } else {
        let program = std::path::Path::new(&command[0])
            .file_name()
            .map_or_else(|| command[0].clone(), |n| n.to_string_lossy().into_owned());
        let args = std::iter::once(program)
            .chain(command[1..].iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        format!("pid {pid} ({})", circles_dispatcher::text::clip(&args, 300))
    })
}

/// File name of a circle's database inside the data directory.
pub fn database_file_name(circle_hex: &str) -> String {
    format!("circle_db_{circle_hex}.redb")
}

impl CircleStore {
    /// Opens (creating if needed) the database file at `path`.
    ///
    /// redb locks the file, so a second worker for the same circle fails here
    /// instead of corrupting the first one's data.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Access {
                path: path.to_path_buf(),
                message: format!("cannot create directory {}: {e}", parent.display()),
            })?;
        }
        let db = Database::create(path).map_err(|source| match source {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                path: path.to_path_buf(),
                holder: lock_holder(path).unwrap_or_else(|| "another process".into()),
            },
            source => StoreError::Open {
                path: path.to_path_buf(),
                source: Box::new(source),
            },
        })?;
        let store = Self {
            db,
            path: path.to_path_buf(),
        };
        // Create both tables up front so readers never meet a missing table.
        store.write(|txn| {
            txn.open_table(VALUES)?;
            txn.open_table(COUNTERS)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The JSON value stored under `key`.
    pub fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(VALUES).map_err(|e| self.err(e))?;
        let value = table.get(key).map_err(|e| self.err(e))?;
        Ok(value.map(|v| v.value().to_string()))
    }

    /// Stores a JSON value under `key`, replacing any previous one.
    pub fn set(&self, key: &str, json: &str) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(VALUES)?.insert(key, json)?;
            Ok(())
        })
    }

    /// Deletes `key`; returns whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.write(|txn| Ok(txn.open_table(VALUES)?.remove(key)?.is_some()))
    }

    /// Every `(key, json)` whose key starts with `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(VALUES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(|e| self.err(e))? {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    /// Stores `json` under `<collection>:<id>` with the next id of that
    /// collection (1, 2, 3, ...) and returns the id.
    pub fn insert(&self, collection: &str, json: &str) -> Result<u64, StoreError> {
        self.write(|txn| {
            let id = {
                let mut counters = txn.open_table(COUNTERS)?;
                let id = counters.get(collection)?.map_or(0, |v| v.value()) + 1;
                counters.insert(collection, id)?;
                id
            };
            txn.open_table(VALUES)?
                .insert(format!("{collection}:{id}").as_str(), json)?;
            Ok(id)
        })
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let value = f(&txn).map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))?;
        Ok(value)
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Access {
            path: self.path.clone(),
            message: e.into().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_database_open_elsewhere_names_the_process_holding_it() {
        // Issue 10 item 6: not redb's "Database already open. Cannot
        // acquire lock." but who holds it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(database_file_name("02ab"));
        let _first = CircleStore::open(&path).unwrap();
        let err = CircleStore::open(&path).unwrap_err().to_string();
        let me = format!("is in use by pid {} (", std::process::id());
        assert!(err.contains(&me), "{err}");
        assert!(
            err.contains("stop that one, or give this worker its own --db-path"),
            "{err}"
        );
    }

    #[test]
    fn values_survive_reopen_and_ids_increase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(database_file_name("02ab"));
        {
            let store = CircleStore::open(&path).unwrap();
            store.set("a", "1").unwrap();
            store.set("b:1", "\"x\"").unwrap();
            store.set("b:2", "\"y\"").unwrap();
            store.set("c", "3").unwrap();
            assert_eq!(store.insert("users", "{}").unwrap(), 1);
            assert_eq!(store.insert("users", "{}").unwrap(), 2);
            assert!(store.delete("c").unwrap());
            assert!(!store.delete("c").unwrap());
        }
        let store = CircleStore::open(&path).unwrap();
        assert_eq!(store.get("a").unwrap().as_deref(), Some("1"));
        assert_eq!(store.get("c").unwrap(), None);
        let keys: Vec<_> = store
            .list("b:")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["b:1", "b:2"]);
        assert_eq!(store.insert("users", "{}").unwrap(), 3);
        assert_eq!(store.list("users:").unwrap().len(), 3);
    }
}
