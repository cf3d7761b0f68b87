//! `launcher backup` and `launcher restore`: one circle to a file and back,
//! on the same host or another — the way a circle moves between hosts.
//!
//! A backup holds the circle's database (every value and every
//! auto-increment counter, so ids continue after a restore), its key file if
//! the launcher generated one (`<data>/keys/<name>.json`, with the secret
//! key: the file is written 0600) and its init script if known. It is JSON,
//! one object a line — a header first, then the key, the init script, the
//! database records in key order, and an end line with the counts and the
//! SHA-256 of everything before it — so it streams both ways, and a
//! truncated or altered file is told apart from a good one.
//!
//! Where the database is read from depends on where the circle runs, as the
//! ownership lease in Redis tells:
//!
//! - a live worker on this host has the file locked: it is asked, over
//!   Redis, for a snapshot taken in one read transaction (a task kind only
//!   trusted Redis clients can submit; see `circles_worker::snapshot`);
//! - a live worker on another host: refused, naming that host — its
//!   database is there;
//! - no worker: the file in the data directory is read directly — where
//!   service mode keeps it (`<data>/db/<pk>/`, data directory by default the
//!   platform's place) or where direct mode does (`<data>/`, by default
//!   `./launch_data`).
//!
//! A restore validates the whole file before it writes anything, refuses
//! while the circle is served anywhere (naming the owner), never replaces a
//! database, key file or init script that is there, and removes what it
//! wrote if a later step fails. The init script is stored for reference and
//! for later installs but is not run again: its effects are in the database.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use circles_dispatcher::protocol::DEFAULT_MAX_SCRIPT_BYTES;
use circles_dispatcher::task::now_rfc3339;
use circles_dispatcher::{CircleOwner, CirclePublicKey, Dispatcher};
use circles_worker::CircleStore;
use circles_worker::store::{
    BoundedLines, MAX_RECORD_LINE, RecordCounts, StoreRecord, database_file_name,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use circles_services::{BackendKind, HostEnv, ServiceScope};

use crate::cli::{CommonArgs, DEFAULT_DATA_DIR};
use crate::error::LaunchError;
use crate::settings::{
    StoredKey, is_valid_circle_name, key_file, load_key_file, short_name, write_atomically,
};

/// First field of every backup's header.
pub const BACKUP_FORMAT: &str = "circles-backup";
/// The version of the format this launcher writes and reads.
pub const BACKUP_VERSION: u32 = 1;
/// Subdirectory of the data directory holding init scripts of restored circles.
pub const INIT_DIR: &str = "init";

/// Where a circle's database lies in a data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DbLayout {
    /// Direct mode: `<data>/circle_db_<pk>.redb`.
    Direct,
    /// Service mode: `<data>/db/<pk>/circle_db_<pk>.redb`, the one
    /// directory the circle's service may write.
    Service,
}

impl DbLayout {
    /// The database file of `key` under `data_dir`.
    pub fn database(self, data_dir: &Path, key: &CirclePublicKey) -> PathBuf {
        let dir = match self {
            Self::Direct => data_dir.to_path_buf(),
            Self::Service => crate::service_mode::db_dir(data_dir, key),
        };
        dir.join(database_file_name(&key.to_hex()))
    }
}

/// One line of a backup file.
#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    /// Always first.
    Header(Header),
    /// The circle's generated key file, when there is one.
    KeyFile(StoredKey),
    /// Its init script, when known.
    InitScript {
        /// The file name it had (for people; never used as a path).
        file_name: String,
        /// Its text.
        source: String,
    },
    /// A database counter (see [`StoreRecord`]).
    Counter { collection: String, last_id: u64 },
    /// A database value (see [`StoreRecord`]).
    Value { key: String, json: String },
    /// Always last.
    End {
        /// Values before it.
        values: u64,
        /// Counters before it.
        counters: u64,
        /// SHA-256 (hex) of every byte before this line.
        sha256: String,
    },
}

/// What a backup says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// [`BACKUP_FORMAT`].
    pub format: String,
    /// [`BACKUP_VERSION`].
    pub version: u32,
    /// The circle (canonical hex).
    pub circle: String,
    /// Its name, when it has one (circles.json circles).
    pub name: Option<String>,
    /// When the backup was taken (RFC 3339).
    pub created_at: String,
    /// The host it was taken on.
    pub host: String,
    /// Where the database came from: `live worker pid P` or `database file`.
    pub source: String,
    /// The launcher version that wrote it.
    pub launcher_version: String,
}

