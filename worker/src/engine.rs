//! The Rhai engine a worker runs every task in.
//!
//! One engine is built per worker and reused for every task: building an
//! `Engine` costs about as much as a whole Redis round trip, and compiled
//! scripts are cached by their text, so a repeated script is not parsed again.
//!
//! Scripts see two constants, `CONTEXT_ID` (the circle's key) and `CALLER_ID`
//! (who submitted the task), and the circle database API:
//!
//! | function | does |
//! |---|---|
//! | `db_get(key)` | the value stored under `key`, or `()` |
//! | `db_set(key, value)` | stores any value made of strings, numbers, bools, arrays, maps |
//! | `db_delete(key)` | removes `key`; `true` if it existed |
//! | `db_list(prefix)` | a map of every key starting with `prefix` to its value |
//! | `db_keys(prefix)` | the keys starting with `prefix`, in order |
//! | `db_insert(collection, value)` | stores under `"<collection>:<id>"` with the next id (1, 2, …) and returns the id |
//!
//! Runaway scripts are stopped by the limits in [`Limits`]; the error names
//! the limit that was hit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use circles_dispatcher::protocol::DEFAULT_MAX_SCRIPT_BYTES;
use rhai::{AST, Dynamic, Engine, EvalAltResult, ModuleResolver, Position, Scope};

use crate::memory;
use crate::store::{CircleStore, Listing};

/// Script limits. Every one of them ends a task with an error naming it,
/// and the worker goes on to the next task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Rhai operations per task.
    pub max_operations: u64,
    /// Nested function calls.
    pub max_call_levels: usize,
    /// Bytes in one string.
    pub max_string_size: usize,
    /// Elements in one array.
    pub max_array_size: usize,
    /// Entries in one object map.
    pub max_map_size: usize,
    /// Wall time per task; a task's own `timeout_secs` may lower it.
    pub max_wall_time: Duration,
    /// Heap a task may add to the worker, in bytes (0: unlimited). See
    /// [`crate::memory`].
    pub max_memory: usize,
    /// Bytes of script source a task may carry.
    pub max_script_size: usize,
    /// Bytes of output a task may return.
    pub max_output_size: usize,
    /// Bytes a task may write through `print`/`debug`; the rest is dropped
    /// with one note in the log.
    pub max_log_output: usize,
    /// How deeply arrays and maps may nest in a value that is stored or
    /// returned (the same limit applies when reading it back).
    pub max_value_depth: usize,
    /// Size the circle database may grow to, in bytes (0: unlimited):
    /// writes past it fail, reads and deletes go on.
    pub max_db_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_operations: 100_000_000,
            max_call_levels: 64,
            max_string_size: 1024 * 1024,
            max_array_size: 100_000,
            max_map_size: 100_000,
            max_wall_time: Duration::from_secs(30),
            max_memory: 256 * 1024 * 1024,
            max_script_size: DEFAULT_MAX_SCRIPT_BYTES,
            max_output_size: 4 * 1024 * 1024,
            max_log_output: 64 * 1024,
            max_value_depth: 32,
            max_db_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// Compiled scripts are cached by their text up to this many bytes of heap
/// in all (text and compiled form, measured as compiled); the cache is
/// emptied when a new entry would pass it. Measured, not counted in source
/// bytes: a script compiles to ~100 times its text, and 8 MiB of cached
/// source was ~800 MiB, past the worker's memory ceiling.
const AST_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Scripts longer than this, or bigger than [`AST_CACHE_MAX_ENTRY`]
/// compiled, are compiled every time rather than cached: big one-off
/// scripts would only push the small repeated ones out.
const AST_CACHE_MAX_SCRIPT: usize = 64 * 1024;
const AST_CACHE_MAX_ENTRY: usize = 1024 * 1024;
/// The wall clock (the kernel's coarse clock, a few nanoseconds to read)
/// is read every this many operations: every one cost a tight loop ~10%,
/// and every 1,024 let slow native operations (comparing arrays of
/// megabyte strings, ~0.15 s each) run ten times the wall time.
const WALL_CLOCK_CHECK_EVERY: u64 = 16;
/// The values a terminated script carries, telling the limits apart.
const WALL_TIME_TOKEN: &str = "circles:wall-time";
const MEMORY_TOKEN: &str = "circles:memory";
const OPERATIONS_TOKEN: &str = "circles:operations";
const STRING_SIZE_TOKEN: &str = "circles:string-size";
/// Which limit stopped the task ([`TaskMeter::tripped`]).
const TRIPPED_NONE: u8 = 0;
const TRIPPED_WALL_TIME: u8 = 1;
const TRIPPED_MEMORY: u8 = 2;
const TRIPPED_OPERATIONS: u8 = 3;
const TRIPPED_STRING_SIZE: u8 = 4;

/// What the engine's callbacks know about the running task. Tasks run one at
/// a time, so one set of slots suffices.
#[derive(Debug)]
struct TaskMeter {
    /// Deadline on [`coarse_clock_nanos`].
    deadline_nanos: AtomicU64,
    /// Operations the task ran, counted here: Rhai's own count starts
    /// afresh in some native calls (a `sort` comparator's), and the
    /// operations limit must hold across them.
    operations: AtomicU64,
    /// The limit that stopped the task, once one did (`TRIPPED_*`). It
    /// stays set: every later operation is stopped too, because some
    /// native functions (`sort` with a comparator) swallow the error of a
    /// call and go on, and the task must still end as that limit's error.
    tripped: AtomicU8,
    /// Heap in use when the task started; the budget is counted from here.
    memory_baseline: AtomicUsize,
    /// Highest heap use seen during the task, for releasing memory after.
    memory_peak: AtomicUsize,
    /// Bytes of print/debug output the task wrote so far.
    log_bytes: AtomicUsize,
}

