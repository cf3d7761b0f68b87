//! The circle's own database: one redb file per circle.
//!
//! Values are stored as JSON text so any Rhai value made of strings, numbers,
//! booleans, arrays and maps survives the round trip. Every write commits on
//! its own (redb's default, fsync'd durability): a value a script wrote is on
//! disk before the script's next statement runs, so a crash never loses an
//! acknowledged write. Auto-increment ids come from a counter table updated in
//! the same transaction as the value, so ids are never reused.
//!
//! [`CircleStore::export`] and [`CircleStore::import`] move a database
//! between hosts as [`StoreRecord`]s (JSON, one a line): a portable form,
//! independent of redb's file format, that keeps the auto-increment counters
//! so ids continue where they were. An export reads inside one read
//! transaction, so it is a consistent snapshot even while tasks write.

use std::fmt::Display;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use redb::{Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Key → JSON value.
const VALUES: TableDefinition<'_, &str, &str> = TableDefinition::new("values");
/// Collection name → last id handed out by [`CircleStore::insert`].
const COUNTERS: TableDefinition<'_, &str, u64> = TableDefinition::new("counters");
/// What [`CircleStore::list_bounded`] reads out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Keys and their values.
    KeysAndValues,
    /// Keys only.
    Keys,
}

/// redb's page cache. Its default is 1 GiB, all of it heap that the worker's
/// memory ceiling counts: a circle with a few hundred MB of data crashed the
/// worker by ordinary reads and writes. Kept well inside the ceiling's
/// headroom above the task budget (`HARD_LIMIT_HEADROOM` in `run.rs`).
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

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
    /// An import would replace a database that is already there.
    #[error("circle database {path} already exists; not overwriting it")]
    Exists {
        /// The database file.
        path: PathBuf,
    },
    /// A write would grow the database past its quota.
    #[error(
        "the circle database is full: {size_mib} MiB, the limit is {max_mib} MiB; delete values or raise --max-db-mb"
    )]
    Full {
        /// Its size now, MiB.
        size_mib: u64,
        /// The quota, MiB.
        max_mib: u64,
    },
    /// A listing would return more than the caller may hold.
    #[error("{what} under prefix `{prefix}` would return more than {max}; use a longer prefix")]
    TooMany {
        /// `db_list` or `db_keys`.
        what: &'static str,
        /// The prefix asked for (clipped).
        prefix: String,
        /// The limit that was hit, in words.
        max: String,
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
    /// The data's size as the quota check knows it, once the file has
    /// reached the quota.
    usage: std::sync::Mutex<Usage>,
}

/// The circle's data in bytes: measured (redb's stats walk every page, so
/// at most once per [`REMEASURE_EVERY`]) and kept up to date in between
/// by what writes add and deletes free.
#[derive(Debug, Default)]
struct Usage {
    bytes: u64,
    measured_at: Option<std::time::Instant>,
}

/// How often the quota check may measure the data itself.
const REMEASURE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// [`StoreError::InUse`] for `path`, naming the holder where the system
/// tells.
fn in_use(path: &Path) -> StoreError {
    StoreError::InUse {
        path: path.to_path_buf(),
        holder: lock_holder(path).unwrap_or_else(|| "another process".into()),
    }
}

/// The process holding the whole-file lock of `path`, from `/proc/locks`
/// (Linux; `None` elsewhere or when the lock is not found): `pid 4242
/// (worker --circle-public-key 02…)`.
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
        // Only the program and the circle it serves: the rest of another
        // process's command line may hold a secret (`--redis-url` with a
        // password), and this message reaches logs and status tables.
        let circle = command
            .iter()
            .position(|a| a == "--circle-public-key")
            .and_then(|i| command.get(i + 1))
            .map(|pk| {
                format!(
                    " --circle-public-key {}",
                    circles_dispatcher::text::clip(pk, 130)
                )
            })
            .unwrap_or_default();
        format!(
            "pid {pid} ({}{circle})",
            circles_dispatcher::text::clip(&program, 80)
        )
    })
}

/// One entry of a circle database, as exported and imported (one JSON
/// object a line: `{"t":"counter","collection":"users","last_id":3}`,
/// `{"t":"value","key":"users:1","json":"{\"name\":\"a\"}"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreRecord {
    /// The last id [`CircleStore::insert`] handed out in `collection`.
    Counter {
        /// The collection.
        collection: String,
        /// Its last id; the next insert gets this plus one.
        last_id: u64,
    },
    /// A stored value: `key` → the JSON text as stored.
    Value {
        /// The key.
        key: String,
        /// The value's JSON text.
        json: String,
    },
}