/// What `launcher backup` is asked to do.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    /// Circle key or name.
    pub circle: String,
    /// The file to write.
    pub output: PathBuf,
    /// Replace `output` if it exists.
    pub force: bool,
    /// An init script to include (else the one a restore stored, if any).
    pub init_script: Option<PathBuf>,
    /// Data directories to look for the circle in, in order (absolute; see
    /// [`backup_data_dirs`]).
    pub data_dirs: Vec<PathBuf>,
    /// Redis to ask where the circle runs.
    pub redis_url: String,
    /// How long a live worker may take to write its snapshot.
    pub timeout: Duration,
}

/// What a backup wrote.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// The backup file.
    pub file: PathBuf,
    /// Its header.
    pub header: Header,
    /// Database records in it.
    pub records: RecordCounts,
    /// Whether it holds the circle's key file.
    pub key_file: bool,
    /// Whether it holds an init script.
    pub init_script: bool,
    /// Its size in bytes.
    pub bytes: u64,
}

/// A circle as found in a data directory.
struct LocalCircle {
    key: CirclePublicKey,
    name: Option<String>,
    stored_key: Option<StoredKey>,
    /// The data directory it was found in.
    data_dir: PathBuf,
}

/// Writes a backup of one circle; see the module docs.
pub async fn backup(req: &BackupRequest) -> Result<BackupReport, LaunchError> {
    let circle = find_circle(&req.data_dirs, &req.circle)?;
    let init = match &req.init_script {
        Some(path) => Some(read_init_script(path)?),
        None => {
            let stored = init_script_path(&circle.data_dir, &circle);
            stored
                .is_file()
                .then(|| read_init_script(&stored))
                .transpose()?
        }
    };
    if req.output.exists() && !req.force {
        return Err(backup_err(
            &req.output,
            "already exists; pass --force to replace it".into(),
        ));
    }
    let output_dir = req
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !output_dir.is_dir() {
        return Err(backup_err(
            &req.output,
            format!("its directory {} does not exist", output_dir.display()),
        ));
    }

    let me = circles_worker::lease::host_name();
    let owner = match Dispatcher::connect(&req.redis_url, "launcher-backup").await {
        Ok(d) => Some((
            circles_dispatcher::fleet::read_owner(&mut d.connection(), &circle.key).await?,
            d,
        )),
        Err(e) => {
            // The file lock still keeps a local worker's writes out of a
            // copy; only a worker elsewhere cannot be seen.
            tracing::warn!(
                "{e}; backing up the database file without asking Redis who serves the circle"
            );
            None
        }
    };
    let mut header = Header {
        format: BACKUP_FORMAT.into(),
        version: BACKUP_VERSION,
        circle: circle.key.to_hex(),
        name: circle.name.clone(),
        created_at: now_rfc3339(),
        host: me.clone(),
        source: "database file".into(),
        launcher_version: env!("CARGO_PKG_VERSION").into(),
    };
    let mut writer = BackupWriter::create(&req.output)?;
    let write = |w: &mut BackupWriter, line: &Line| {
        w.line(line)
            .map_err(|e| backup_err(&req.output, e.to_string()))
    };
    let result: Result<RecordCounts, LaunchError> = async {
        let snapshot = match owner {
            Some((Some(owner), _)) if owner.host != me => {
                return Err(LaunchError::CircleServed {
                    circle: circle.key.to_hex(),
                    host: owner.host,
                    pid: owner.pid,
                    hint: "run `launcher backup` on that host: the database is there".into(),
                });
            }
            Some((Some(owner), dispatcher)) => {
                let report = dispatcher
                    .snapshot(&circle.key, req.timeout)
                    .await
                    .map_err(|e| snapshot_err(&circle.key, e))?;
                if report.host != me {
                    return Err(LaunchError::CircleServed {
                        circle: circle.key.to_hex(),
                        host: report.host,
                        pid: owner.pid,
                        hint: "its snapshot was written there; run `launcher backup` on that host"
                            .into(),
                    });
                }
                header.source = format!("live worker pid {}", owner.pid);
                Some(report)
            }
            _ => None,
        };
        write(&mut writer, &Line::Header(header.clone()))?;
        if let Some(stored) = &circle.stored_key {
            write(&mut writer, &Line::KeyFile(stored.clone()))?;
        }
        if let Some((file_name, source)) = &init {
            write(
                &mut writer,
                &Line::InitScript {
                    file_name: file_name.clone(),
                    source: source.clone(),
                },
            )?;
        }
        match snapshot {
            Some(report) => {
                let path = PathBuf::from(&report.file);
                let copied = copy_snapshot(&path, |record| write(&mut writer, &record.into()));
                // The snapshot is ours to delete, read or not.
                let _ = std::fs::remove_file(&path);
                let counts = copied?;
                if counts.values != report.values || counts.counters != report.counters {
                    return Err(backup_err(
                        &req.output,
                        format!(
                            "the worker's snapshot {} holds {} values and {} counters, not the {} and {} it reported",
                            path.display(),
                            counts.values,
                            counts.counters,
                            report.values,
                            report.counters
                        ),
                    ));
                }
                Ok(counts)
            }
            None => {
                // Service mode's place first: a directory left by direct
                // mode before services were installed is older.
                let candidates: Vec<PathBuf> = req
                    .data_dirs
                    .iter()
                    .flat_map(|dir| {
                        [DbLayout::Service, DbLayout::Direct]
                            .map(|layout| layout.database(dir, &circle.key))
                    })
                    .collect();
                let Some(db) = candidates.iter().find(|p| p.is_file()).cloned() else {
                    return Err(LaunchError::NoDatabase {
                        circle: circle.key.to_hex(),
                        looked_in: candidates,
                    });
                };
                let mut failed = None;
                let counts = circles_worker::store::export_file(&db, |record| {
                    write(&mut writer, &record.into()).map_err(|e| {
                        let message = e.to_string();
                        failed = Some(e);
                        std::io::Error::other(message)
                    })
                });
                if let Some(e) = failed {
                    return Err(e);
                }
                counts.map_err(LaunchError::Store)
            }
        }
    }
    .await;
    let counts = match result {
        Ok(c) => c,
        Err(e) => {
            writer.abandon();
            return Err(e);
        }
    };
    let bytes = writer
        .finish(counts, &req.output)
        .map_err(|e| backup_err(&req.output, e.to_string()))?;
    Ok(BackupReport {
        file: req.output.clone(),
        header,
        records: counts,
        key_file: circle.stored_key.is_some(),
        init_script: init.is_some(),
        bytes,
    })
}