/// The Rhai engine bound to one circle's store.
pub struct ScriptEngine {
    engine: Engine,
    limits: Limits,
    meter: Arc<TaskMeter>,
    cache: Mutex<AstCache>,
}

/// Compiled scripts by source text, bounded in heap bytes.
#[derive(Default)]
struct AstCache {
    entries: HashMap<String, Arc<AST>>,
    bytes: usize,
}

impl std::fmt::Debug for ScriptEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptEngine")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Refuses every `import`: scripts reach nothing outside their circle, and
/// the error is the same whether or not a file of that name exists, so it
/// reveals nothing about the host either.
#[derive(Debug, Clone, Copy)]
struct NoModules;

impl ModuleResolver for NoModules {
    fn resolve(
        &self,
        _engine: &Engine,
        _source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<rhai::Shared<rhai::Module>, Box<EvalAltResult>> {
        Err(Box::new(EvalAltResult::ErrorRuntime(
            format!(
                "cannot import `{}`: scripts cannot load modules",
                circles_dispatcher::text::clip(path, 80)
            )
            .into(),
            pos,
        )))
    }
}

impl ScriptEngine {
    /// Builds the engine with `limits` and the database API over `store`.
    pub fn new(store: Arc<CircleStore>, limits: Limits) -> Self {
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_levels)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size);
        // The sandbox: no modules from the host's files, no `eval` (which
        // would run text the limits above were not told about at compile
        // time, and could reach `import` by another route).
        engine.set_module_resolver(NoModules);
        engine.disable_symbol("eval");

