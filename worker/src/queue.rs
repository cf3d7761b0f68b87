//! The worker's side of the Redis task protocol.
//!
//! A task is taken with `BLMOVE rhai_tasks:<pk> → rhai_processing:<pk>`, so
//! at every instant a task id is either queued, in the processing list, or
//! finished — never only in a worker's memory. Finishing is one script that,
//! only if this worker still owns the circle (its lease, see
//! [`crate::lease`]) and the id is still in the processing list, removes it
//! from there, writes the outcome, pushes the reply and sets expiry.

use std::collections::HashMap;
use std::time::Duration;

use circles_dispatcher::protocol::{
    OWNER_LEASE_MS, TASK_DETAILS_PREFIX, owner_key, processing_key, task_details_key,
    task_queue_key, task_reply_key,
};
use circles_dispatcher::task::{field, now_rfc3339};
use circles_dispatcher::{CirclePublicKey, TaskId, TaskKind, TaskOutcome, TaskRecord, TaskStatus};
use redis::aio::ConnectionManager;
use redis::{Direction, RedisResult};

/// A circle's queue as seen by its worker.
#[derive(Clone)]
pub struct TaskQueue {
    circle: CirclePublicKey,
    queue_key: String,
    processing_key: String,
    owner_key: String,
    /// `None`: finished tasks are kept forever (`PRESERVE_TASKS`).
    retention: Option<Duration>,
}

impl std::fmt::Debug for TaskQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskQueue")
            .field("circle", &self.circle)
            .finish_non_exhaustive()
    }
}

/// Finishes a task if this worker may: `0` when another worker holds the
/// lease (an absent lease — a Redis that restarted empty — is taken back),
/// `2` when the id is no longer in the processing list (a successor ended
/// it), else `1` after removing it, writing the outcome, replying and
/// setting expiry.
/// KEYS: lease, processing list, task hash, reply list, queue.
/// ARGV: lease value, task id, retention secs (0: keep), reply, take next
/// ("1"/"0"), task hash prefix, now, lease ms, then the hash's field/value
/// pairs.
///
/// Then — only when it finished the task and ARGV[5] is "1" — moves the
/// next queued id to the processing list, reads its hash and marks it
/// processing. Answers `{code}` or `{code, id, fields}`.
const FINISH_AND_TAKE_SCRIPT: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder ~= ARGV[1] then
  if holder then return {0} end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[8])
end
if redis.call('LREM', KEYS[2], 1, ARGV[2]) == 0 then return {2} end
redis.call('HSET', KEYS[3], unpack(ARGV, 9))
redis.call('LPUSH', KEYS[4], ARGV[4])
local keep = tonumber(ARGV[3])
if keep > 0 then
  redis.call('EXPIRE', KEYS[3], keep)
  redis.call('EXPIRE', KEYS[4], keep)
end
if ARGV[5] ~= '1' then return {1} end
local id = redis.call('LMOVE', KEYS[5], KEYS[2], 'RIGHT', 'LEFT')
if not id then return {1} end
local key = ARGV[6] .. id
local fields = redis.call('HGETALL', key)
if #fields > 0 then
  redis.call('HSET', key, 'status', 'processing', 'updated_at', ARGV[7])
end
return {1, id, fields}
"#;

/// Puts ids this worker took back at the front of the queue (the end
/// `BLMOVE` takes from), for whoever owns the circle now — each only if it
/// is still in the processing list (a successor's recovery may have ended
/// it already). KEYS: processing list, queue. ARGV: the ids.
const GIVE_BACK_SCRIPT: &str = r#"
local n = 0
for i = 1, #ARGV do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) > 0 then
    redis.call('RPUSH', KEYS[2], ARGV[i])
    n = n + 1
  end
end
return n
"#;

/// What [`TaskQueue::finish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Outcome written, reply pushed.
    Done,
    /// Another worker owns the circle now: nothing written.
    NotOwner,
    /// The task was no longer ours to finish (ended by a successor).
    NotInHand,
}

fn unexpected(what: &str, e: impl std::fmt::Display) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected answer from the finish script",
        format!("{what}: {e}"),
    ))
}

impl Finished {
    fn from_code(code: i64) -> RedisResult<Self> {
        match code {
            1 => Ok(Self::Done),
            0 => Ok(Self::NotOwner),
            2 => Ok(Self::NotInHand),
            other => Err(unexpected("finish code", other)),
        }
    }
}

/// What was found under a task id taken from the queue.
#[derive(Debug)]
pub enum Taken {
    /// A runnable task.
    Task(TaskRecord),
    /// A request for a snapshot of the circle's database (see
    /// [`crate::snapshot`]).
    Snapshot(TaskRecord),
    /// The id is not a UUID or its hash is missing or has no script; it must
    /// be ended as an error with this message.
    Broken(String),
}