/// The error for a snapshot a live worker could not give.
fn snapshot_err(circle: &CirclePublicKey, e: circles_dispatcher::DispatchError) -> LaunchError {
    use circles_dispatcher::DispatchError;
    match e {
        DispatchError::ScriptError { message, .. } if message.contains("has no script") => {
            LaunchError::Snapshot {
                circle: circle.to_hex(),
                reason: "its worker is too old to take snapshots; stop it, then back up its database file".into(),
            }
        }
        DispatchError::ScriptError { message, .. } => LaunchError::Snapshot {
            circle: circle.to_hex(),
            reason: message,
        },
        e => LaunchError::Dispatch(e),
    }
}

/// Copies the records of a worker's snapshot file into `each`.
fn copy_snapshot(
    path: &Path,
    mut each: impl FnMut(StoreRecord) -> Result<(), LaunchError>,
) -> Result<RecordCounts, LaunchError> {
    let file = std::fs::File::open(path).map_err(|e| {
        LaunchError::io(
            format!(
                "reading the worker's snapshot {} (does this launcher run as the worker's user, on its host?)",
                path.display()
            ),
            e,
        )
    })?;
    let mut counts = RecordCounts::default();
    for record in circles_worker::store::read_records(BufReader::new(file)) {
        let record = record.map_err(|message| LaunchError::Snapshot {
            circle: String::new(),
            reason: format!("snapshot {}: {message}", path.display()),
        })?;
        match record {
            StoreRecord::Counter { .. } => counts.counters += 1,
            StoreRecord::Value { .. } => counts.values += 1,
        }
        each(record)?;
    }
    Ok(counts)
}

impl From<StoreRecord> for Line {
    fn from(record: StoreRecord) -> Self {
        match record {
            StoreRecord::Counter {
                collection,
                last_id,
            } => Line::Counter {
                collection,
                last_id,
            },
            StoreRecord::Value { key, json } => Line::Value { key, json },
        }
    }
}

/// A backup being written: a 0600 temporary file beside the target, hashed
/// as it goes, renamed over the target once complete.
struct BackupWriter {
    tmp: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    hash: Sha256,
}

