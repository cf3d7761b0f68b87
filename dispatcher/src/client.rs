//! The dispatcher client: submit a script to a circle and wait for its result.
//!
//! Submission is one atomic `MULTI HSET LPUSH EXEC`. Waiting is a server-side
//! `BLPOP` on the task's reply list: the client sleeps inside Redis and wakes
//! the moment the worker pushes the outcome — there is no polling loop.
//! `run` pipelines both on one connection, so a whole task costs the client
//! a single round trip.
//!
//! Submission also checks, in the same atomic step, that the circle has a
//! live worker (its heartbeat key exists): a `run` for an offline circle is
//! answered at once with [`DispatchError::CircleOffline`] instead of waiting
//! out its timeout, and nothing is queued that a worker might run long after
//! the caller gave up. (`submit` queues regardless unless told otherwise:
//! queueing for a worker that is still to come is what it is for.)
//!
//! A blocking `BLPOP` holds its connection, so concurrent waits each need one.
//! Those connections are kept in a small idle list and reused; short
//! non-blocking commands share one multiplexed connection.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Pipeline};

use crate::error::DispatchError;
use crate::protocol::{
    DEFAULT_MAX_SCRIPT_BYTES, LAST_SEEN_HASH, SNAPSHOT_DIR, task_details_key, task_queue_key,
    task_reply_key, worker_heartbeat_key,
};
use crate::task::{
    SnapshotReport, TaskId, TaskKind, TaskOutcome, TaskRecord, TaskStatus, field, now_rfc3339,
};
use crate::{CirclePublicKey, FleetEntry, RedisUrl};

/// Idle blocking connections kept for reuse; more are opened on demand.
const MAX_IDLE_WAITERS: usize = 64;
/// Blocking waits (each a Redis connection) one dispatcher has in flight at
/// once; more callers wait their turn. A tenth of Redis's default
/// `maxclients`.
pub const MAX_BLOCKING_WAITS: usize = 1000;
/// Extra client-side slack over the server-side `BLPOP` timeout before we
/// decide the connection itself is dead.
const TRANSPORT_SLACK: Duration = Duration::from_secs(5);

/// Submits scripts to circles and waits for their results. Cheap to clone;
/// clones share connections.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
    policy: Policy,
}

struct Inner {
    url: RedisUrl,
    client: Client,
    /// For short commands (submit, status); never used for blocking ones.
    /// Reconnects by itself after Redis restarts.
    commands: ConnectionManager,
    /// Idle connections for blocking waits; taken for one wait, then returned.
    waiters: Mutex<Vec<MultiplexedConnection>>,
    /// Bounds the blocking waits in flight, each of which holds a Redis
    /// connection of its own: without it, many callers (a server full of
    /// clients) could open more connections than Redis accepts
    /// (`maxclients`), locking the workers out with everybody else.
    wait_slots: tokio::sync::Semaphore,
    /// Recorded as `caller_id` on every task this dispatcher submits.
    caller_id: String,
}

/// Settings of a [`Dispatcher`] beyond its Redis and caller.
#[derive(Debug, Clone, Copy)]
struct Policy {
    /// Scripts over this many bytes are refused before anything is sent.
    max_script_bytes: usize,
    /// `run` refuses circles without a live worker (see the module docs).
    run_needs_live_worker: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_script_bytes: DEFAULT_MAX_SCRIPT_BYTES,
            run_needs_live_worker: true,
        }
    }
}

/// Queues a task atomically, first checking that its circle has a live
/// worker when asked to. Answers 1 when queued, 0 when the circle is
/// offline; in mode `reply` it then also pushes an "offline" entry on the
/// task's reply list, so that a `BLPOP` pipelined behind this script returns
/// at once instead of blocking for its whole timeout.
///
/// KEYS: task hash, circle queue, heartbeat, reply list, last-seen hash.
/// ARGV: task id, mode (`queue` | `check` | `reply`), circle, then the hash's
/// field/value pairs.
const SUBMIT_SCRIPT: &str = r#"
if ARGV[2] ~= 'queue' and redis.call('EXISTS', KEYS[3]) == 0 then
  if ARGV[2] == 'reply' then
    local reply = {status = 'offline'}
    local seen = redis.call('HGET', KEYS[5], ARGV[3])
    if seen then reply['last_seen'] = seen end
    redis.call('LPUSH', KEYS[4], cjson.encode(reply))
    redis.call('EXPIRE', KEYS[4], '60')
  end
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('LPUSH', KEYS[2], ARGV[1])
return 1
"#;