impl TaskQueue {
    /// The queue of `circle`.
    pub fn new(circle: CirclePublicKey, retention: Option<Duration>) -> Self {
        Self {
            queue_key: task_queue_key(&circle),
            processing_key: processing_key(&circle),
            owner_key: owner_key(&circle),
            circle,
            retention,
        }
    }

    /// The circle served.
    pub fn circle(&self) -> &CirclePublicKey {
        &self.circle
    }

    /// Waits up to `wait` for a task id and moves it to the processing list.
    pub async fn take(
        &self,
        conn: &mut (impl redis::aio::ConnectionLike + Send),
        wait: Duration,
    ) -> RedisResult<Option<String>> {
        redis::cmd("BLMOVE")
            .arg(&self.queue_key)
            .arg(&self.processing_key)
            .arg(Direction::Right)
            .arg(Direction::Left)
            .arg(wait.as_secs_f64())
            .query_async(conn)
            .await
    }

    /// Reads the task and marks it `processing`, in one round trip.
    pub async fn load(&self, conn: &mut ConnectionManager, raw_id: &str) -> RedisResult<Taken> {
        if raw_id.parse::<TaskId>().is_err() {
            return Ok(self.taken(raw_id, HashMap::new()));
        }
        let key = task_details_key(raw_id);
        let (fields, ()): (HashMap<String, Vec<u8>>, ()) = redis::pipe()
            .cmd("HGETALL")
            .arg(&key)
            .cmd("HSET")
            .arg(&key)
            .arg(field::STATUS)
            .arg(TaskStatus::Processing.as_str())
            .arg(field::UPDATED_AT)
            .arg(now_rfc3339())
            .query_async(conn)
            .await?;
        Ok(self.taken(raw_id, fields))
    }

    /// What a taken id and its hash's fields make.
    fn taken(&self, raw_id: &str, fields: HashMap<String, Vec<u8>>) -> Taken {
        let Ok(id) = raw_id.parse::<TaskId>() else {
            return Taken::Broken(format!("task id `{}` is not a UUID", raw_id.escape_debug()));
        };
        if fields.is_empty() {
            return Taken::Broken(format!(
                "task {id} has no details hash (expired or never written)"
            ));
        }
        let record = TaskRecord::from_fields(id, fields);
        match record.kind.as_deref().map(str::parse::<TaskKind>) {
            None | Some(Ok(TaskKind::Script)) => {}
            Some(Ok(TaskKind::Snapshot)) => return Taken::Snapshot(record),
            Some(Err(e)) => return Taken::Broken(format!("task {id}: {e}")),
        }
        match &record.script {
            Some(s) if !s.trim().is_empty() => Taken::Task(record),
            _ => Taken::Broken(format!("task {id} has no script")),
        }
    }

    /// Finishes a task like [`Self::finish`] and, in the same script and
    /// round trip, takes and loads the next queued task if there is one
    /// (`take_next`) — so that under load a task costs the worker one round
    /// trip. Nothing is taken when the finish was refused.
    pub async fn finish_and_take(
        &self,
        conn: &mut ConnectionManager,
        lease: &str,
        raw_id: &str,
        outcome: &TaskOutcome,
        take_next: bool,
    ) -> RedisResult<(Finished, Option<(String, Taken)>)> {
        let cmd = self.finish_cmd(lease, raw_id, outcome, take_next);
        let answer: Vec<redis::Value> = cmd.query_async(conn).await?;
        let mut answer = answer.into_iter();
        let done: i64 = redis::from_redis_value(answer.next().unwrap_or(redis::Value::Nil))
            .map_err(|e| unexpected("finish code", e))?;
        let next = match (answer.next(), answer.next()) {
            (Some(id), Some(fields)) => {
                let id: String =
                    redis::from_redis_value(id).map_err(|e| unexpected("task id", e))?;
                let fields: HashMap<String, Vec<u8>> =
                    redis::from_redis_value(fields).map_err(|e| unexpected("task fields", e))?;
                let taken = self.taken(&id, fields);
                Some((id, taken))
            }
            _ => None,
        };
        Ok((Finished::from_code(done)?, next))
    }

    /// The ids in the processing list other than `except`, oldest first:
    /// with one worker per circle, tasks this worker took but lost track of
    /// (a take whose answer a broken connection swallowed).
    pub async fn stray(
        &self,
        conn: &mut ConnectionManager,
        except: &str,
    ) -> RedisResult<Vec<String>> {
        let ids: Vec<String> = redis::cmd("LRANGE")
            .arg(&self.processing_key)
            .arg(0)
            .arg(-1)
            .query_async(conn)
            .await?;
        Ok(ids.into_iter().rev().filter(|id| id != except).collect())
    }