impl BackupWriter {
    fn create(target: &Path) -> Result<Self, LaunchError> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            target
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| backup_err(target, format!("cannot create {}: {e}", tmp.display())))?;
        Ok(Self {
            tmp,
            out: std::io::BufWriter::new(file),
            hash: Sha256::new(),
        })
    }

    fn line(&mut self, line: &Line) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec(line)?;
        bytes.push(b'\n');
        self.hash.update(&bytes);
        self.out.write_all(&bytes)
    }

    /// Writes the end line, syncs and moves the file into place.
    fn finish(mut self, counts: RecordCounts, target: &Path) -> std::io::Result<u64> {
        let result = (|| {
            let sha256 = hex::encode(self.hash.clone().finalize());
            let end = Line::End {
                values: counts.values,
                counters: counts.counters,
                sha256,
            };
            let mut bytes = serde_json::to_vec(&end)?;
            bytes.push(b'\n');
            self.out.write_all(&bytes)?;
            let file = self.out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            let bytes = file.metadata()?.len();
            std::fs::rename(&self.tmp, target)?;
            Ok(bytes)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        result
    }

    fn abandon(self) {
        drop(self.out);
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn backup_err(path: &Path, message: String) -> LaunchError {
    LaunchError::Backup {
        path: path.to_path_buf(),
        message,
    }
}

/// Finds a circle by key or name in the first of `data_dirs` that knows
/// it: its name and key file from `keys/`, else its name from
/// `services.json`. A key nobody knows is still a circle (found in the first
/// directory), to be looked for by its database.
fn find_circle(data_dirs: &[PathBuf], given: &str) -> Result<LocalCircle, LaunchError> {
    let first = data_dirs
        .first()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("."));
    if let Ok(key) = CirclePublicKey::parse(given) {
        for dir in data_dirs {
            let found = key_files(dir)
                .find(|(_, k)| k.public_key.eq_ignore_ascii_case(&key.to_hex()))
                .map(|(_, k)| k);
            let recorded = crate::service_record::ServiceRecord::load(dir)
                .circles
                .get(&key.to_hex())
                .map(|c| c.name.clone());
            let name = found
                .as_ref()
                .map(|k| k.name.clone())
                .or(recorded)
                .filter(|n| is_valid_circle_name(n));
            let has_db = [DbLayout::Service, DbLayout::Direct]
                .iter()
                .any(|l| l.database(dir, &key).is_file());
            if name.is_some() || has_db {
                return Ok(LocalCircle {
                    key,
                    name,
                    stored_key: found,
                    data_dir: dir.clone(),
                });
            }
        }
        return Ok(LocalCircle {
            key,
            name: None,
            stored_key: None,
            data_dir: first,
        });
    }
    let unknown = || LaunchError::UnknownCircle {
        given: circles_dispatcher::text::clip(given, 80).into_owned(),
        data_dirs: data_dirs.to_vec(),
    };
    if !is_valid_circle_name(given) {
        return Err(unknown());
    }
    for dir in data_dirs {
        let path = key_file(dir, given);
        if path.exists() {
            let (stored, key) = load_key_file(&path)?;
            return Ok(LocalCircle {
                key,
                name: Some(given.to_string()),
                stored_key: Some(stored),
                data_dir: dir.clone(),
            });
        }
        let record = crate::service_record::ServiceRecord::load(dir);
        if let Some(key) = record
            .circles
            .iter()
            .find(|(_, c)| c.name == given)
            .and_then(|(k, _)| k.parse().ok())
        {
            return Ok(LocalCircle {
                key,
                name: Some(given.to_string()),
                stored_key: None,
                data_dir: dir.clone(),
            });
        }
    }
    Err(unknown())
}

/// Valid key files in `<data>/keys/` (at most a few thousand are looked at).
fn key_files(data_dir: &Path) -> impl Iterator<Item = (PathBuf, StoredKey)> {
    std::fs::read_dir(data_dir.join("keys"))
        .into_iter()
        .flatten()
        .flatten()
        .take(10_000)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| load_key_file(&p).ok().map(|(k, _)| (p, k)))
}

/// `<data>/init/<name>.rhai` (`circle-<8 hex>` for circles without a name).
fn init_script_path(data_dir: &Path, circle: &LocalCircle) -> PathBuf {
    let name = circle
        .name
        .clone()
        .unwrap_or_else(|| short_name(&circle.key));
    data_dir.join(INIT_DIR).join(format!("{name}.rhai"))
}

/// An init script: its file name and text, refused over the script limit.
fn read_init_script(path: &Path) -> Result<(String, String), LaunchError> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| LaunchError::io(format!("reading init script {}", path.display()), e))?;
    if source.len() > DEFAULT_MAX_SCRIPT_BYTES {
        return Err(LaunchError::io(
            format!("reading init script {}", path.display()),
            std::io::Error::other(format!(
                "it is {} bytes, over the script limit of {DEFAULT_MAX_SCRIPT_BYTES}",
                source.len()
            )),
        ));
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((file_name, source))
}

