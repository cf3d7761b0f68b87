//! The worker's side of the Redis task protocol.
//!
//! A task is taken with `BLMOVE rhai_tasks:<pk> → rhai_processing:<pk>`, so
//! at every instant a task id is either queued, in the processing list, or
//! finished — never only in a worker's memory. Finishing is one script that,
//! only if this worker still owns the circle (its lease, see
//! [`crate::lease`]) and the id is still in the processing list, removes it
//! from there, writes the outcome, pushes the reply and sets expiry.

use std::collections::HashMap;
use std::sync::LazyLock;
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
///
/// Numeric arguments go to `redis.call` as strings: Redis 7.0 turns a Lua
/// number into an argument with `snprintf("%.17g")`, three per task here.
const FINISH_AND_TAKE_SCRIPT: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder ~= ARGV[1] then
  if holder then return {0} end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[8])
end
if redis.call('LREM', KEYS[2], '1', ARGV[2]) == 0 then return {2} end
redis.call('HSET', KEYS[3], unpack(ARGV, 9))
redis.call('LPUSH', KEYS[4], ARGV[4])
if ARGV[3] ~= '0' then
  redis.call('EXPIRE', KEYS[3], ARGV[3])
  redis.call('EXPIRE', KEYS[4], ARGV[3])
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
  if redis.call('LREM', KEYS[1], '1', ARGV[i]) > 0 then
    redis.call('RPUSH', KEYS[2], ARGV[i])
    n = n + 1
  end
end
return n
"#;

/// Formats Redis's own clock (`TIME`) the way [`now_rfc3339`] does
/// (`2026-12-01T22:22:01.123Z`): a script pipelined behind a blocking
/// command runs seconds after it was sent, so the sender cannot pass the
/// time. Days to civil date after Howard Hinnant's `civil_from_days`.
const RFC3339_LUA: &str = r#"
local function rfc3339(secs, micros)
  local days = math.floor(secs / 86400)
  local rem = secs - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', y, m, d,
    math.floor(rem / 3600), math.floor(rem / 60) % 60, rem % 60, math.floor(micros / 1000))
end
"#;

/// Reads the task a `BLMOVE` just moved to the head of the processing list
/// and marks it `processing` — pipelined behind that `BLMOVE` on the same
/// connection, so taking and loading a task is one round trip. Answers
/// `{}` when the list is empty, else `{id, fields}`; the caller checks the
/// id is the one `BLMOVE` answered (another client's command may run in
/// between). KEYS: processing list. ARGV: task hash prefix.
///
/// Sent by its hash: see [`load_take_script`] for when Redis does not know it.
static LOAD_TAKEN: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{RFC3339_LUA}{}",
        r#"
local id = redis.call('LINDEX', KEYS[1], 0)
if not id then return {} end
local key = ARGV[1] .. id
local fields = redis.call('HGETALL', key)
if #fields > 0 then
  local t = redis.call('TIME')
  redis.call('HSET', key, 'status', 'processing', 'updated_at', rfc3339(tonumber(t[1]), tonumber(t[2])))
end
return {id, fields}
"#
    ))
});

/// Tells Redis the script [`TaskQueue::take_loaded`] sends by its hash: on
/// every new connection of the taker. (Should Redis forget it — a `SCRIPT
/// FLUSH` — one take fails; the worker connects again, which loads it, and
/// finds the id that take's `BLMOVE` moved in the processing list, as after
/// any failed take.)
pub async fn load_take_script(conn: &mut impl redis::aio::ConnectionLike) -> RedisResult<()> {
    LOAD_TAKEN.load_async(conn).await.map(drop)
}

/// The SHA1 by which [`TaskQueue::take_loaded`] names its script (for
/// `SCRIPT EXISTS`).
pub fn take_script_sha1() -> &'static str {
    LOAD_TAKEN.get_hash()
}

/// [`FINISH_AND_TAKE_SCRIPT`] sent as `EVALSHA` (its text only when Redis
/// does not know it yet): Redis need not read and hash 900 bytes per task.
static FINISH_AND_TAKE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(FINISH_AND_TAKE_SCRIPT));