    /// Ends the task, fenced by `lease` (the exact lease value this worker
    /// holds): removes it from the processing list, stores the outcome,
    /// replies and sets expiry, in one script — or does nothing and says why.
    pub async fn finish(
        &self,
        conn: &mut ConnectionManager,
        lease: &str,
        raw_id: &str,
        outcome: &TaskOutcome,
    ) -> RedisResult<Finished> {
        Ok(self
            .finish_and_take(conn, lease, raw_id, outcome, false)
            .await?
            .0)
    }

    /// Gives `ids` (taken by this worker, not run) back to the queue, for
    /// the circle's owner now; returns how many were still ours to give.
    pub async fn give_back(
        &self,
        conn: &mut ConnectionManager,
        ids: &[String],
    ) -> RedisResult<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        redis::cmd("EVAL")
            .arg(GIVE_BACK_SCRIPT)
            .arg(2)
            .arg(&self.processing_key)
            .arg(&self.queue_key)
            .arg(ids)
            .query_async(conn)
            .await
    }

    /// The `EVAL` of `script` (one of the finish scripts) for this task.
    /// Keyed by the raw id, so even ids that are not UUIDs get their reply
    /// and a hand-written client waiting on it is not left hanging.
    fn finish_cmd(
        &self,
        lease: &str,
        raw_id: &str,
        outcome: &TaskOutcome,
        take_next: bool,
    ) -> redis::Cmd {
        let (value_field, value) = match outcome {
            TaskOutcome::Completed { output } => (field::OUTPUT, output),
            TaskOutcome::Error { error } => (field::ERROR, error),
        };
        let now = now_rfc3339();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(FINISH_AND_TAKE_SCRIPT)
            .arg(5)
            .arg(&self.owner_key)
            .arg(&self.processing_key)
            .arg(task_details_key(raw_id))
            .arg(task_reply_key(raw_id))
            .arg(&self.queue_key)
            .arg(lease)
            .arg(raw_id)
            .arg(self.retention.map_or(0, |r| r.as_secs().max(1)))
            .arg(outcome.to_reply())
            .arg(if take_next { "1" } else { "0" })
            .arg(TASK_DETAILS_PREFIX)
            .arg(&now)
            .arg(OWNER_LEASE_MS)
            .arg(field::STATUS)
            .arg(outcome.status().as_str())
            .arg(value_field)
            .arg(value)
            .arg(field::UPDATED_AT)
            .arg(&now);
        cmd
    }

    /// Ends every task a dead predecessor had taken, as `error` with a reason.
    /// Returns how many there were.
    pub async fn recover_abandoned(
        &self,
        conn: &mut ConnectionManager,
        lease: &str,
    ) -> RedisResult<usize> {
        let ids: Vec<String> = redis::cmd("LRANGE")
            .arg(&self.processing_key)
            .arg(0)
            .arg(-1)
            .query_async(conn)
            .await?;
        for id in &ids {
            tracing::warn!(task_id = %id, "ending a task abandoned by a previous worker");
            let outcome = TaskOutcome::Error {
                error: "worker stopped unexpectedly while running this task (it was killed or crashed); the task was not completed".into(),
            };
            self.finish(conn, lease, id, &outcome).await?;
        }
        Ok(ids.len())
    }

    /// Ends every queued task as `error`, so no client waits for a worker
    /// that is gone. Returns how many there were.
    pub async fn fail_pending(
        &self,
        conn: &mut ConnectionManager,
        lease: &str,
        reason: &str,
    ) -> RedisResult<usize> {
        let mut n = 0;
        loop {
            // Move first, then finish from the processing list: a crash in
            // between leaves the id where the next worker will answer it.
            let Some(id) = redis::cmd("LMOVE")
                .arg(&self.queue_key)
                .arg(&self.processing_key)
                .arg(Direction::Right)
                .arg(Direction::Left)
                .query_async::<Option<String>>(conn)
                .await?
            else {
                return Ok(n);
            };
            let finished = self
                .finish(
                    conn,
                    lease,
                    &id,
                    &TaskOutcome::Error {
                        error: reason.to_string(),
                    },
                )
                .await?;
            if finished == Finished::NotOwner {
                // The queue is another worker's now: hand the id back.
                self.give_back(conn, std::slice::from_ref(&id)).await?;
                return Ok(n);
            }
            n += 1;
        }
    }

    /// Number of queued task ids.
    pub async fn depth(&self, conn: &mut ConnectionManager) -> RedisResult<u64> {
        redis::cmd("LLEN")
            .arg(&self.queue_key)
            .query_async(conn)
            .await
    }
}