/// What `launcher restore` is asked to do.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// The backup file.
    pub file: PathBuf,
    /// The data directory to restore into (absolute).
    pub data_dir: PathBuf,
    /// Where in it the database goes: where the mode that will run the
    /// circle looks for it.
    pub layout: DbLayout,
    /// Redis, to check that the circle runs nowhere.
    pub redis_url: String,
}

/// What a restore wrote.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The backup's header.
    pub header: Header,
    /// The data directory restored into.
    pub data_dir: PathBuf,
    /// Where in it the database went.
    pub layout: DbLayout,
    /// The database file written.
    pub database: PathBuf,
    /// Records in it.
    pub records: RecordCounts,
    /// The key file, if the backup had one (written, or already there and identical).
    pub key_file: Option<PathBuf>,
    /// The init script, if the backup had one.
    pub init_script: Option<PathBuf>,
}

/// What pass one learnt of a backup file.
struct Checked {
    header: Header,
    key: CirclePublicKey,
    stored_key: Option<StoredKey>,
    init: Option<String>,
    counts: RecordCounts,
}

/// Restores a backup into the data directory; see the module docs.
pub async fn restore(req: &RestoreRequest) -> Result<RestoreReport, LaunchError> {
    // 1. The whole file, before anything else.
    let checked = check_backup(&req.file)?;
    let key = checked.key;
    let local = LocalCircle {
        key,
        name: checked.header.name.clone(),
        stored_key: checked.stored_key.clone(),
        data_dir: req.data_dir.clone(),
    };

    // 2. Served anywhere? A restore next to a live owner would fork the
    // circle's state.
    let dispatcher = Dispatcher::connect(&req.redis_url, "launcher-restore").await?;
    if let Some(owner) =
        circles_dispatcher::fleet::read_owner(&mut dispatcher.connection(), &key).await?
    {
        return Err(served(
            &key,
            owner,
            "stop it there first (and keep it stopped)",
        ));
    }

    // 3. Nothing of this host's is replaced.
    let database = req.layout.database(&req.data_dir, &key);
    if database.exists() {
        return Err(restore_err(
            &req.file,
            format!(
                "a database of circle {key} is already at {}; move it away first (a restore never replaces one)",
                database.display()
            ),
        ));
    }
    let key_target = match (&checked.stored_key, &local.name) {
        (Some(stored), Some(name)) => {
            let path = key_file(&req.data_dir, name);
            let write = match load_key_file(&path) {
                Err(_) if !path.exists() => true,
                Ok((there, _)) if there.secret_key == stored.secret_key => false,
                _ => {
                    return Err(restore_err(
                        &req.file,
                        format!(
                            "{} holds another circle's key; the name `{name}` is taken in this data directory",
                            path.display()
                        ),
                    ));
                }
            };
            Some((path, write))
        }
        _ => None,
    };
    let init_target = match &checked.init {
        Some(source) => {
            let path = init_script_path(&req.data_dir, &local);
            let write = match std::fs::read_to_string(&path) {
                Err(_) if !path.exists() => true,
                Ok(there) if &there == source => false,
                _ => {
                    return Err(restore_err(
                        &req.file,
                        format!(
                            "{} exists with another script; move it away first",
                            path.display()
                        ),
                    ));
                }
            };
            Some((path, write))
        }
        None => None,
    };

    // 4. Write: the database (built aside, linked into place), then the
    // key file and the init script; undone in reverse if a step fails.
    let mut written: Vec<PathBuf> = Vec::new();
    // Directories this restore will create, deepest last, to take away
    // again (when empty) if it fails.
    let mut created_dirs: Vec<PathBuf> = Vec::new();
    for target in std::iter::once(&database)
        .chain(key_target.iter().map(|(p, _)| p))
        .chain(init_target.iter().map(|(p, _)| p))
    {
        for dir in target
            .ancestors()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            if !dir.exists() && !created_dirs.iter().any(|d| d == dir) {
                created_dirs.push(dir.to_path_buf());
            }
        }
    }
    let result = (|| {
        let records = read_backup_records(&req.file)?;
        let counts = CircleStore::import(&database, records)?;
        written.push(database.clone());
        if counts != checked.counts {
            return Err(restore_err(
                &req.file,
                "the file changed while it was being restored".into(),
            ));
        }
        if let (Some((path, true)), Some(stored)) = (&key_target, &checked.stored_key) {
            crate::settings::write_key_file(path, stored)?;
            written.push(path.clone());
        }
        if let (Some((path, true)), Some(source)) = (&init_target, &checked.init) {
            write_atomically(path, source.as_bytes(), 0o644)
                .map_err(|e| LaunchError::io(format!("writing {}", path.display()), e))?;
            written.push(path.clone());
        }
        Ok(counts)
    })();
    let records = match result {
        Ok(c) => c,
        Err(e) => {
            for path in written.iter().rev() {
                let _ = std::fs::remove_file(path);
            }
            for dir in created_dirs.iter().rev() {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(e);
        }
    };
    Ok(RestoreReport {
        header: checked.header,
        data_dir: req.data_dir.clone(),
        layout: req.layout,
        database,
        records,
        key_file: key_target.map(|(p, _)| p),
        init_script: init_target.map(|(p, _)| p),
    })
}