        let meter = Arc::new(TaskMeter {
            deadline_nanos: AtomicU64::new(u64::MAX),
            operations: AtomicU64::new(0),
            tripped: AtomicU8::new(TRIPPED_NONE),
            memory_baseline: AtomicUsize::new(0),
            memory_peak: AtomicUsize::new(0),
            log_bytes: AtomicUsize::new(0),
        });
        let max_log = limits.max_log_output;
        let m = meter.clone();
        engine.on_print(move |s| {
            if m.admit_log(s.len(), max_log) {
                tracing::info!(target: "script", "{s}");
            }
        });
        let m = meter.clone();
        engine.on_debug(move |s, src, pos| {
            if m.admit_log(s.len(), max_log) {
                tracing::debug!(target: "script", ?src, %pos, "{s}");
            }
        });
        let m = meter.clone();
        let (max_memory, max_operations) = (limits.max_memory, limits.max_operations);
        engine.on_progress(move |_| m.progress(max_memory, max_operations));
        // `sleep` (Rhai's core package) blocks the thread where no limit
        // can stop it: `sleep(1e18)` would hold the circle for good.
        engine.register_fn("sleep", |_: rhai::INT| -> Result<(), Box<EvalAltResult>> {
            Err(NO_SLEEP.into())
        });
        engine.register_fn(
            "sleep",
            |_: rhai::FLOAT| -> Result<(), Box<EvalAltResult>> { Err(NO_SLEEP.into()) },
        );
        register_db_api(&mut engine, store, &limits, meter.clone());
        register_clock(&mut engine);
        register_capped_text(&mut engine, limits.max_string_size, meter.clone());
        Self {
            engine,
            limits,
            meter,
            cache: Mutex::new(AstCache::default()),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Runs `script` for `caller_id` in circle `context_id`, for at most
    /// `wall_time` (capped by the configured limit). Returns the result as
    /// text: strings as they are, `()` as empty, arrays and maps as JSON.
    pub fn run(
        &self,
        script: &str,
        context_id: &str,
        caller_id: &str,
        wall_time: Option<Duration>,
    ) -> Result<String, String> {
        if script.len() > self.limits.max_script_size {
            return Err(format!(
                "script is {} bytes, over the script size limit ({} bytes)",
                script.len(),
                self.limits.max_script_size
            ));
        }
        let wall_time = wall_time.map_or(self.limits.max_wall_time, |w| {
            w.min(self.limits.max_wall_time)
        });
        let baseline = memory::allocated();
        self.meter.begin(baseline, wall_time);
        let result = self.run_metered(script, context_id, caller_id, wall_time);
        self.meter.end();
        // Everything the script built is dropped by now: hand what a big
        // task used back to the OS, so RSS does not stay at its peak.
        if self.meter.memory_peak.load(Ordering::Relaxed) > baseline + RELEASE_AFTER_PEAK {
            memory::release_free_memory();
        }
        result
    }

    fn run_metered(
        &self,
        script: &str,
        context_id: &str,
        caller_id: &str,
        wall_time: Duration,
    ) -> Result<String, String> {
        let ast = self.compile(script)?;
        let mut scope = Scope::new();
        scope.push_constant("CONTEXT_ID", context_id.to_string());
        scope.push_constant("CALLER_ID", caller_id.to_string());
        let value = self
            .engine
            .eval_ast_with_scope::<Dynamic>(&mut scope, &ast)
            .map_err(|e| self.describe_error(&e, wall_time))?;
        // A limit that fired where its error was swallowed (see
        // `TaskMeter::tripped`) still ends the task.
        if let Some(token) = self.meter.tripped_token() {
            let stopped = EvalAltResult::ErrorTerminated(token.into(), Position::NONE);
            return Err(self.describe_error(&stopped, wall_time));
        }
        // Rhai checks sizes on function calls but not on `map[key] = value`,
        // so the result is checked once more before it leaves the engine —
        // depth first, since the size check itself recurses.
        check_depth(&value, self.limits.max_value_depth).map_err(|e| e.to_string())?;
        self.engine
            .ensure_data_size_within_limits(&value)
            .map_err(|e| self.describe_error(&e, wall_time))?;
        let output = render_output(value);
        if output.len() > self.limits.max_output_size {
            return Err(format!(
                "script output is {} bytes, over the output size limit ({} bytes)",
                output.len(),
                self.limits.max_output_size
            ));
        }
        Ok(output)
    }

    fn compile(&self, script: &str) -> Result<Arc<AST>, String> {
        if let Some(ast) = self.cache.lock().expect("ast cache").entries.get(script) {
            return Ok(ast.clone());
        }
        let before = memory::allocated();
        let ast = Arc::new(
            self.engine
                .compile(script)
                .map_err(|e| format!("syntax error: {e}"))?,
        );
        // The heap the compiled form took (tasks run one at a time; what
        // the heartbeat thread allocates meanwhile is noise).
        let size = script.len() + memory::allocated().saturating_sub(before);
        if script.len() <= AST_CACHE_MAX_SCRIPT && size <= AST_CACHE_MAX_ENTRY {
            let mut cache = self.cache.lock().expect("ast cache");
            if cache.bytes + size > AST_CACHE_BYTES {
                *cache = AstCache::default();
            }
            cache.bytes += size;
            cache.entries.insert(script.to_string(), ast.clone());
        }
        Ok(ast)
    }

    /// Turns a Rhai error into the task's error text, naming the limit when
    /// one was hit.
    fn describe_error(&self, err: &EvalAltResult, wall_time: Duration) -> String {
        let l = &self.limits;
        match err.unwrap_inner() {
            EvalAltResult::ErrorTooManyOperations(..) => {
                format!(
                    "script exceeded the operations limit ({} operations)",
                    l.max_operations
                )
            }
            EvalAltResult::ErrorStackOverflow(..) => {
                format!(
                    "script exceeded the call depth limit ({} levels)",
                    l.max_call_levels
                )
            }
            EvalAltResult::ErrorDataTooLarge(what, ..) => {
                let what = what.to_lowercase();
                if what.contains("string") {
                    format!(
                        "script exceeded the string size limit ({} bytes)",
                        l.max_string_size
                    )
                } else if what.contains("array") {
                    format!(
                        "script exceeded the array size limit ({} elements)",
                        l.max_array_size
                    )
                } else if what.contains("map") {
                    format!(
                        "script exceeded the map size limit ({} entries)",
                        l.max_map_size
                    )
                } else {
                    format!("script exceeded a size limit: {err}")
                }
            }
            EvalAltResult::ErrorTerminated(token, ..) if token.to_string() == WALL_TIME_TOKEN => {
                format!(
                    "script exceeded the wall time limit ({:.1}s)",
                    wall_time.as_secs_f64()
                )
            }
            EvalAltResult::ErrorTerminated(token, ..) if token.to_string() == STRING_SIZE_TOKEN => {
                format!(
                    "script exceeded the string size limit ({} bytes)",
                    l.max_string_size
                )
            }
            EvalAltResult::ErrorTerminated(token, ..) if token.to_string() == OPERATIONS_TOKEN => {
                format!(
                    "script exceeded the operations limit ({} operations)",
                    l.max_operations
                )
            }
            EvalAltResult::ErrorTerminated(token, ..) if token.to_string() == MEMORY_TOKEN => {
                format!(
                    "script exceeded the memory limit ({} MiB)",
                    l.max_memory.div_ceil(1024 * 1024)
                )
            }
            _ => circles_dispatcher::text::clip(&err.to_string(), MAX_ERROR_TEXT).into_owned(),
        }
    }
}

/// What a script calling `sleep` is told.
const NO_SLEEP: &str =
    "sleep is not available to scripts: it would hold the circle where no limit can stop it";

/// A monotonic clock cheap enough to read every few operations: the
/// kernel's coarse clock (a memory read, a few ms of resolution) on Linux.
#[cfg(target_os = "linux")]
fn coarse_clock_nanos() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

#[cfg(not(target_os = "linux"))]
fn coarse_clock_nanos() -> u64 {
    use std::time::Instant;
    static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    EPOCH.elapsed().as_nanos() as u64
}

/// After a task whose heap peaked this far above its start, freed memory is
/// handed back to the OS.
const RELEASE_AFTER_PEAK: usize = 8 * 1024 * 1024;
/// Script error texts are cut to this many bytes: an error can quote a
/// value (a 1 MB string, say), and the error travels to Redis and clients.
const MAX_ERROR_TEXT: usize = 4096;

impl TaskMeter {
    fn begin(&self, baseline: usize, wall_time: Duration) {
        let deadline = coarse_clock_nanos()
            .saturating_add(wall_time.as_nanos().try_into().unwrap_or(u64::MAX));
        self.deadline_nanos.store(deadline, Ordering::Relaxed);
        self.operations.store(0, Ordering::Relaxed);
        self.tripped.store(TRIPPED_NONE, Ordering::Relaxed);
        self.memory_baseline.store(baseline, Ordering::Relaxed);
        self.memory_peak.store(baseline, Ordering::Relaxed);
        self.log_bytes.store(0, Ordering::Relaxed);
    }