/// How many records an export wrote or an import read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordCounts {
    /// Values.
    pub values: u64,
    /// Auto-increment counters.
    pub counters: u64,
}

impl std::fmt::Display for RecordCounts {
    /// `3 values, 1 counter`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |n: u64| if n == 1 { "" } else { "s" };
        write!(
            f,
            "{} value{}, {} counter{}",
            self.values,
            s(self.values),
            self.counters,
            s(self.counters)
        )
    }
}

impl RecordCounts {
    fn add(&mut self, record: &StoreRecord) {
        match record {
            StoreRecord::Counter { .. } => self.counters += 1,
            StoreRecord::Value { .. } => self.values += 1,
        }
    }
}

/// Longest record line [`read_records`] accepts: a value is bounded by the
/// worker's memory budget, so a longer line is a damaged file, and reading
/// it whole would only exhaust memory.
pub const MAX_RECORD_LINE: usize = 512 * 1024 * 1024;

/// File name of a circle's database inside the data directory.
pub fn database_file_name(circle_hex: &str) -> String {
    format!("circle_db_{circle_hex}.redb")
}

impl CircleStore {
    /// Opens (creating if needed) the database file at `path`, with a page
    /// cache of [`CACHE_BYTES`].
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
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|source| match source {
                redb::DatabaseError::DatabaseAlreadyOpen => in_use(path),
                source => StoreError::Open {
                    path: path.to_path_buf(),
                    source: Box::new(source),
                },
            })?;
        let store = Self {
            usage: Default::default(),
            db,
            path: path.to_path_buf(),
        };
        // Create both tables up front so readers never meet a missing table.
        // Not a durable commit: a crash before the first durable one loses
        // only the two empty tables, which the next open makes again — while
        // syncing here puts an `fdatasync` in every new circle's start (redb
        // makes the commit durable at the next durable one or at a clean
        // close). An existing database has them already: no commit at all.
        let has_tables = {
            let txn = store.db.begin_read().map_err(|e| store.err(e))?;
            txn.open_table(VALUES).is_ok() && txn.open_table(COUNTERS).is_ok()
        };
        if !has_tables {
            let mut txn = store.db.begin_write().map_err(|e| store.err(e))?;
            txn.set_durability(redb::Durability::None)
                .map_err(|e| store.err(redb::Error::from(e)))?;
            txn.open_table(VALUES).map_err(|e| store.err(e))?;
            txn.open_table(COUNTERS).map_err(|e| store.err(e))?;
            txn.commit().map_err(|e| store.err(e))?;
        }
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
        let replaced = self.write(|txn| {
            let mut table = txn.open_table(VALUES)?;
            let old = table.insert(key, json)?.map(|v| v.value().len());
            Ok(old)
        })?;
        self.count_written(key.len() + json.len(), replaced.map(|len| key.len() + len));
        Ok(())
    }

    /// Deletes `key`; returns whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let removed = self.write(|txn| {
            let mut table = txn.open_table(VALUES)?;
            let old = table.remove(key)?.map(|v| v.value().len());
            Ok(old)
        })?;
        self.count_written(0, removed.map(|len| key.len() + len));
        Ok(removed.is_some())
    }

    /// Keeps the quota's account: `added` bytes written, `freed` gone.
    fn count_written(&self, added: usize, freed: Option<usize>) {
        let mut usage = self.usage.lock().expect("usage lock poisoned");
        usage.bytes = (usage.bytes + added as u64).saturating_sub(freed.unwrap_or(0) as u64);
    }

    /// Every `(key, json)` whose key starts with `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.list_bounded(
            prefix,
            usize::MAX,
            usize::MAX,
            Listing::KeysAndValues,
            "a listing",
        )
    }

    /// [`Self::list`] that stops with [`StoreError::TooMany`] before
    /// holding more than `max_entries` entries or `max_bytes` of what it
    /// returns: a script's listing is one native call, which the per-task
    /// memory budget cannot interrupt half-way. With [`Listing::Keys`] the
    /// values are neither read out nor counted (each comes back empty).
    pub fn list_bounded(
        &self,
        prefix: &str,
        max_entries: usize,
        max_bytes: usize,
        listing: Listing,
        what: &'static str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(VALUES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let too_many = |max: String| StoreError::TooMany {
            what,
            prefix: circles_dispatcher::text::clip(prefix, 64).into_owned(),
            max,
        };
        for entry in table.range(prefix..).map_err(|e| self.err(e))? {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            if !k.value().starts_with(prefix) {
                break;
            }
            if out.len() >= max_entries {
                return Err(too_many(format!("{max_entries} entries")));
            }
            let value = match listing {
                Listing::KeysAndValues => v.value(),
                Listing::Keys => "",
            };
            bytes = bytes.saturating_add(k.value().len() + value.len());
            if bytes > max_bytes {
                return Err(too_many(format!("{} MiB", max_bytes >> 20)));
            }
            out.push((k.value().to_string(), value.to_string()));
        }
        Ok(out)
    }

    /// Fails with [`StoreError::Full`] when writing `adding` more bytes
    /// would take the circle's data past `max_bytes` (0: no quota). Checked
    /// before every write a script makes, against a disk a script could
    /// otherwise fill: one `stat` while the file is below the quota. A file
    /// never shrinks, so past it the data itself is counted — measured at
    /// most once a second, and kept up to date in between by what writes
    /// add and deletes free — so deleting values makes room again. It
    /// bounds the data, not the file: freed pages stay in it for reuse, and
    /// redb rounds allocations up (large values: up to about twice).
    pub fn check_quota(&self, max_bytes: u64, adding: usize) -> Result<(), StoreError> {
        if max_bytes == 0 {
            return Ok(());
        }
        let size = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if size < max_bytes {
            return Ok(());
        }
        let mut usage = self.usage.lock().expect("usage lock poisoned");
        let over = |u: &Usage| u.bytes.saturating_add(adding as u64) > max_bytes;
        let due = usage
            .measured_at
            .is_none_or(|at| over(&usage) && at.elapsed() >= REMEASURE_EVERY);
        if due {
            let txn = self.db.begin_write().map_err(|e| self.err(e))?;
            let stats = txn.stats().map_err(|e| self.err(e))?;
            txn.abort().map_err(|e| self.err(e))?;
            usage.bytes = stats.stored_bytes() + stats.metadata_bytes();
            usage.measured_at = Some(std::time::Instant::now());
        }
        if over(&usage) {
            return Err(StoreError::Full {
                size_mib: usage.bytes >> 20,
                max_mib: max_bytes >> 20,
            });
        }
        Ok(())
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
        .inspect(|_| self.count_written(collection.len() + 21 + json.len(), None))
    }

    /// Calls `each` with every record — counters, then values, each in key
    /// order — read inside one read transaction: a consistent snapshot,
    /// whatever tasks write meanwhile. Stops at the first error of `each`.
    pub fn export(
        &self,
        each: impl FnMut(StoreRecord) -> std::io::Result<()>,
    ) -> Result<RecordCounts, StoreError> {
        export_from(&self.db, &self.path, each)
    }

    /// [`Self::export`] as JSON lines into `out`.
    pub fn export_jsonl(&self, out: &mut impl Write) -> Result<RecordCounts, StoreError> {
        self.export(|record| write_record(out, &record))
    }

    /// Creates the database at `path` holding exactly `records`, or nothing:
    /// it is built in a temporary file beside `path`, committed once, and
    /// linked into place only if nothing is at `path` by then (an existing
    /// database is never replaced). The first `Err` in `records` aborts the
    /// import and removes the temporary file.
    pub fn import<E: Display>(
        path: &Path,
        records: impl IntoIterator<Item = Result<StoreRecord, E>>,
    ) -> Result<RecordCounts, StoreError> {
        let access = |message: String| StoreError::Access {
            path: path.to_path_buf(),
            message,
        };
        if path.exists() {
            return Err(StoreError::Exists {
                path: path.to_path_buf(),
            });
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| access(format!("cannot create directory {}: {e}", dir.display())))?;
        let tmp = dir.join(format!(
            ".{}.import-{}",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        let result = (|| {
            let store = Self::open(&tmp)?;
            let mut counts = RecordCounts::default();
            store.write(|txn| {
                let mut values = txn.open_table(VALUES)?;
                let mut counters = txn.open_table(COUNTERS)?;
                for record in records {
                    let record = record.map_err(|e| {
                        redb::Error::Io(std::io::Error::other(format!("bad record: {e}")))
                    })?;
                    counts.add(&record);
                    match &record {
                        StoreRecord::Counter {
                            collection,
                            last_id,
                        } => {
                            counters.insert(collection.as_str(), *last_id)?;
                        }
                        StoreRecord::Value { key, json } => {
                            values.insert(key.as_str(), json.as_str())?;
                        }
                    }
                }
                Ok(())
            })?;
            drop(store);
            // A hard link fails if `path` appeared meanwhile: never replace.
            std::fs::hard_link(&tmp, path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    StoreError::Exists {
                        path: path.to_path_buf(),
                    }
                } else {
                    access(format!("cannot move the imported database into place: {e}"))
                }
            })?;
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(counts)
        })();
        let _ = std::fs::remove_file(&tmp);
        result
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

/// [`CircleStore::export`] of the database file at `path`, for when no
/// worker has it open: read-only when the file allows, else (a file left by
/// a crash needs redb's repair first) opened for writing, as the next worker
/// would. Fails with [`StoreError::InUse`] while a process holds the file.
pub fn export_file(
    path: &Path,
    each: impl FnMut(StoreRecord) -> std::io::Result<()>,
) -> Result<RecordCounts, StoreError> {
    let open_err = |source: redb::DatabaseError| match source {
        redb::DatabaseError::DatabaseAlreadyOpen => in_use(path),
        source => StoreError::Open {
            path: path.to_path_buf(),
            source: Box::new(source),
        },
    };
    if !path.is_file() {
        return Err(StoreError::Access {
            path: path.to_path_buf(),
            message: "no such database file".into(),
        });
    }
    match ReadOnlyDatabase::open(path) {
        Ok(db) => export_from(&db, path, each),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(in_use(path)),
        Err(e) => {
            tracing::debug!(error = %e, "read-only open refused; opening for repair");
            let db = Database::open(path).map_err(open_err)?;
            export_from(&db, path, each)
        }
    }
}

fn export_from(
    db: &impl ReadableDatabase,
    path: &Path,
    mut each: impl FnMut(StoreRecord) -> std::io::Result<()>,
) -> Result<RecordCounts, StoreError> {
    let err = |message: String| StoreError::Access {
        path: path.to_path_buf(),
        message,
    };
    let txn = db
        .begin_read()
        .map_err(|e| err(redb::Error::from(e).to_string()))?;
    let mut counts = RecordCounts::default();
    let mut emit = |record: StoreRecord| {
        counts.add(&record);
        each(record).map_err(|e| err(format!("writing the export: {e}")))
    };
    let redb_err = |e: redb::Error| err(e.to_string());
    // A database no worker ever finished opening may lack a table: nothing
    // to export from it.
    match txn.open_table(COUNTERS) {
        Ok(table) => {
            for entry in table.iter().map_err(|e| redb_err(e.into()))? {
                let (k, v) = entry.map_err(|e| redb_err(e.into()))?;
                emit(StoreRecord::Counter {
                    collection: k.value().to_string(),
                    last_id: v.value(),
                })?;
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(redb_err(e.into())),
    }
    match txn.open_table(VALUES) {
        Ok(table) => {
            for entry in table.iter().map_err(|e| redb_err(e.into()))? {
                let (k, v) = entry.map_err(|e| redb_err(e.into()))?;
                emit(StoreRecord::Value {
                    key: k.value().to_string(),
                    json: v.value().to_string(),
                })?;
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(redb_err(e.into())),
    }
    Ok(counts)
}

/// Writes one record as a JSON line.
pub fn write_record(out: &mut impl Write, record: &StoreRecord) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, record)?;
    out.write_all(b"\n")
}

/// Reads JSON-line records, one a line, refusing lines over
/// [`MAX_RECORD_LINE`]; each error names its line number.
pub fn read_records(input: impl BufRead) -> impl Iterator<Item = Result<StoreRecord, String>> {
    let mut lines = BoundedLines::new(input, MAX_RECORD_LINE);
    std::iter::from_fn(move || {
        let (n, line) = match lines.next_line()? {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        Some(
            serde_json::from_slice::<StoreRecord>(&line)
                .map_err(|e| format!("line {n}: not a database record: {e}")),
        )
    })
}

/// Lines of a reader, each at most `max` bytes (without the newline), with
/// their 1-based numbers; a longer line is an error instead of a growing
/// buffer.
#[derive(Debug)]
pub struct BoundedLines<R> {
    input: R,
    max: usize,
    number: u64,
    done: bool,
}

impl<R: BufRead> BoundedLines<R> {
    /// Lines of `input`, each at most `max` bytes.
    pub fn new(input: R, max: usize) -> Self {
        Self {
            input,
            max,
            number: 0,
            done: false,
        }
    }

    /// The next line without its newline (`None` at the end), or an error
    /// naming the line.
    pub fn next_line(&mut self) -> Option<Result<(u64, Vec<u8>), String>> {
        if self.done {
            return None;
        }
        self.number += 1;
        let mut line = Vec::new();
        let limit = u64::try_from(self.max)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        match std::io::Read::take(&mut self.input, limit).read_until(b'\n', &mut line) {
            Ok(0) => {
                self.done = true;
                None
            }
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                } else if line.len() > self.max {
                    self.done = true;
                    return Some(Err(format!(
                        "line {} is longer than {} bytes",
                        self.number, self.max
                    )));
                }
                Some(Ok((self.number, line)))
            }
            Err(e) => {
                self.done = true;
                Some(Err(format!("line {}: {e}", self.number)))
            }
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
    fn the_page_cache_stays_bounded_however_much_is_read_and_written() {
        // redb's default cache is 1 GiB of counted heap: 128 MiB of values
        // written and read back kept ~all of it, and a few hundred MB
        // crashed the worker at its memory ceiling.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(database_file_name("02ab"));
        let value = format!("\"{}\"", "v".repeat(1024 * 1024));
        let baseline = crate::memory::allocated();
        let mut peak = 0;
        {
            let store = CircleStore::open(&path).unwrap();
            for i in 0..128 {
                store.set(&format!("k:{i}"), &value).unwrap();
                peak = peak.max(crate::memory::allocated());
            }
        }
        let store = CircleStore::open(&path).unwrap();
        for i in 0..128 {
            assert_eq!(
                store.get(&format!("k:{i}")).unwrap().unwrap().len(),
                value.len()
            );
            peak = peak.max(crate::memory::allocated());
        }
        let grown = peak.saturating_sub(baseline);
        assert!(
            grown < CACHE_BYTES + 48 * 1024 * 1024,
            "heap grew by {} MiB",
            grown >> 20
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

    #[test]
    fn export_import_roundtrip_keeps_values_and_counters() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("a.redb");
        let store = CircleStore::open(&src).unwrap();
        store.set("greeting", "\"hé\\nllo\"").unwrap();
        assert_eq!(store.insert("users", r#"{"n":1}"#).unwrap(), 1);
        assert_eq!(store.insert("users", r#"{"n":2}"#).unwrap(), 2);
        assert!(store.delete("users:2").unwrap());
        let mut lines = Vec::new();
        let counts = store.export_jsonl(&mut lines).unwrap();
        assert_eq!(
            counts,
            RecordCounts {
                values: 2,
                counters: 1
            }
        );
        let text = String::from_utf8(lines.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"t":"counter","collection":"users","last_id":2}"#),
            "{text}"
        );

        let dst = dir.path().join("b.redb");
        let imported = CircleStore::import(&dst, read_records(&lines[..])).unwrap();
        assert_eq!(imported, counts);
        let restored = CircleStore::open(&dst).unwrap();
        assert_eq!(
            restored.get("greeting").unwrap(),
            store.get("greeting").unwrap()
        );
        assert_eq!(restored.list("").unwrap(), store.list("").unwrap());
        // The counter came along: a deleted id is not handed out again.
        assert_eq!(restored.insert("users", "{}").unwrap(), 3);
        drop(restored);

        // Never over an existing database, and a bad record leaves nothing.
        let err = CircleStore::import(&dst, read_records(&lines[..])).unwrap_err();
        assert!(matches!(err, StoreError::Exists { .. }), "{err}");
        let third = dir.path().join("c.redb");
        let broken = [lines.as_slice(), b"{\"t\":\"value\"}\n"].concat();
        let err = CircleStore::import(&third, read_records(&broken[..])).unwrap_err();
        assert!(err.to_string().contains("line 4"), "{err}");
        assert!(!third.exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 2, "no temporary file left: {leftovers:?}");
    }

    #[test]
    fn export_file_reads_a_closed_database_and_refuses_an_open_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.redb");
        let store = CircleStore::open(&path).unwrap();
        store.set("k", "1").unwrap();
        let err = export_file(&path, |_| Ok(())).unwrap_err();
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
        drop(store);
        let mut records = Vec::new();
        export_file(&path, |r| {
            records.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            records,
            [StoreRecord::Value {
                key: "k".into(),
                json: "1".into()
            }]
        );
        let err = export_file(&dir.path().join("missing.redb"), |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("no such database file"), "{err}");
    }

    #[test]
    fn long_lines_are_refused_not_buffered() {
        let input = b"{}\n0123456789\nxyz".to_vec();
        let mut lines = BoundedLines::new(&input[..], 5);
        assert_eq!(lines.next_line().unwrap().unwrap(), (1, b"{}".to_vec()));
        let err = lines.next_line().unwrap().unwrap_err();
        assert!(err.contains("line 2 is longer than 5 bytes"), "{err}");
        assert!(lines.next_line().is_none());
    }
}