fn served(key: &CirclePublicKey, owner: CircleOwner, hint: &str) -> LaunchError {
    LaunchError::CircleServed {
        circle: key.to_hex(),
        host: owner.host,
        pid: owner.pid,
        hint: hint.to_string(),
    }
}

fn restore_err(path: &Path, message: String) -> LaunchError {
    LaunchError::Restore {
        path: path.to_path_buf(),
        message,
    }
}

/// Pass one: reads the whole backup and checks everything a restore relies
/// on, writing nothing.
fn check_backup(path: &Path) -> Result<Checked, LaunchError> {
    let err = |message: String| restore_err(path, message);
    let file = std::fs::File::open(path).map_err(|e| err(format!("cannot open it: {e}")))?;
    let mut lines = BackupLines::new(BufReader::new(file));
    let header = match lines.next_line().map_err(&err)? {
        Some(Line::Header(h)) => h,
        _ => {
            return Err(err(format!(
                "not a circles backup (it does not start with a {BACKUP_FORMAT} header)"
            )));
        }
    };
    if header.format != BACKUP_FORMAT {
        return Err(err(format!(
            "not a circles backup (format `{}`)",
            circles_dispatcher::text::clip(&header.format, 40)
        )));
    }
    if header.version != BACKUP_VERSION {
        return Err(err(format!(
            "backup format version {} is not one this launcher reads ({BACKUP_VERSION}); use a matching launcher",
            header.version
        )));
    }
    let key =
        CirclePublicKey::parse_exact(&header.circle).map_err(|e| err(format!("header: {e}")))?;
    if let Some(name) = &header.name
        && !is_valid_circle_name(name)
    {
        return Err(err(format!(
            "header: circle name `{}` is not a valid name",
            circles_dispatcher::text::clip(name, 80)
        )));
    }
    let mut stored_key = None;
    let mut init = None;
    let mut counts = RecordCounts::default();
    let mut last_counter: Option<String> = None;
    let mut last_value: Option<String> = None;
    let mut stage = 0u8; // 0 key file, 1 init script, 2 counters, 3 values
    loop {
        let hash_before = lines.hash.clone();
        let line = match lines.next_line().map_err(&err)? {
            Some(line) => line,
            None => {
                return Err(err(format!(
                    "it ends after line {} without its end line (truncated?)",
                    lines.number()
                )));
            }
        };
        let n = lines.number();
        match line {
            Line::Header(_) => return Err(err(format!("line {n}: a second header"))),
            Line::KeyFile(stored) if stage == 0 => {
                let derived = stored
                    .check()
                    .map_err(|e| err(format!("line {n}: key file: {e}")))?;
                if derived != key {
                    return Err(err(format!(
                        "line {n}: the key file is for circle {derived}, not {key}"
                    )));
                }
                if header.name.as_deref() != Some(stored.name.as_str()) {
                    return Err(err(format!(
                        "line {n}: the key file names circle `{}`, the header {:?}",
                        circles_dispatcher::text::clip(&stored.name, 80),
                        header.name
                    )));
                }
                stored_key = Some(stored);
                stage = 1;
            }
            Line::InitScript { source, .. } if stage <= 1 => {
                if source.len() > DEFAULT_MAX_SCRIPT_BYTES {
                    return Err(err(format!(
                        "line {n}: the init script is {} bytes, over the script limit of {DEFAULT_MAX_SCRIPT_BYTES}",
                        source.len()
                    )));
                }
                init = Some(source);
                stage = 2;
            }
            Line::Counter { collection, .. } if stage <= 2 => {
                if last_counter.as_ref().is_some_and(|l| *l >= collection) {
                    return Err(err(format!(
                        "line {n}: counters out of order or repeated (`{}`)",
                        circles_dispatcher::text::clip(&collection, 80)
                    )));
                }
                last_counter = Some(collection);
                counts.counters += 1;
                stage = 2;
            }
            Line::Value { key: k, json } if stage <= 3 => {
                if last_value.as_ref().is_some_and(|l| *l >= k) {
                    return Err(err(format!(
                        "line {n}: values out of order or repeated (`{}`)",
                        circles_dispatcher::text::clip(&k, 80)
                    )));
                }
                if serde_json::from_str::<serde::de::IgnoredAny>(&json).is_err() {
                    return Err(err(format!(
                        "line {n}: the value of `{}` is not JSON",
                        circles_dispatcher::text::clip(&k, 80)
                    )));
                }
                last_value = Some(k);
                counts.values += 1;
                stage = 3;
            }
            Line::End {
                values,
                counters,
                sha256,
            } => {
                if hex::encode(hash_before.finalize()) != sha256 {
                    return Err(err(
                        "its checksum does not match: the file was damaged or altered".into(),
                    ));
                }
                if (values, counters) != (counts.values, counts.counters) {
                    return Err(err(format!(
                        "it says {values} values and {counters} counters but holds {} and {}",
                        counts.values, counts.counters
                    )));
                }
                if lines.next_line().map_err(&err)?.is_some() {
                    return Err(err(format!("line {}: something after the end line", n + 1)));
                }
                return Ok(Checked {
                    header,
                    key,
                    stored_key,
                    init,
                    counts,
                });
            }
            _ => return Err(err(format!("line {n}: out of order"))),
        }
    }
}