    fn end(&self) {
        self.deadline_nanos.store(u64::MAX, Ordering::Relaxed);
    }

    /// Rhai's progress hook, called before every operation: the token of
    /// the limit that stops the task, if one does. Tripped limits stay
    /// tripped (see [`TaskMeter::tripped`]).
    fn progress(&self, max_memory: usize, max_operations: u64) -> Option<Dynamic> {
        // A text refused for its size stops the task at its end, not here:
        // Rhai checks progress right after the native call that refused
        // it, and `${}` answers that error by formatting the value itself,
        // whole — the very text that was refused.
        if self.tripped.load(Ordering::Relaxed) != TRIPPED_STRING_SIZE
            && let Some(token) = self.tripped_token()
        {
            return Some(token.into());
        }
        // Plain loads and stores, not read-modify-write atomics: only the
        // engine's thread writes these, and this runs before every
        // operation (a locked instruction each cost a tight loop ~10%).
        let operations = self.operations.load(Ordering::Relaxed) + 1;
        self.operations.store(operations, Ordering::Relaxed);
        let tripped = if max_operations > 0 && operations > max_operations {
            TRIPPED_OPERATIONS
        } else if max_memory > 0 && {
            let now = memory::allocated();
            if now > self.memory_peak.load(Ordering::Relaxed) {
                self.memory_peak.store(now, Ordering::Relaxed);
            }
            now.saturating_sub(self.memory_baseline.load(Ordering::Relaxed)) > max_memory
        } {
            TRIPPED_MEMORY
        } else if operations.is_multiple_of(WALL_CLOCK_CHECK_EVERY)
            && coarse_clock_nanos() > self.deadline_nanos.load(Ordering::Relaxed)
        {
            TRIPPED_WALL_TIME
        } else {
            return None;
        };
        self.trip(tripped);
        self.tripped_token().map(Dynamic::from)
    }

    /// Stops the task for good (`TRIPPED_*`), from its next operation on.
    fn trip(&self, limit: u8) {
        self.tripped.store(limit, Ordering::Relaxed);
    }

    /// The token of the limit that stopped the task, if one did.
    fn tripped_token(&self) -> Option<&'static str> {
        match self.tripped.load(Ordering::Relaxed) {
            TRIPPED_WALL_TIME => Some(WALL_TIME_TOKEN),
            TRIPPED_MEMORY => Some(MEMORY_TOKEN),
            TRIPPED_OPERATIONS => Some(OPERATIONS_TOKEN),
            TRIPPED_STRING_SIZE => Some(STRING_SIZE_TOKEN),
            _ => None,
        }
    }

    /// Whether `len` more bytes of print/debug output may be logged; logs
    /// the one truncation note when the budget runs out.
    fn admit_log(&self, len: usize, max: usize) -> bool {
        let before = self.log_bytes.fetch_add(len.max(1), Ordering::Relaxed);
        if before.saturating_add(len) <= max {
            return true;
        }
        if before <= max {
            tracing::warn!(
                target: "script",
                "output truncated: this task printed more than {max} bytes; the rest of its print/debug output is dropped"
            );
            // Past the budget for good, so the note is logged once.
            self.log_bytes.store(usize::MAX / 2, Ordering::Relaxed);
        }
        false
    }
}

/// Why a value cannot be stored or returned.
#[derive(Debug, thiserror::Error)]
#[error("value nests arrays and maps {depth} levels deep or more; the limit is {max}")]
struct TooDeep {
    depth: usize,
    max: usize,
}

/// Fails when arrays and maps in `value` nest deeper than `max` levels.
/// Recurses at most `max` levels, so a hostile value cannot exhaust the
/// stack here (serialising or size-checking it unchecked could).
fn check_depth(value: &Dynamic, max: usize) -> Result<(), TooDeep> {
    fn walk(value: &Dynamic, depth: usize, max: usize) -> Result<(), TooDeep> {
        let nested = value.is_array() || value.is_map();
        if !nested {
            return Ok(());
        }
        if depth >= max {
            return Err(TooDeep {
                depth: depth + 1,
                max,
            });
        }
        if let Some(array) = value.read_lock::<rhai::Array>() {
            for item in array.iter() {
                walk(item, depth + 1, max)?;
            }
        } else if let Some(map) = value.read_lock::<rhai::Map>() {
            for item in map.values() {
                walk(item, depth + 1, max)?;
            }
        }
        Ok(())
    }
    walk(value, 0, max)
}

/// How deep a [`TextBudget`] follows nested arrays and maps; deeper counts
/// as too big (nothing nested this deep can be stored or returned anyway).
const MAX_TEXT_DEPTH: usize = 128;

