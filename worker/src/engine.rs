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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rhai::{AST, Dynamic, Engine, EvalAltResult, Scope};

use crate::store::CircleStore;

/// Script limits. Every one of them ends a task with an error naming it.
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
        }
    }
}

/// How many compiled scripts to keep; the cache is emptied when full.
const AST_CACHE_CAPACITY: usize = 256;
/// The wall clock is read every this many operations (reading it every
/// operation would cost more than the operations themselves).
const WALL_CLOCK_CHECK_EVERY: u64 = 1024;
/// The value a terminated script carries, telling wall-time apart from other
/// terminations.
const WALL_TIME_TOKEN: &str = "circles:wall-time";

/// The Rhai engine bound to one circle's store.
pub struct ScriptEngine {
    engine: Engine,
    limits: Limits,
    /// Deadline of the running task, in nanoseconds since `epoch`; read by the
    /// progress callback. Tasks run one at a time, so one slot suffices.
    deadline_nanos: Arc<AtomicU64>,
    epoch: Instant,
    cache: Mutex<HashMap<String, Arc<AST>>>,
}

impl std::fmt::Debug for ScriptEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptEngine")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
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
        engine.on_print(|s| tracing::info!(target: "script", "{s}"));
        engine.on_debug(|s, src, pos| tracing::debug!(target: "script", ?src, %pos, "{s}"));

        let epoch = Instant::now();
        let deadline_nanos = Arc::new(AtomicU64::new(u64::MAX));
        let deadline = deadline_nanos.clone();
        engine.on_progress(move |ops| {
            if ops % WALL_CLOCK_CHECK_EVERY == 0
                && epoch.elapsed().as_nanos() as u64 > deadline.load(Ordering::Relaxed)
            {
                return Some(WALL_TIME_TOKEN.into());
            }
            None
        });
        register_db_api(&mut engine, store);
        Self {
            engine,
            limits,
            deadline_nanos,
            epoch,
            cache: Mutex::new(HashMap::new()),
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
        let ast = self.compile(script)?;
        let wall_time = wall_time.map_or(self.limits.max_wall_time, |w| {
            w.min(self.limits.max_wall_time)
        });
        let deadline = (self.epoch.elapsed() + wall_time).as_nanos() as u64;
        self.deadline_nanos.store(deadline, Ordering::Relaxed);

        let mut scope = Scope::new();
        scope.push_constant("CONTEXT_ID", context_id.to_string());
        scope.push_constant("CALLER_ID", caller_id.to_string());
        // Rhai checks sizes on function calls but not on `map[key] = value`,
        // so the result is checked once more before it leaves the engine.
        let result = self
            .engine
            .eval_ast_with_scope::<Dynamic>(&mut scope, &ast)
            .and_then(|value| {
                self.engine
                    .ensure_data_size_within_limits(&value)
                    .map(|()| value)
            });
        self.deadline_nanos.store(u64::MAX, Ordering::Relaxed);
        result
            .map(render_output)
            .map_err(|e| self.describe_error(&e, wall_time))
    }

    fn compile(&self, script: &str) -> Result<Arc<AST>, String> {
        if let Some(ast) = self.cache.lock().expect("ast cache").get(script) {
            return Ok(ast.clone());
        }
        let ast = Arc::new(
            self.engine
                .compile(script)
                .map_err(|e| format!("syntax error: {e}"))?,
        );
        let mut cache = self.cache.lock().expect("ast cache");
        if cache.len() >= AST_CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(script.to_string(), ast.clone());
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
            _ => err.to_string(),
        }
    }
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

fn to_json(value: &Dynamic) -> Result<String, Box<EvalAltResult>> {
    serde_json::to_string(value).map_err(|e| format!("value cannot be stored: {e}").into())
}

fn from_json(json: &str) -> Result<Dynamic, Box<EvalAltResult>> {
    serde_json::from_str::<Dynamic>(json)
        .map_err(|e| format!("stored value is corrupt: {e}").into())
}

fn store_err(e: crate::store::StoreError) -> Box<EvalAltResult> {
    e.to_string().into()
}

fn register_db_api(engine: &mut Engine, store: Arc<CircleStore>) {
    let s = store.clone();
    engine.register_fn(
        "db_get",
        move |key: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            match s.get(key).map_err(store_err)? {
                Some(json) => from_json(&json),
                None => Ok(Dynamic::UNIT),
            }
        },
    );
    let s = store.clone();
    engine.register_fn(
        "db_set",
        move |key: &str, value: Dynamic| -> Result<(), Box<EvalAltResult>> {
            s.set(key, &to_json(&value)?).map_err(store_err)
        },
    );
    let s = store.clone();
    engine.register_fn(
        "db_delete",
        move |key: &str| -> Result<bool, Box<EvalAltResult>> { s.delete(key).map_err(store_err) },
    );
    let s = store.clone();
    engine.register_fn(
        "db_list",
        move |prefix: &str| -> Result<rhai::Map, Box<EvalAltResult>> {
            let mut map = rhai::Map::new();
            for (k, json) in s.list(prefix).map_err(store_err)? {
                map.insert(k.into(), from_json(&json)?);
            }
            Ok(map)
        },
    );
    let s = store.clone();
    engine.register_fn(
        "db_keys",
        move |prefix: &str| -> Result<rhai::Array, Box<EvalAltResult>> {
            Ok(s.list(prefix)
                .map_err(store_err)?
                .into_iter()
                .map(|(k, _)| Dynamic::from(k))
                .collect())
        },
    );
    let s = store;
    engine.register_fn(
        "db_insert",
        move |collection: &str, value: Dynamic| -> Result<i64, Box<EvalAltResult>> {
            if collection.is_empty() || collection.contains(':') {
                return Err(format!(
                    "db_insert: collection name `{collection}` must be non-empty and without ':'"
                )
                .into());
            }
            let id = s.insert(collection, &to_json(&value)?).map_err(store_err)?;
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
            max_wall_time: Duration::from_secs(30),
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
}