/// How [`SUBMIT_SCRIPT`] treats a circle without a live worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OfflineCheck {
    /// Queue anyway.
    Queue,
    /// Refuse (returns 0).
    Check,
    /// Refuse and push an offline reply for the pipelined `BLPOP`.
    Reply,
}

impl OfflineCheck {
    fn as_str(self) -> &'static str {
        match self {
            Self::Queue => "queue",
            Self::Check => "check",
            Self::Reply => "reply",
        }
    }
}

/// The reply entry [`SUBMIT_SCRIPT`] pushes for an offline circle.
#[derive(serde::Deserialize)]
struct OfflineReply {
    status: String,
    #[serde(default)]
    last_seen: Option<String>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("url", &self.inner.url)
            .field("caller_id", &self.inner.caller_id)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// Connects to Redis at `redis_url`; tasks will carry `caller_id`.
    pub async fn connect(
        redis_url: &str,
        caller_id: impl Into<String>,
    ) -> Result<Self, DispatchError> {
        let url = RedisUrl::new(redis_url);
        let client = Client::open(redis_url).map_err(|source| DispatchError::InvalidRedisUrl {
            url: url.clone(),
            source,
        })?;
        let commands = ConnectionManager::new_with_config(client.clone(), command_config())
            .await
            .map_err(|source| DispatchError::RedisUnavailable {
                url: url.clone(),
                source,
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                url,
                client,
                commands,
                waiters: Mutex::new(Vec::new()),
                wait_slots: tokio::sync::Semaphore::new(MAX_BLOCKING_WAITS),
                caller_id: caller_id.into(),
            }),
            policy: Policy::default(),
        })
    }

    /// Refuses scripts over `bytes` (default
    /// [`DEFAULT_MAX_SCRIPT_BYTES`]) with [`DispatchError::ScriptTooLarge`].
    pub fn with_max_script_bytes(mut self, bytes: usize) -> Self {
        self.policy.max_script_bytes = bytes;
        self
    }

    /// Whether `run` should queue a task for a circle that has no live
    /// worker and wait for one to come (`true`), instead of failing at once
    /// with [`DispatchError::CircleOffline`] (the default).
    pub fn wait_for_worker(mut self, wait: bool) -> Self {
        self.policy.run_needs_live_worker = !wait;
        self
    }

    /// Runs an idempotent command on the shared connection, once more on a
    /// fresh connection if the first attempt met a dead one (Redis restarted
    /// since the last command): callers should not see a restart that is
    /// already over.
    pub async fn query_idempotent<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, DispatchError> {
        let mut conn = self.inner.commands.clone();
        match cmd.query_async(&mut conn).await {
            Err(e) if is_transport(&e) => {
                tracing::debug!(error = %e, "Redis connection lost; retrying once");
                Ok(cmd.query_async(&mut conn).await?)
            }
            other => Ok(other?),
        }
    }

    /// The caller id recorded on tasks.
    pub fn caller_id(&self) -> &str {
        &self.inner.caller_id
    }

    /// The largest script this dispatcher submits, in bytes.
    pub fn max_script_bytes(&self) -> usize {
        self.policy.max_script_bytes
    }

    /// The Redis URL this dispatcher talks to (displays redacted).
    pub fn redis_url(&self) -> &RedisUrl {
        &self.inner.url
    }

    /// A connection for short commands, shared with this dispatcher; it
    /// reconnects by itself.
    pub fn connection(&self) -> ConnectionManager {
        self.inner.commands.clone()
    }

    /// Queues `script` for `circle` and returns its id without waiting.
    pub async fn submit(
        &self,
        circle: &CirclePublicKey,
        script: &str,
        timeout: Duration,
    ) -> Result<TaskId, DispatchError> {
        self.submit_as(circle, script, timeout, &self.inner.caller_id)
            .await
    }

    /// Like [`Self::submit`], recording `caller_id` instead of the dispatcher's
    /// own (the WebSocket server passes the authenticated key).
    pub async fn submit_as(
        &self,
        circle: &CirclePublicKey,
        script: &str,
        timeout: Duration,
        caller_id: &str,
    ) -> Result<TaskId, DispatchError> {
        self.submit_checked(circle, script, timeout, caller_id, false)
            .await
    }

    /// [`Self::submit_as`] that refuses, with [`DispatchError::CircleOffline`],
    /// to queue for a circle without a live worker.
    pub async fn submit_to_live(
        &self,
        circle: &CirclePublicKey,
        script: &str,
        timeout: Duration,
        caller_id: &str,
    ) -> Result<TaskId, DispatchError> {
        self.submit_checked(circle, script, timeout, caller_id, true)
            .await
    }

    async fn submit_checked(
        &self,
        circle: &CirclePublicKey,
        script: &str,
        timeout: Duration,
        caller_id: &str,
        needs_live_worker: bool,
    ) -> Result<TaskId, DispatchError> {
        let task_id = TaskId::new();
        let check = if needs_live_worker {
            OfflineCheck::Check
        } else {
            OfflineCheck::Queue
        };
        let pipe = self.submit_pipeline(circle, &task_id, script, timeout, caller_id, check)?;
        // Safe to send twice: a second attempt (after a dead connection)
        // only happens when the first never reached Redis or is seen below.
        let queued: (i64,) = match pipe.query_async(&mut self.inner.commands.clone()).await {
            Err(e) if is_transport(&e) => {
                let exists: bool = self
                    .query_idempotent(redis::cmd("EXISTS").arg(task_details_key(task_id)))
                    .await?;
                if exists {
                    (1,)
                } else {
                    pipe.query_async(&mut self.inner.commands.clone()).await?
                }
            }
            other => other?,
        };
        if queued.0 == 0 {
            return Err(self.offline(circle).await);
        }
        tracing::debug!(%task_id, %circle, "task submitted");
        Ok(task_id)
    }

    /// Waits (blocking in Redis, no polling) for the task's reply.
    /// Returns the output, or the worker's error as [`DispatchError::ScriptError`].
    pub async fn await_result(
        &self,
        task_id: &TaskId,
        timeout: Duration,
    ) -> Result<String, DispatchError> {
        // A task that already ended (its one reply taken by an earlier wait)
        // or never existed is answered at once, not after a full timeout.
        match self.status(task_id).await? {
            TaskRecord {
                status: Some(TaskStatus::Completed),
                output,
                ..
            } => return Ok(output.unwrap_or_default()),
            TaskRecord {
                status: Some(TaskStatus::Error),
                error,
                ..
            } => {
                return Err(DispatchError::ScriptError {
                    task_id: *task_id,
                    message: error.unwrap_or_default(),
                });
            }
            _ => {}
        }
        let mut pipe = redis::pipe();
        pipe.cmd("BLPOP")
            .arg(task_reply_key(task_id))
            .arg(blpop_timeout(timeout));
        match self.wait_reply(task_id, None, timeout, pipe.clone()).await {
            // A pooled connection that died with a Redis restart: waiting is
            // idempotent, so try once more on a fresh one.
            Err(DispatchError::Redis(e)) if is_transport(&e) => {
                self.inner
                    .waiters
                    .lock()
                    .expect("waiter pool poisoned")
                    .clear();
                self.wait_reply(task_id, None, timeout, pipe).await
            }
            other => other,
        }
    }

    /// The offline error for `circle`, with when its worker was last seen.
    async fn offline(&self, circle: &CirclePublicKey) -> DispatchError {
        let last_seen = self
            .query_idempotent::<Option<String>>(
                redis::cmd("HGET").arg(LAST_SEEN_HASH).arg(circle.to_hex()),
            )
            .await
            .ok()
            .flatten();
        DispatchError::CircleOffline {
            circle: circle.to_hex(),
            last_seen,
        }
    }

    /// Submits and waits in one round trip.
    pub async fn run(
        &self,
        circle: &CirclePublicKey,
        script: &str,
        timeout: Duration,
    ) -> Result<String, DispatchError> {
        self.run_as(circle, script, timeout, &self.inner.caller_id)
            .await
    }

    /// [`Self::run`] with an explicit caller id.
    pub async fn run_as(
        &self,
        circle: &CirclePublicKey,
        script: &str,
        timeout: Duration,
        caller_id: &str,
    ) -> Result<String, DispatchError> {
        self.run_task(TaskId::new(), circle, script, timeout, caller_id)
            .await
    }

    /// [`Self::run_as`] under an id the caller chose, so that a caller that
    /// gives up on its own timer still knows which task is out there.
    pub async fn run_task(
        &self,
        task_id: TaskId,
        circle: &CirclePublicKey,
        script: &str,
        timeout: Duration,
        caller_id: &str,
    ) -> Result<String, DispatchError> {
        let check = if self.policy.run_needs_live_worker {
            OfflineCheck::Reply
        } else {
            OfflineCheck::Queue
        };
        let submit_and_wait = |check| -> Result<Pipeline, DispatchError> {
            let mut pipe =
                self.submit_pipeline(circle, &task_id, script, timeout, caller_id, check)?;
            pipe.cmd("BLPOP")
                .arg(task_reply_key(task_id))
                .arg(blpop_timeout(timeout));
            Ok(pipe)
        };
        match self
            .wait_reply(&task_id, Some(circle), timeout, submit_and_wait(check)?)
            .await
        {
            // The blocking connection broke (Redis restarted, say). The
            // submission is atomic, so the task hash tells whether it got
            // through: then only the wait is repeated. If there is no hash,
            // either the submission never arrived or a Redis that restarted
            // empty lost it — possibly after a worker took it. It is sent
            // again under the same id and without the liveness check (this
            // call already passed it): a worker that did run it recognises
            // the id and answers with the outcome it has instead of running
            // the script twice.
            Err(DispatchError::Redis(e)) if is_transport(&e) => {
                tracing::debug!(%task_id, error = %e, "blocking connection lost; retrying on a fresh one");
                self.inner
                    .waiters
                    .lock()
                    .expect("waiter pool poisoned")
                    .clear();
                let submitted: bool = self
                    .query_idempotent(redis::cmd("EXISTS").arg(task_details_key(task_id)))
                    .await?;
                if submitted {
                    self.await_result(&task_id, timeout).await
                } else {
                    self.wait_reply(
                        &task_id,
                        Some(circle),
                        timeout,
                        submit_and_wait(OfflineCheck::Queue)?,
                    )
                    .await
                }
            }
            other => other,
        }
    }

    /// Reads a task's hash.
    pub async fn status(&self, task_id: &TaskId) -> Result<TaskRecord, DispatchError> {
        let fields: std::collections::HashMap<String, Vec<u8>> = self
            .query_idempotent(redis::cmd("HGETALL").arg(task_details_key(task_id)))
            .await?;
        if fields.is_empty() {
            return Err(DispatchError::TaskNotFound(*task_id));
        }
        Ok(TaskRecord::from_fields(*task_id, fields))
    }

    /// Runs `pipe`, whose last command is the `BLPOP`, on a blocking
    /// connection. `circle` is the circle a submission in `pipe` is for, to
    /// name it when the reply says it is offline.
    async fn wait_reply(
        &self,
        task_id: &TaskId,
        circle: Option<&CirclePublicKey>,
        timeout: Duration,
        pipe: Pipeline,
    ) -> Result<String, DispatchError> {
        // A free wait slot is waited for at most `timeout`; until then
        // nothing is sent (so nothing is queued when none comes free), and
        // the wait for the reply then has its whole `timeout` again.
        let _slot = tokio::time::timeout(timeout, self.inner.wait_slots.acquire())
            .await
            .map_err(|_| match circle {
                // A submission: it was not sent.
                Some(_) => DispatchError::Busy {
                    in_flight: MAX_BLOCKING_WAITS,
                },
                // A wait for a task already queued: it is still out there.
                None => DispatchError::Timeout {
                    task_id: *task_id,
                    waited: timeout,
                },
            })?
            .expect("the semaphore is never closed");
        let mut conn = self.take_waiter().await?;
        let query = pipe.query_async::<Vec<redis::Value>>(&mut conn);
        let values = match tokio::time::timeout(timeout + TRANSPORT_SLACK, query).await {
            Ok(result) => result?,
            // The server should have answered nil by now: the connection is
            // suspect, so drop it instead of returning it to the pool.
            Err(_) => {
                return Err(DispatchError::Timeout {
                    task_id: *task_id,
                    waited: timeout,
                });
            }
        };
        self.return_waiter(conn);
        let reply = values.into_iter().last().unwrap_or(redis::Value::Nil);
        let entry: Option<(String, String)> = redis::from_redis_value(reply).map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected BLPOP reply",
                e.to_string(),
            ))
        })?;
        let outcome = match entry {
            Some((_, entry)) if entry.starts_with(r#"{"status":"offline""#) => {
                let offline: OfflineReply = serde_json::from_str(&entry).map_err(|e| {
                    redis::RedisError::from((
                        redis::ErrorKind::Parse,
                        "unexpected offline reply",
                        e.to_string(),
                    ))
                })?;
                debug_assert_eq!(offline.status, "offline");
                return Err(DispatchError::CircleOffline {
                    circle: circle.map(|c| c.to_hex()).unwrap_or_default(),
                    last_seen: offline.last_seen,
                });
            }
            Some((_, entry)) => TaskOutcome::from_reply(&entry),
            // No reply: the task may still have ended, its one reply taken
            // by an earlier wait (a retried or repeated `wait`). The hash
            // knows.
            None => match self.status(task_id).await {
                Ok(TaskRecord {
                    status: Some(TaskStatus::Completed),
                    output,
                    ..
                }) => TaskOutcome::Completed {
                    output: output.unwrap_or_default(),
                },
                Ok(TaskRecord {
                    status: Some(TaskStatus::Error),
                    error,
                    ..
                }) => TaskOutcome::Error {
                    error: error.unwrap_or_default(),
                },
                _ => {
                    return Err(DispatchError::Timeout {
                        task_id: *task_id,
                        waited: timeout,
                    });
                }
            },
        };
        match outcome {
            TaskOutcome::Completed { output } => Ok(output),
            TaskOutcome::Error { error } => Err(DispatchError::ScriptError {
                task_id: *task_id,
                message: error,
            }),
        }
    }

    async fn take_waiter(&self) -> Result<MultiplexedConnection, DispatchError> {
        let idle = self
            .inner
            .waiters
            .lock()
            .expect("waiter pool poisoned")
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => self
                .inner
                .client
                .get_multiplexed_async_connection_with_config(&blocking_config())
                .await
                .map_err(|source| DispatchError::RedisUnavailable {
                    url: self.inner.url.clone(),
                    source,
                }),
        }
    }

    fn return_waiter(&self, conn: MultiplexedConnection) {
        let mut idle = self.inner.waiters.lock().expect("waiter pool poisoned");
        if idle.len() < MAX_IDLE_WAITERS {
            idle.push(conn);
        }
    }
}