/// The processing list, only while this worker holds the lease (or nobody
/// does, as after a Redis that restarted empty), else `false`.
/// KEYS: lease, processing list. ARGV: lease value.
static STRAY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return false end
return redis.call('LRANGE', KEYS[2], 0, -1)
"#,
    )
});

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

    /// Waits up to `wait` for a task id, moves it to the processing list
    /// and, in the same round trip, loads it ([`LOAD_TAKEN`] pipelined
    /// behind the `BLMOVE`; [`load_take_script`] first). `Some((id, None))` when what the
    /// script found was not that id: the caller loads it with
    /// [`Self::load`].
    pub async fn take_loaded(
        &self,
        conn: &mut (impl redis::aio::ConnectionLike + Send),
        wait: Duration,
    ) -> RedisResult<Option<(String, Option<Taken>)>> {
        let (id, loaded): (Option<String>, Vec<redis::Value>) = redis::pipe()
            .cmd("BLMOVE")
            .arg(&self.queue_key)
            .arg(&self.processing_key)
            .arg(Direction::Right)
            .arg(Direction::Left)
            .arg(wait.as_secs_f64())
            .cmd("EVALSHA")
            .arg(LOAD_TAKEN.get_hash())
            .arg(1)
            .arg(&self.processing_key)
            .arg(TASK_DETAILS_PREFIX)
            .query_async(conn)
            .await?;
        let Some(id) = id else { return Ok(None) };
        let mut loaded = loaded.into_iter();
        let taken = match (loaded.next(), loaded.next()) {
            (Some(redis::Value::BulkString(head)), Some(fields)) if head == id.as_bytes() => {
                let fields: HashMap<String, Vec<u8>> =
                    redis::from_redis_value(fields).map_err(|e| unexpected("task fields", e))?;
                Some(self.taken(&id, fields))
            }
            _ => None,
        };
        Ok(Some((id, taken)))
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
        let answer: Vec<redis::Value> = self
            .finish_invocation(lease, raw_id, outcome, take_next)
            .invoke_async(conn)
            .await?;
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
    /// (a take whose answer a broken connection swallowed). `None` when the
    /// lease is another worker's: the list is then the owner's.
    pub async fn stray(
        &self,
        conn: &mut ConnectionManager,
        lease: &str,
        except: &str,
    ) -> RedisResult<Option<Vec<String>>> {
        let ids: Option<Vec<String>> = STRAY
            .key(&self.owner_key)
            .key(&self.processing_key)
            .arg(lease)
            .invoke_async(conn)
            .await?;
        Ok(ids.map(|ids| ids.into_iter().rev().filter(|id| id != except).collect()))
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

    /// The finish script's call for this task. Keyed by the raw id, so even
    /// ids that are not UUIDs get their reply and a hand-written client
    /// waiting on it is not left hanging.
    fn finish_invocation(
        &self,
        lease: &str,
        raw_id: &str,
        outcome: &TaskOutcome,
        take_next: bool,
    ) -> redis::ScriptInvocation<'static> {
        let (value_field, value) = match outcome {
            TaskOutcome::Completed { output } => (field::OUTPUT, output),
            TaskOutcome::Error { error } => (field::ERROR, error),
        };
        let now = now_rfc3339();
        let mut invocation = FINISH_AND_TAKE.prepare_invoke();
        invocation
            .key(&self.owner_key)
            .key(&self.processing_key)
            .key(task_details_key(raw_id))
            .key(task_reply_key(raw_id))
            .key(&self.queue_key)
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
        invocation
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The Lua clock formatting agrees with [`now_rfc3339`]'s format over
    /// leap days, century years and the ends of the range tasks can have.
    #[test]
    fn lua_rfc3339_matches_chrono() {
        let redis = circles_test_support::RedisServer::start();
        let script = format!(
            "{RFC3339_LUA} local out = {{}} for i = 1, #ARGV, 2 do \
             out[#out + 1] = rfc3339(tonumber(ARGV[i]), tonumber(ARGV[i + 1])) end return out"
        );
        let mut samples: Vec<(i64, u32)> = vec![
            (0, 0),
            (951_782_400, 999_999), // 2000-02-29
            (4_107_542_399, 1_000), // 2100-02-28T23:59:59
            (4_107_542_400, 0),     // 2100-03-01
            (1_709_164_800, 123_456),
            (253_402_300_799, 999_000), // 9999-12-31T23:59:59
        ];
        // And a day's worth of seconds apart across ninety years.
        samples.extend(
            (0..2_000).map(|i| (i * 1_414_213 + i % 86_400, (i as u32 * 7919) % 1_000_000)),
        );
        let mut args = vec!["EVAL".to_string(), script, "0".to_string()];
        for (secs, micros) in &samples {
            args.push(secs.to_string());
            args.push(micros.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = redis.cli(&args);
        let got: Vec<&str> = out.lines().collect();
        assert_eq!(got.len(), samples.len(), "{out}");
        for ((secs, micros), got) in samples.iter().zip(got) {
            let want = chrono::DateTime::from_timestamp(*secs, micros * 1_000)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            assert_eq!(got, want, "at {secs}.{micros:06}");
        }
    }
}