/// Pass two: the database records of a backup checked by [`check_backup`],
/// for [`CircleStore::import`]. Its checksum is checked again at the end,
/// so a file changed between the passes aborts the import.
fn read_backup_records(
    path: &Path,
) -> Result<impl Iterator<Item = Result<StoreRecord, String>>, LaunchError> {
    let file =
        std::fs::File::open(path).map_err(|e| restore_err(path, format!("cannot open it: {e}")))?;
    let mut lines = BackupLines::new(BufReader::new(file));
    let mut done = false;
    Ok(std::iter::from_fn(move || {
        if done {
            return None;
        }
        loop {
            let before = lines.hash.clone();
            match lines.next_line() {
                Ok(Some(Line::Counter {
                    collection,
                    last_id,
                })) => {
                    return Some(Ok(StoreRecord::Counter {
                        collection,
                        last_id,
                    }));
                }
                Ok(Some(Line::Value { key, json })) => {
                    return Some(Ok(StoreRecord::Value { key, json }));
                }
                Ok(Some(Line::End { sha256, .. })) => {
                    done = true;
                    return (hex::encode(before.finalize()) != sha256)
                        .then(|| Err("the file changed while it was being restored".into()));
                }
                Ok(Some(_)) => continue,
                Ok(None) => {
                    done = true;
                    return Some(Err("the file ended early".into()));
                }
                Err(e) => {
                    done = true;
                    return Some(Err(e));
                }
            }
        }
    }))
}

/// Parsed lines of a backup, hashing the bytes of each line as it is read.
struct BackupLines<R> {
    lines: BoundedLines<R>,
    hash: Sha256,
    number: u64,
}

impl<R: BufRead> BackupLines<R> {
    fn new(input: R) -> Self {
        Self {
            lines: BoundedLines::new(input, MAX_RECORD_LINE),
            hash: Sha256::new(),
            number: 0,
        }
    }

    fn number(&self) -> u64 {
        self.number
    }

    fn next_line(&mut self) -> Result<Option<Line>, String> {
        let Some(next) = self.lines.next_line() else {
            return Ok(None);
        };
        let (n, bytes) = next?;
        self.number = n;
        self.hash.update(&bytes);
        self.hash.update(b"\n");
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("line {n}: not a backup line: {e}"))
    }
}