/// Bytes a value may take written out as text (JSON, or Rhai's display),
/// spent without building the text: strings, blobs and map keys in full,
/// at least a byte for anything else. Arrays can hold one string many
/// times over at no cost (strings are shared), so a value far bigger as
/// text than in memory is cheap to make; building its text in one native
/// call is what must not happen.
struct TextBudget(usize);

impl TextBudget {
    /// Spends `n` bytes; `false` once they are not there.
    fn take(&mut self, n: usize) -> bool {
        match self.0.checked_sub(n) {
            Some(rest) => {
                self.0 = rest;
                true
            }
            None => false,
        }
    }

    /// Spends what `value` takes as text; `false` once over. Stops there.
    fn value(&mut self, value: &Dynamic, depth: usize) -> bool {
        if depth > MAX_TEXT_DEPTH {
            return false;
        }
        if let Some(s) = value.read_lock::<rhai::ImmutableString>() {
            self.take(s.len() + 2)
        } else if let Some(blob) = value.read_lock::<rhai::Blob>() {
            self.take(blob.len() + 2)
        } else if let Some(array) = value.read_lock::<rhai::Array>() {
            self.array(&array, depth)
        } else if let Some(map) = value.read_lock::<rhai::Map>() {
            self.map(&map, depth)
        } else {
            self.take(1)
        }
    }

    fn array(&mut self, array: &rhai::Array, depth: usize) -> bool {
        self.take(2)
            && array
                .iter()
                .all(|v| self.take(1) && self.value(v, depth + 1))
    }

    fn map(&mut self, map: &rhai::Map, depth: usize) -> bool {
        self.take(3)
            && map
                .iter()
                .all(|(k, v)| self.take(k.len() + 3) && self.value(v, depth + 1))
    }
}

/// `print`, `debug`, `to_string`, `to_debug` (what `${}` calls) of arrays
/// and maps, and `to_json` of maps, refusing before building a text over
/// the string size limit: Rhai's own build the whole text in one native
/// call and check its size after, and 2,000 copies of one shared 500 KB
/// string made a 1 GB allocation that killed the worker. Refusing stops
/// the task through the meter and answers an empty text: an error would
/// not do, since `${}` swallows it and formats the value itself, whole.
/// For the same reason the value is taken by value, not `&mut`: after a
/// call with a `&mut` argument Rhai checks that argument's size, and that
/// error too would send `${}` to format it.
fn register_capped_text(engine: &mut Engine, max: usize, meter: Arc<TaskMeter>) {
    let fits = move |fits: bool| {
        if !fits {
            meter.trip(TRIPPED_STRING_SIZE);
        }
        fits
    };
    for name in ["print", "debug", "to_string", "to_debug"] {
        let array_fits = fits.clone();
        engine.register_fn(name, move |a: rhai::Array| -> String {
            if array_fits(TextBudget(max).array(&a, 0)) {
                format!("{a:?}")
            } else {
                String::new()
            }
        });
        let map_fits = fits.clone();
        engine.register_fn(name, move |m: rhai::Map| -> String {
            if map_fits(TextBudget(max).map(&m, 0)) {
                format!("#{m:?}")
            } else {
                String::new()
            }
        });
    }
    engine.register_fn("to_json", move |m: rhai::Map| -> String {
        if fits(TextBudget(max).map(&m, 0)) {
            serde_json::to_string(&Dynamic::from_map(m)).unwrap_or_default()
        } else {
            String::new()
        }
    });
}

/// The script's value as task output.
fn render_output(value: Dynamic) -> String {
    if value.is_unit() {
        String::new()
    } else if value.is_string() {
        value.into_string().unwrap_or_default()
    } else if value.is_array() || value.is_map() {
        serde_json::to_string(&value).unwrap_or_else(|_| value.to_string())
    } else {
        value.to_string()
    }
}

/// A value as stored: JSON, refused when nested deeper than `max_depth`
/// (which is also what reading it back allows, so whatever is written can
/// be read).
/// It is also refused over `max_bytes` of JSON — counted before it is built
/// (see [`TextBudget`]) and after.
fn to_json(
    value: &Dynamic,
    max_depth: usize,
    max_bytes: usize,
) -> Result<String, Box<EvalAltResult>> {
    check_depth(value, max_depth).map_err(|e| format!("value cannot be stored: {e}"))?;
    let too_big = || {
        format!(
            "value cannot be stored: it is over {} as JSON, the limit for one value",
            size_text(max_bytes)
        )
        .into()
    };
    if !TextBudget(max_bytes).value(value, 0) {
        return Err(too_big());
    }
    let json = serde_json::to_string(value).map_err(|e| format!("value cannot be stored: {e}"))?;
    if json.len() > max_bytes {
        return Err(too_big());
    }
    Ok(json)
}