impl Dispatcher {
    /// [`SUBMIT_SCRIPT`] as a plain pipeline, so that a `BLPOP` can follow
    /// it in the same write. Refuses empty and oversized scripts first.
    fn submit_pipeline(
        &self,
        circle: &CirclePublicKey,
        task_id: &TaskId,
        script: &str,
        timeout: Duration,
        caller_id: &str,
        check: OfflineCheck,
    ) -> Result<Pipeline, DispatchError> {
        if script.trim().is_empty() {
            return Err(DispatchError::EmptyScript);
        }
        if script.len() > self.policy.max_script_bytes {
            return Err(DispatchError::ScriptTooLarge {
                size: script.len(),
                max: self.policy.max_script_bytes,
            });
        }
        Ok(task_pipeline(
            circle,
            task_id,
            &[(field::SCRIPT, script)],
            timeout,
            caller_id,
            check,
        ))
    }

    /// Asks the circle's live worker for a consistent snapshot of its
    /// database, written into its database directory on its own host, and
    /// waits up to `timeout` for the report saying where. Fails with
    /// [`DispatchError::CircleOffline`] when no worker serves the circle.
    ///
    /// A snapshot task carries no script; only trusted Redis clients can
    /// ask for one (the WebSocket server submits scripts only).
    pub async fn snapshot(
        &self,
        circle: &CirclePublicKey,
        timeout: Duration,
    ) -> Result<SnapshotReport, DispatchError> {
        let task_id = TaskId::new();
        let mut pipe = task_pipeline(
            circle,
            &task_id,
            &[(field::KIND, TaskKind::Snapshot.as_str())],
            timeout,
            &self.inner.caller_id,
            OfflineCheck::Reply,
        );
        pipe.cmd("BLPOP")
            .arg(task_reply_key(task_id))
            .arg(blpop_timeout(timeout));
        let output = self
            .wait_reply(&task_id, Some(circle), timeout, pipe)
            .await?;
        let report: SnapshotReport =
            serde_json::from_str(&output).map_err(|e| DispatchError::ScriptError {
                task_id,
                message: format!(
                    "the worker answered a snapshot request with something else ({e}): {}",
                    crate::text::clip(&output, 200)
                ),
            })?;
        // The file is read and then deleted by whoever asked: it must be the
        // one the protocol names for this task, nothing a forged reply picks.
        let expected = format!("/{SNAPSHOT_DIR}/{task_id}.jsonl");
        if !report.file.starts_with('/')
            || !report.file.ends_with(&expected)
            || report.file.contains("/../")
        {
            return Err(DispatchError::ScriptError {
                task_id,
                message: format!(
                    "the worker's snapshot path {} is not the one this request names (…{expected})",
                    crate::text::clip(&report.file, 200)
                ),
            });
        }
        Ok(report)
    }

