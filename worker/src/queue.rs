//! The worker's side of the Redis task protocol.
//!
//! A task is taken with `BLMOVE rhai_tasks:<pk> → rhai_processing:<pk>`, so
//! at every instant a task id is either queued, in the processing list, or
//! finished — never only in a worker's memory. Finishing is one `MULTI`
//! that writes the outcome, pushes the reply, sets expiry and removes the id
//! from the processing list.

use std::collections::HashMap;
use std::time::Duration;

use circles_dispatcher::protocol::{
    processing_key, task_details_key, task_queue_key, task_reply_key,
};
use circles_dispatcher::task::{field, now_rfc3339};
use circles_dispatcher::{CirclePublicKey, TaskId, TaskOutcome, TaskRecord, TaskStatus};
use redis::aio::ConnectionManager;
use redis::{Direction, RedisResult};

/// A circle's queue as seen by its worker.
#[derive(Clone)]
pub struct TaskQueue {
    circle: CirclePublicKey,
    queue_key: String,
    processing_key: String,
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

/// What was found under a task id taken from the queue.
#[derive(Debug)]
pub enum Taken {
    /// A runnable task.
    Task(TaskRecord),
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
        match &record.script {
            Some(s) if !s.trim().is_empty() => Ok(Taken::Task(record)),
            _ => Ok(Taken::Broken(format!("task {id} has no script"))),
        }
    }

    /// Ends the task: stores the outcome, replies, sets expiry and removes
    /// it from the processing list, atomically.
    pub async fn finish(
        &self,
        conn: &mut ConnectionManager,
        raw_id: &str,
        outcome: &TaskOutcome,
    ) -> RedisResult<()> {
        // Keyed by the raw id, so even ids that are not UUIDs get their
        // reply and a hand-written client waiting on it is not left hanging.
        let (details, reply) = (task_details_key(raw_id), task_reply_key(raw_id));
        let mut pipe = redis::pipe();
        pipe.atomic();
        let (value_field, value) = match outcome {
            TaskOutcome::Completed { output } => (field::OUTPUT, output),
            TaskOutcome::Error { error } => (field::ERROR, error),
        };
        pipe.cmd("HSET")
            .arg(&details)
            .arg(field::STATUS)
            .arg(outcome.status().as_str())
            .arg(value_field)
            .arg(value)
            .arg(field::UPDATED_AT)
            .arg(now_rfc3339())
            .ignore();
        pipe.cmd("LPUSH")
            .arg(&reply)
            .arg(outcome.to_reply())
            .ignore();
        if let Some(retention) = self.retention {
            let secs = retention.as_secs().max(1);
            pipe.cmd("EXPIRE").arg(&details).arg(secs).ignore();
            pipe.cmd("EXPIRE").arg(&reply).arg(secs).ignore();
        }
        pipe.cmd("LREM")
            .arg(&self.processing_key)
            .arg(1)
            .arg(raw_id)
            .ignore();
        pipe.query_async::<()>(conn).await
    }

    /// Ends every task a dead predecessor had taken, as `error` with a reason.
    /// Returns how many there were.
    pub async fn recover_abandoned(&self, conn: &mut ConnectionManager) -> RedisResult<usize> {
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
            self.finish(conn, id, &outcome).await?;
        }
        Ok(ids.len())
    }

    /// Ends every queued task as `error`, so no client waits for a worker
    /// that is gone. Returns how many there were.
    pub async fn fail_pending(
        &self,
        conn: &mut ConnectionManager,
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