/// `1.5 MiB`, `512 KiB`, `100 bytes`.
fn size_text(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else if bytes >= 1 << 10 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

fn from_json(json: &str) -> Result<Dynamic, Box<EvalAltResult>> {
    serde_json::from_str::<Dynamic>(json)
        .map_err(|e| format!("stored value is corrupt: {e}").into())
}

fn store_err(e: crate::store::StoreError) -> Box<EvalAltResult> {
    e.to_string().into()
}

/// Wall-clock time for scripts. Rhai's own `timestamp()` is a monotonic
/// instant, good for measuring (`timestamp().elapsed`) but not for saying
/// *when* something happened: stored, it reads as 0.
/// - `now()`: the current time, RFC 3339 in UTC (`2026-12-01T18:43:36.588Z`);
/// - `unix_time()`: seconds since 1970-01-01 UTC.
fn register_clock(engine: &mut Engine) {
    engine.register_fn("now", circles_dispatcher::task::now_rfc3339);
    engine.register_fn("unix_time", || chrono::Utc::now().timestamp());
}

fn register_db_api(
    engine: &mut Engine,
    store: Arc<CircleStore>,
    limits: &Limits,
    meter: Arc<TaskMeter>,
) {
    // A task already stopped by a limit (a refused text, see
    // `register_capped_text`) writes nothing more: it ends as an error.
    let stopped = move || -> Result<(), Box<EvalAltResult>> {
        match meter.tripped_token() {
            Some(_) => Err("the task was stopped by a limit; nothing more is written".into()),
            None => Ok(()),
        }
    };
    let max_depth = limits.max_value_depth;
    let quota = limits.max_db_bytes;
    // Reading is one native call the memory budget cannot interrupt, and
    // parsed values take up to ~13 times their JSON in memory (`[[],[],…]`:
    // 3 bytes each as JSON, ~40 as values). So one value, and a listing of
    // values, is at most 1/32 of the task's budget as JSON (8 MiB of the
    // default 256); a listing of keys, half of it. Past that, a clear error
    // rather than more than the worker may hold.
    let (value_bytes, keys_bytes) = if limits.max_memory == 0 {
        (usize::MAX, usize::MAX)
    } else {
        (
            (limits.max_memory / 32).max(limits.max_string_size),
            limits.max_memory / 2,
        )
    };
    let (max_list, max_keys) = (limits.max_map_size, limits.max_array_size);
    let s = store.clone();
    engine.register_fn(
        "db_get",
        move |key: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            match s.get(key).map_err(store_err)? {
                // Values stored before the per-value limit can be bigger.
                Some(json) if json.len() > value_bytes => Err(format!(
                    "db_get: the value of `{}` is {} as JSON, over the {} a script may read at once",
                    circles_dispatcher::text::clip(key, 64),
                    size_text(json.len()),
                    size_text(value_bytes)
                )
                .into()),
                Some(json) => from_json(&json),
                None => Ok(Dynamic::UNIT),
            }
        },
    );
    let s = store.clone();
    let check = stopped.clone();
    engine.register_fn(
        "db_set",
        move |key: &str, value: Dynamic| -> Result<(), Box<EvalAltResult>> {
            check()?;
            let json = to_json(&value, max_depth, value_bytes)?;
            s.check_quota(quota, key.len() + json.len())
                .map_err(store_err)?;
            s.set(key, &json).map_err(store_err)
        },
    );
    let s = store.clone();
    let check = stopped.clone();
    engine.register_fn(
        "db_delete",
        move |key: &str| -> Result<bool, Box<EvalAltResult>> {
            check()?;
            s.delete(key).map_err(store_err)
        },
    );
    let s = store.clone();
    engine.register_fn(
        "db_list",
        move |prefix: &str| -> Result<rhai::Map, Box<EvalAltResult>> {
            let mut map = rhai::Map::new();
            for (k, json) in s
                .list_bounded(
                    prefix,
                    max_list,
                    value_bytes,
                    Listing::KeysAndValues,
                    "db_list",
                )
                .map_err(store_err)?
            {
                map.insert(k.into(), from_json(&json)?);
            }
            Ok(map)
        },
    );
    let s = store.clone();
    engine.register_fn(
        "db_keys",
        move |prefix: &str| -> Result<rhai::Array, Box<EvalAltResult>> {
            Ok(
                s.list_bounded(prefix, max_keys, keys_bytes, Listing::Keys, "db_keys")
                    .map_err(store_err)?
                    .into_iter()
                    .map(|(k, _)| Dynamic::from(k))
                    .collect(),
            )
        },
    );
    let s = store;
    engine.register_fn(
        "db_insert",
        move |collection: &str, value: Dynamic| -> Result<i64, Box<EvalAltResult>> {
            stopped()?;
            if collection.is_empty() || collection.contains(':') {
                return Err(format!(
                    "db_insert: collection name `{collection}` must be non-empty and without ':'"
                )
                .into());
            }
            let json = to_json(&value, max_depth, value_bytes)?;
            // The key is `<collection>:<id>`, the id at most 20 digits.
            s.check_quota(quota, collection.len() + 21 + json.len())
                .map_err(store_err)?;
            let id = s.insert(collection, &json).map_err(store_err)?;
            Ok(id as i64)
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(limits: Limits) -> (tempfile::TempDir, ScriptEngine) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(CircleStore::open(&dir.path().join("db.redb")).unwrap());
        (dir, ScriptEngine::new(store, limits))
    }

    #[test]
    fn the_script_cache_is_bounded_by_what_compiled_scripts_take() {
        // A 52 KB script of 13,000 statements compiles to ~5 MB: cached
        // by source bytes, 128 of them (all under the old 8 MiB of
        // source) held ~700 MB and crashed the worker at its ceiling.
        let (_d, e) = engine(Limits::default());
        let baseline = crate::memory::allocated();
        for i in 0..40 {
            let script = format!("let a = {i}; {}a", "a+a;".repeat(13_000));
            e.run(&script, "c", "c", None).unwrap();
        }
        let cached = e.cache.lock().unwrap().bytes;
        assert!(cached <= AST_CACHE_BYTES, "{cached}");
        let grown = crate::memory::allocated().saturating_sub(baseline);
        assert!(grown < 120 << 20, "heap grew by {} MiB", grown >> 20);
        // Small scripts are still cached.
        e.run("40 + 2", "c", "c", None).unwrap();
        assert!(e.cache.lock().unwrap().entries.contains_key("40 + 2"));
    }

    #[test]
    fn a_text_budget_counts_shared_strings_every_time() {
        let s = Dynamic::from("x".repeat(1000));
        let a: rhai::Array = vec![s; 100];
        assert!(TextBudget(200_000).array(&a, 0));
        assert!(!TextBudget(50_000).array(&a, 0));
        let mut m = rhai::Map::new();
        m.insert("k".into(), Dynamic::from_array(a));
        assert!(!TextBudget(50_000).map(&m, 0));
        assert!(!TextBudget(50_000).value(&Dynamic::from_map(m), 0));
    }

    #[test]
    fn sleep_is_refused_rather_than_holding_the_circle() {
        let (_d, e) = engine(Limits::default());
        for script in ["sleep(1000000000); 1", "sleep(1e18); 1"] {
            let started = std::time::Instant::now();
            let err = e.run(script, "c", "c", None).unwrap_err();
            assert!(err.contains("sleep is not available"), "{err}");
            assert!(started.elapsed() < Duration::from_secs(5));
        }
    }

    #[test]
    fn limits_hit_inside_a_sort_comparator_still_end_the_task() {
        // `sort` drops the error of a comparator call and goes on; the
        // task used to end as completed after 250 times its operations.
        let (_d, e) = engine(Limits {
            max_operations: 100_000,
            ..Limits::default()
        });
        let script = "let a = []; for i in 0..50 { a.push(i); } \
                      a.sort(|x, y| { let i = 0; while i < 30000 { i += 1; } y - x }); a[0]";
        let err = e.run(script, "c", "c", None).unwrap_err();
        assert!(err.contains("operations limit (100000"), "{err}");
        // The wall time likewise: the comparator loops for ever.
        let (_d, e) = engine(Limits::default());
        let started = std::time::Instant::now();
        let script =
            "let a = []; for i in 0..200 { a.push(i); } a.sort(|x, y| { loop {} }); \"sorted\"";
        let err = e
            .run(script, "c", "c", Some(Duration::from_secs(1)))
            .unwrap_err();
        assert!(err.contains("wall time limit"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn slow_operations_do_not_stretch_the_wall_time() {
        // Each `==` of two arrays of 2,000 shared 256 KiB strings that
        // differ at the end takes milliseconds; the clock used to be read
        // every 1,024 operations, so a 1 s limit ran for many seconds.
        let (_d, e) = engine(Limits::default());
        let script = r#"
            let s = "x"; while s.len() < 262144 { s += s; }
            let t = "x" + s.sub_string(1); t.crop(0, 262143); t += "y";
            let a = []; a.pad(2000, 0); let b = []; b.pad(2000, 0);
            for i in 0..2000 { a[i] = s; b[i] = t; }
            loop { let r = a == b; }
        "#;
        let started = std::time::Instant::now();
        let err = e
            .run(script, "c", "c", Some(Duration::from_secs(1)))
            .unwrap_err();
        assert!(err.contains("wall time limit"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn scripts_can_tell_the_time() {
        let (_d, e) = engine(Limits::default());
        let before = chrono::Utc::now().timestamp();
        let t: i64 = e
            .run("unix_time()", "c", "c", None)
            .unwrap()
            .parse()
            .unwrap();
        assert!((before..before + 60).contains(&t), "{t}");
        let now = e.run("now()", "c", "c", None).unwrap();
        let parsed = chrono::DateTime::parse_from_rfc3339(&now).unwrap();
        assert!((parsed.timestamp() - before).abs() < 60, "{now}");
    }

    #[test]
    fn the_ourworld_init_script_records_when_members_joined() {
        // Issue 10 item 8: `joined` was `timestamp().elapsed`, 0 for all.
        let (_d, e) = engine(Limits::default());
        let script = include_str!("../../scripts/ourworld.rhai");
        assert_eq!(
            e.run(script, "c", "c", None).unwrap(),
            "OurWorld: 3 members"
        );
        let members: serde_json::Value =
            serde_json::from_str(&e.run(r#"db_list("members:")"#, "c", "c", None).unwrap())
                .unwrap();
        let members = members.as_object().unwrap();
        assert_eq!(members.len(), 3);
        for member in members.values() {
            let joined = member["joined"].as_str().unwrap();
            let at = chrono::DateTime::parse_from_rfc3339(joined).unwrap();
            let age = chrono::Utc::now().signed_duration_since(at);
            assert!(age.num_seconds().abs() < 60, "{joined}");
        }
    }

    #[test]
    fn outputs_and_constants() {
        let (_d, e) = engine(Limits::default());
        assert_eq!(e.run("40 + 2", "ctx", "me", None).unwrap(), "42");
        assert_eq!(
            e.run("CONTEXT_ID + \"/\" + CALLER_ID", "ctx", "me", None)
                .unwrap(),
            "ctx/me"
        );
        assert_eq!(e.run("let x = 1;", "c", "c", None).unwrap(), "");
        assert_eq!(e.run("[1, \"a\"]", "c", "c", None).unwrap(), r#"[1,"a"]"#);
        assert!(
            e.run("CONTEXT_ID = 1", "c", "c", None).is_err(),
            "constants are read-only"
        );
    }

    #[test]
    fn database_api_roundtrips_values() {
        let (_d, e) = engine(Limits::default());
        e.run(r#"db_set("p:1", #{name: "ann", tags: [1, 2.5, true]}); db_set("p:2", "b"); db_set("q", 3)"#, "c", "c", None).unwrap();
        assert_eq!(
            e.run(r#"db_get("p:1").tags[1]"#, "c", "c", None).unwrap(),
            "2.5"
        );
        assert_eq!(
            e.run(r#"db_keys("p:")"#, "c", "c", None).unwrap(),
            r#"["p:1","p:2"]"#
        );
        assert_eq!(
            e.run(r#"db_list("p:").len()"#, "c", "c", None).unwrap(),
            "2"
        );
        assert_eq!(e.run(r#"db_delete("q")"#, "c", "c", None).unwrap(), "true");
        assert_eq!(
            e.run(r#"db_get("q") == ()"#, "c", "c", None).unwrap(),
            "true"
        );
        assert_eq!(
            e.run(r#"db_insert("u", 1); db_insert("u", 2)"#, "c", "c", None)
                .unwrap(),
            "2"
        );
        assert!(
            e.run(r#"db_insert("a:b", 1)"#, "c", "c", None)
                .unwrap_err()
                .contains("without ':'")
        );
    }

    #[test]
    fn each_limit_is_named() {
        let limits = Limits {
            max_operations: 50_000,
            max_call_levels: 16,
            max_string_size: 1000,
            max_array_size: 100,
            max_map_size: 100,
            ..Limits::default()
        };
        let (_d, e) = engine(limits);
        let run = |s: &str| e.run(s, "c", "c", None).unwrap_err();
        assert!(
            run("loop {}").contains("operations limit (50000"),
            "{}",
            run("loop {}")
        );
        assert!(run("fn f(x) { f(x + 1) } f(0)").contains("call depth limit"));
        assert!(run(r#"let s = "x"; loop { s += s; }"#).contains("string size limit (1000 bytes)"));
        assert!(run("let a = []; loop { a.push(1); }").contains("array size limit (100 elements)"));
        let map_err = run("let m = #{}; for i in 0..1000 { m[`k${i}`] = i; } m");
        assert!(
            map_err.contains("map size limit (100 entries)"),
            "{map_err}"
        );
        // The engine keeps working after every limit.
        assert_eq!(e.run("1 + 1", "c", "c", None).unwrap(), "2");
    }

    #[test]
    fn wall_time_limit_stops_a_busy_script() {
        let limits = Limits {
            max_operations: 0,
            ..Limits::default()
        };
        let (_d, e) = engine(limits);
        let err = e
            .run("loop {}", "c", "c", Some(Duration::from_millis(200)))
            .unwrap_err();
        assert!(err.contains("wall time limit (0.2s)"), "{err}");
        assert_eq!(e.run("2", "c", "c", None).unwrap(), "2");
    }

    #[test]
    fn the_database_has_a_quota_and_listings_a_bound() {
        let limits = Limits {
            max_db_bytes: 2 * 1024 * 1024,
            max_operations: 0,
            ..Limits::default()
        };
        let (_d, e) = engine(limits);
        // Fill past the quota with 100 kB values: refused once it is full.
        let err = e
            .run(
                r#"let s = "x"; while s.len() < 100000 { s += s; } for i in 0..1000 { db_set("k" + i, s); }"#,
                "c",
                "c",
                None,
            )
            .unwrap_err();
        assert!(
            err.contains("the circle database is full"),
            "{}",
            &err[..err.len().min(200)]
        );
        // Reads and deletes go on.
        assert_eq!(
            e.run(r#"db_get("k1").len()"#, "c", "c", None).unwrap(),
            "131072"
        );
        assert_eq!(e.run(r#"db_delete("k0")"#, "c", "c", None).unwrap(), "true");
        // Deleting makes room again, though the file does not shrink.
        e.run(
            r#"for k in db_keys("k") { db_delete(k); } let s = "x"; while s.len() < 100000 { s += s; } for i in 0..5 { db_set("again" + i, s); }"#,
            "c",
            "c",
            None,
        )
        .unwrap();

        let limits = Limits {
            max_map_size: 50,
            max_array_size: 50,
            ..Limits::default()
        };
        let (_d, e) = engine(limits);
        e.run(r#"for i in 0..60 { db_set("n" + i, i); }"#, "c", "c", None)
            .unwrap();
        let err = e.run(r#"db_list("n")"#, "c", "c", None).unwrap_err();
        assert!(
            err.contains("db_list under prefix `n` would return more than 50 entries"),
            "{err}"
        );
        let err = e.run(r#"db_keys("")"#, "c", "c", None).unwrap_err();
        assert!(err.contains("db_keys under prefix ``"), "{err}");
        assert_eq!(
            e.run(r#"db_keys("n1").len()"#, "c", "c", None).unwrap(),
            "11"
        );
    }
}