    /// Every circle registered in Redis: see [`crate::fleet`].
    pub async fn fleet(&self) -> Result<Vec<FleetEntry>, DispatchError> {
        crate::fleet::read_fleet(&mut self.inner.commands.clone()).await
    }
}

/// [`SUBMIT_SCRIPT`] for a task made of `fields` plus the ones every task
/// has (status, caller, circle, times, timeout).
fn task_pipeline(
    circle: &CirclePublicKey,
    task_id: &TaskId,
    fields: &[(&str, &str)],
    timeout: Duration,
    caller_id: &str,
    check: OfflineCheck,
) -> Pipeline {
    let now = now_rfc3339();
    let circle_hex = circle.to_hex();
    let mut pipe = redis::pipe();
    let eval = pipe
        .cmd("EVAL")
        .arg(SUBMIT_SCRIPT)
        .arg(5)
        .arg(task_details_key(task_id))
        .arg(task_queue_key(circle))
        .arg(worker_heartbeat_key(circle))
        .arg(task_reply_key(task_id))
        .arg(LAST_SEEN_HASH)
        .arg(task_id.to_string())
        .arg(check.as_str())
        .arg(&circle_hex);
    for (name, value) in fields {
        eval.arg(*name).arg(*value);
    }
    eval.arg(field::STATUS)
        .arg(TaskStatus::Pending.as_str())
        .arg(field::CALLER_ID)
        .arg(caller_id)
        .arg(field::CONTEXT_ID)
        .arg(&circle_hex)
        .arg(field::CREATED_AT)
        .arg(&now)
        .arg(field::UPDATED_AT)
        .arg(&now)
        .arg(field::TIMEOUT_SECS)
        // Rounded up: the worker must not stop a script before its caller gives up.
        .arg(timeout.as_secs_f64().ceil().max(1.0) as u64);
    pipe
}

/// `BLPOP` takes seconds as a float; 0 would mean "forever", which a caller
/// with a timeout never wants.
fn blpop_timeout(timeout: Duration) -> f64 {
    timeout.as_secs_f64().max(0.001)
}

fn command_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(2)
}

/// Errors that mean the connection, not the command, failed.
fn is_transport(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// Blocking commands must not be cut off by a response timeout: the
/// server-side timeout bounds them, and `wait_reply` adds a transport guard.
fn blocking_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(None)
}
