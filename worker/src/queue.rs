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
    owner_key, processing_key, task_details_key, task_queue_key, task_reply_key,
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

/// Finishes a task if this worker may: `0` when the lease is not exactly
/// ours, `2` when the id is no longer in the processing list (a successor
/// ended it), else `1` after removing it, writing the outcome, replying and
/// setting expiry.
/// KEYS: lease, processing list, task hash, reply list.
/// ARGV: lease value, task id, retention secs (0: keep), reply, then the
/// hash's field/value pairs.
const FINISH_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('LREM', KEYS[2], 1, ARGV[2]) == 0 then return 2 end
redis.call('HSET', KEYS[3], unpack(ARGV, 5))
redis.call('LPUSH', KEYS[4], ARGV[4])
local keep = tonumber(ARGV[3])
if keep > 0 then
  redis.call('EXPIRE', KEYS[3], keep)
  redis.call('EXPIRE', KEYS[4], keep)
end
return 1
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
        let Ok(id) = raw_id.parse::<TaskId>() else {
            return Ok(Taken::Broken(format!(
                "task id `{}` is not a UUID",
                raw_id.escape_debug()
            )));
        };
        let key = task_details_key(id);
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
        if fields.is_empty() {
            return Ok(Taken::Broken(format!(
                "task {id} has no details hash (expired or never written)"
            )));
        }
        let record = TaskRecord::from_fields(id, fields);
        match record.kind.as_deref().map(str::parse::<TaskKind>) {
            None | Some(Ok(TaskKind::Script)) => {}
            Some(Ok(TaskKind::Snapshot)) => return Ok(Taken::Snapshot(record)),
            Some(Err(e)) => return Ok(Taken::Broken(format!("task {id}: {e}"))),
        }
        match &record.script {
            Some(s) if !s.trim().is_empty() => Ok(Taken::Task(record)),
            _ => Ok(Taken::Broken(format!("task {id} has no script"))),
        }
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
        // Keyed by the raw id, so even ids that are not UUIDs get their
        // reply and a hand-written client waiting on it is not left hanging.
        let (value_field, value) = match outcome {
            TaskOutcome::Completed { output } => (field::OUTPUT, output),
            TaskOutcome::Error { error } => (field::ERROR, error),
        };
        let done: i64 = redis::cmd("EVAL")
            .arg(FINISH_SCRIPT)
            .arg(4)
            .arg(&self.owner_key)
            .arg(&self.processing_key)
            .arg(task_details_key(raw_id))
            .arg(task_reply_key(raw_id))
            .arg(lease)
            .arg(raw_id)
            .arg(self.retention.map_or(0, |r| r.as_secs().max(1)))
            .arg(outcome.to_reply())
            .arg(field::STATUS)
            .arg(outcome.status().as_str())
            .arg(value_field)
            .arg(value)
            .arg(field::UPDATED_AT)
            .arg(now_rfc3339())
            .query_async(conn)
            .await?;
        Ok(match done {
            1 => Finished::Done,
            0 => Finished::NotOwner,
            _ => Finished::NotInHand,
        })
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
            self.finish(
                conn,
                lease,
                &id,
                &TaskOutcome::Error {
                    error: reason.to_string(),
                },
            )
            .await?;
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