/// The Redis to ask: `--redis-url`/`REDIS_URL`, else the one the services
/// of `data_dir` were installed with, else the default.
pub fn redis_url(common: &CommonArgs, data_dir: &Path) -> String {
    crate::service_record::ServiceRecord::load(data_dir)
        .redis_url(common)
        .expose_secret()
        .to_string()
}

/// Where `launcher backup` looks for a circle: `--data-dir`, else service
/// mode's default place for this user (system or user services, as
/// `--system`/`--user` or being root choose), then direct mode's
/// `./launch_data`.
pub fn backup_data_dirs(common: &CommonArgs) -> Result<Vec<PathBuf>, LaunchError> {
    if let Some(dir) = &common.data_dir {
        return Ok(vec![absolute(dir)?]);
    }
    let mut dirs = vec![service_data_dir(common)?];
    dirs.push(absolute(Path::new(DEFAULT_DATA_DIR))?);
    Ok(dirs)
}

/// Where `launcher restore` writes: `--data-dir`, else service mode's
/// default place (`service`) or direct mode's `./launch_data`.
pub fn restore_data_dir(common: &CommonArgs, service: bool) -> Result<PathBuf, LaunchError> {
    match (&common.data_dir, service) {
        (Some(dir), _) => absolute(dir),
        (None, true) => service_data_dir(common),
        (None, false) => absolute(Path::new(DEFAULT_DATA_DIR)),
    }
}

/// Service mode's default data directory for these flags, without asking
/// the service manager anything.
fn service_data_dir(common: &CommonArgs) -> Result<PathBuf, LaunchError> {
    let scope = if common.system {
        ServiceScope::System
    } else if common.user || HostEnv::from_process().euid != 0 {
        ServiceScope::User
    } else {
        ServiceScope::System
    };
    let kind = if cfg!(target_os = "macos") {
        BackendKind::Launchd
    } else {
        BackendKind::Systemd
    };
    crate::service_mode::default_data_dir(kind, scope)
}

fn absolute(dir: &Path) -> Result<PathBuf, LaunchError> {
    std::path::absolute(dir).map_err(|source| LaunchError::DataDir {
        path: dir.to_path_buf(),
        source,
    })
}

impl BackupReport {
    /// What people read after a backup.
    pub fn summary(&self) -> String {
        let h = &self.header;
        let mut extras = Vec::new();
        if self.key_file {
            extras.push("its key file (secret: keep the backup private)");
        }
        if self.init_script {
            extras.push("its init script");
        }
        format!(
            "backed up circle {}{} from the {} on {}: {}{}{}\n  → {} ({} bytes, mode 0600)",
            h.name
                .as_deref()
                .map(|n| format!("{n} "))
                .unwrap_or_default(),
            h.circle,
            h.source,
            h.host,
            self.records,
            if extras.is_empty() { "" } else { ", " },
            extras.join(", "),
            self.file.display(),
            self.bytes
        )
    }
}

impl RestoreReport {
    /// What people read after a restore: what was written, and how to start
    /// the circle here.
    pub fn summary(&self) -> String {
        let h = &self.header;
        let key = &h.circle;
        let dir = self.data_dir.display();
        let mut out = format!(
            "restored circle {}{key} (backed up on {} at {})\n  database     {} ({})\n",
            h.name
                .as_deref()
                .map(|n| format!("{n} "))
                .unwrap_or_default(),
            h.host,
            h.created_at,
            self.database.display(),
            self.records,
        );
        if let Some(path) = &self.key_file {
            out.push_str(&format!("  key file     {}\n", path.display()));
        }
        if let Some(path) = &self.init_script {
            out.push_str(&format!(
                "  init script  {} (kept for reference; not run again: its effects are in the database)\n",
                path.display()
            ));
        }
        let data = format!("--data-dir {dir} ");
        let start = match self.layout {
            DbLayout::Direct => format!("launcher {data}-c {key}"),
            DbLayout::Service => {
                format!("launcher --use-service-manager --worker-binary PATH {data}-c {key}")
            }
        };
        out.push_str(&format!(
            "start it on this host (the lease keeps any other worker of it away):\n  {start}\n"
        ));
        if let (Some(name), Some(_)) = (&h.name, &self.key_file) {
            out.push_str(&format!(
                "  or list {{\"name\": \"{name}\", \"port\": PORT}} in a circles.json run with --data-dir {dir} (its key is in keys/{name}.json)\n"
            ));
        }
        out
    }
}
