//! The worker's main loop: connect, recover, announce readiness, then take
//! and run tasks one at a time until told to stop.

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use circles_dispatcher::protocol::{
    CIRCLES_SET, HEARTBEAT_TTL_SECS, LAST_SEEN_HASH, worker_heartbeat_key,
};
use circles_dispatcher::task::now_rfc3339;
use circles_dispatcher::{CirclePublicKey, TaskOutcome, WorkerHeartbeat};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;

use crate::WorkerError;
use crate::engine::{Limits, ScriptEngine};
use crate::lease::{HeldBy, Lease, host_name};
use crate::memory;
use crate::queue::{Finished, Taken, TaskQueue};
use crate::store::{CircleStore, database_file_name};

/// Everything a worker needs to know, resolved from its command line.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Redis URL.
    pub redis_url: String,
    /// The circle this worker serves.
    pub circle: CirclePublicKey,
    /// Directory holding `circle_db_<pk>.redb`.
    pub db_dir: PathBuf,
    /// Script limits.
    pub limits: Limits,
    /// How long finished tasks are kept; `None` keeps them (`PRESERVE_TASKS`).
    pub retention: Option<Duration>,
    /// On shutdown leave queued tasks queued for the next worker instead of
    /// ending them as errors (`PRESERVE_TASKS`, or `--keep-queued-on-stop`
    /// which service units use: they restart, and want expiry kept).
    pub keep_queued_on_stop: bool,
    /// How often the heartbeat key is refreshed.
    pub heartbeat_interval: Duration,
    /// Raised (by a signal handler) the moment a stop is asked for. The
    /// `shutdown` future tells the loop too, but only once the runtime polls
    /// it, which a script running on this thread delays; this flag is read
    /// before taking one more task together with a finish.
    pub stop_requested: Arc<AtomicBool>,
}

impl WorkerConfig {
    /// The database file of this circle.
    pub fn db_file(&self) -> PathBuf {
        self.db_dir.join(database_file_name(&self.circle.to_hex()))
    }
}

/// Heap allowed beyond twice the task budget before allocations fail: the
/// worker's own buffers (a script up to the size limit, its reply, Redis
/// connections) live there.
const HARD_LIMIT_HEADROOM: usize = 128 * 1024 * 1024;
/// How long one `BLMOVE` waits before the loop looks around again.
const TAKE_WAIT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Exponential backoff between Redis attempts (100 ms doubling to 5 s), so
/// an outage never turns into a tight loop.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(BACKOFF_MIN)
    }

    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }

    /// Logs `what` failed with `error`, then sleeps; `false` when stop was
    /// asked for meanwhile.
    async fn wait(
        &mut self,
        what: &str,
        error: &redis::RedisError,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        tracing::warn!(%error, retry_in = ?self.0, "Redis error while {what}; retrying");
        let stopped = tokio::select! {
            _ = stop.changed() => true,
            _ = tokio::time::sleep(self.0) => false,
        };
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        !stopped
    }
}

/// Runs the worker until `shutdown` resolves. The task in hand is always
/// finished first; then queued tasks are left (`preserve_tasks`) or ended as
/// errors, and the heartbeat is removed.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let queue = TaskQueue::new(config.circle, config.retention);

    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let Some(mut conn) = connect(&config.redis_url, &mut stop_rx).await? else {
        return Ok(());
    };
    // Connection for the blocking BLMOVE; short commands go on `conn`.
    let mut blocking = BlockingLink::new(&config.redis_url)?;

    // Ownership first: a second worker for this circle, on any host,
    // refuses here — before it opens (or creates) a database.
    let Some(acquired) = retry(&mut stop_rx, "taking the circle's lease", || {
        let mut c = conn.clone();
        let circle = config.circle;
        async move { Lease::acquire(&mut c, &circle).await }
    })
    .await
    else {
        return Ok(());
    };
    let lease = match acquired {
        Ok(lease) => lease,
        Err(HeldBy(owner)) => {
            return Err(WorkerError::AlreadyServed {
                circle: config.circle.to_hex(),
                host: owner.host,
                pid: owner.pid,
                since: owner.since,
            });
        }
    };

    // Only now, once this worker is known to be the circle's one worker:
    // a worker that refuses to start must not leave a database behind.
    let store = Arc::new(CircleStore::open(&config.db_file())?);
    tracing::info!(db = %store.path().display(), circle = %config.circle, "circle database open");
    let snapshots = Snapshots {
        store: store.clone(),
        db_dir: config.db_dir.clone(),
        host: host_name(),
    };
    let engine = Arc::new(ScriptEngine::new(store, config.limits.clone()));
    if config.limits.max_memory > 0 {
        // The per-task budget stops scripts between operations; this
        // ceiling only catches a single operation that jumps far past it.
        let ceiling = memory::allocated()
            .saturating_add(config.limits.max_memory.saturating_mul(2))
            .saturating_add(HARD_LIMIT_HEADROOM);
        memory::set_hard_limit(Some(ceiling));
    }

    // Tasks left in the processing list were taken by a worker whose lease
    // has ended (we hold it now): it is gone, frozen past its lease, or cut
    // off — none of them will finish these.
    let recovered = retry(&mut stop_rx, "recovering abandoned tasks", || {
        let (queue, mut c, fence) = (queue.clone(), conn.clone(), lease.value());
        async move { queue.recover_abandoned(&mut c, &fence).await }
    })
    .await;
    if let Some(n) = recovered.filter(|n| *n > 0) {
        tracing::warn!(
            count = n,
            "ended tasks abandoned by a previous worker as errors"
        );
    }

    let tasks_done = Arc::new(AtomicU64::new(0));
    let heartbeat = Heartbeat {
        key: worker_heartbeat_key(&config.circle),
        circle: config.circle.to_hex(),
        beat: WorkerHeartbeat {
            pid: std::process::id(),
            host: host_name(),
            db_dir: std::path::absolute(&config.db_dir)
                .unwrap_or_else(|_| config.db_dir.clone())
                .display()
                .to_string(),
            started_at: now_rfc3339(),
            beat_at: String::new(),
            tasks_done: 0,
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
        tasks_done: tasks_done.clone(),
        lease: lease.clone(),
    };
    // Registration and first heartbeat before READY, so whoever waits on
    // readiness can already route to this circle.
    let registered = retry(&mut stop_rx, "registering the worker", || {
        let (mut c, hb) = (conn.clone(), heartbeat.clone());
        async move { hb.beat(&mut c).await }
    })
    .await;
    if registered.is_none() {
        return Ok(());
    }
    let heartbeat_thread = heartbeat.clone().spawn(
        config.redis_url.clone(),
        config.heartbeat_interval,
        std::time::Instant::now(),
    );
    notify_ready(&config);
    tracing::info!(circle = %config.circle, queue = %circles_dispatcher::protocol::task_queue_key(&config.circle), "worker ready");

    let mut backoff = Backoff::new();
    let mut lost: Option<WorkerError> = None;
    // Tasks already taken and waiting to run: the next one a finish took
    // in the same round trip, or ones a broken connection lost track of.
    let mut in_hand: VecDeque<(String, Option<Taken>)> = VecDeque::new();
    let mut lost_outcomes = LostOutcomes::default();
    // Set when a take failed: it may have moved an id whose answer was lost.
    let mut look_for_strays = false;
    loop {
        let (raw_id, taken) = match in_hand.pop_front() {
            // Ours already: run it even if a stop came meanwhile.
            Some(next) => next,
            None => {
                // The flag too: it is raised in the signal handler, before
                // the runtime has passed the stop on (after a SIGSTOP, a
                // backoff's timer and the stop can be ready together).
                if *stop_rx.borrow() || config.stop_requested.load(Ordering::SeqCst) {
                    break;
                }
                // Nothing is in hand, so whatever the processing list holds
                // was taken by us and its answer lost. (On an error the take
                // below meets it too, and backs off.)
                if look_for_strays
                    && let Ok(stray) = queue.stray(&mut conn, &lease.value(), "").await
                {
                    look_for_strays = false;
                    match stray {
                        None => lease.mark_lost(),
                        Some(stray) if !stray.is_empty() => {
                            in_hand.extend(stray.into_iter().map(|id| (id, None)));
                            continue;
                        }
                        Some(_) => {}
                    }
                }
                match take_one(
                    &lease,
                    &mut conn,
                    &mut blocking,
                    &queue,
                    &mut stop_rx,
                    &mut backoff,
                )
                .await
                {
                    Take::Task(id, taken) => {
                        // A pause between the lease check and BLMOVE's
                        // answer: confirm before running anything.
                        if lease.needs_confirming()
                            && !matches!(lease.renew(&mut conn).await, Ok(true))
                            && lease.is_lost()
                        {
                            give_back(&queue, &mut conn, vec![id]).await;
                            lost = Some(lost_ownership(&mut conn, &config.circle).await);
                            break;
                        }
                        (id, taken.map(|taken| *taken))
                    }
                    Take::Again => continue,
                    Take::Failed => {
                        look_for_strays = true;
                        continue;
                    }
                    Take::Stop => break,
                    Take::Lost => {
                        lost = Some(lost_ownership(&mut conn, &config.circle).await);
                        break;
                    }
                }
            }
        };
        // A task whose outcome this worker already has (Redis lost it after
        // the run, and its client submitted it again): answer, do not rerun.
        let cached = lost_outcomes.take(&raw_id);
        // From here on the task is ours: finish it even if asked to stop.
        let taken = match taken {
            Some(taken) => taken,
            None => {
                retry_forever("loading a task", || {
                    let (queue, mut c, id) = (queue.clone(), conn.clone(), raw_id.clone());
                    async move { queue.load(&mut c, &id).await }
                })
                .await
            }
        };
        let outcome = match cached {
            Some(outcome) => {
                tracing::info!(task_id = %raw_id, "answering a resubmitted task with the outcome of its earlier run");
                outcome
            }
            None => run_task(&queue, &engine, &snapshots, &raw_id, taken),
        };
        // Finish, and take the next task in the same round trip unless
        // stopping or holding more already.
        let take_next = !*stop_rx.borrow()
            && !config.stop_requested.load(Ordering::Relaxed)
            && in_hand.is_empty()
            && !lease.is_lost();
        let finished = match queue
            .finish_and_take(&mut conn, &lease.value(), &raw_id, &outcome, take_next)
            .await
        {
            Ok((finished, next)) => {
                in_hand.extend(next.map(|(id, taken)| (id, Some(taken))));
                finished
            }
            Err(e) => {
                // The script may or may not have run: finish again (a
                // repeat finds the task gone and writes nothing), then pick
                // up whatever it took that we never heard of.
                tracing::warn!(error = %e, "Redis error while finishing a task; retrying");
                let finished = retry_forever("finishing a task", || {
                    let (queue, mut c, id, outcome, fence) = (
                        queue.clone(),
                        conn.clone(),
                        raw_id.clone(),
                        outcome.clone(),
                        lease.value(),
                    );
                    async move { queue.finish(&mut c, &fence, &id, &outcome).await }
                })
                .await;
                let stray = retry_forever("listing taken tasks", || {
                    let (queue, mut c, id, fence) =
                        (queue.clone(), conn.clone(), raw_id.clone(), lease.value());
                    async move { queue.stray(&mut c, &fence, &id).await }
                })
                .await;
                match stray {
                    Some(stray) => in_hand.extend(stray.into_iter().map(|id| (id, None))),
                    // The owner's now: the finish said so too, or will.
                    None => lease.mark_lost(),
                }
                finished
            }
        };
        match finished {
            Finished::Done => {
                tasks_done.fetch_add(1, Ordering::Relaxed);
            }
            Finished::NotInHand => {
                tracing::warn!(
                    task_id = %raw_id,
                    "the task is no longer in the processing list (a successor ended it, or Redis lost it); its result is kept for a while in case its client submits it again"
                );
                lost_outcomes.keep(raw_id, outcome);
            }
            Finished::NotOwner => {
                tracing::error!(task_id = %raw_id, "this worker lost its circle to another worker; giving its tasks back to the queue");
                lease.mark_lost();
                // The owner now runs them, on the circle's database.
                let mut ids = vec![raw_id];
                ids.extend(in_hand.drain(..).map(|(id, _)| id));
                give_back(&queue, &mut conn, ids).await;
                lost = Some(lost_ownership(&mut conn, &config.circle).await);
                break;
            }
        }
    }

    notify_stopping();
    heartbeat_thread.stop();
    if lost.is_none() && lease.is_lost() {
        lost = Some(lost_ownership(&mut conn, &config.circle).await);
    }
    if let Some(lost) = lost {
        // The circle is somebody else's now: its queue, heartbeat and lease
        // are not ours to touch.
        return Err(lost);
    }
    tracing::info!("shutting down");
    let cleanup = async {
        // A take whose answer was lost leaves its id in the processing list,
        // and a stop during the backoff that followed came before the worker
        // looked for it: never run, so back to the queue, where it stays for
        // the next worker or is ended below like every queued task — not left
        // for the next worker to end as "killed or crashed". (Ids whose run
        // this worker remembers are not given back: they ran.)
        if look_for_strays && let Some(strays) = queue.stray(&mut conn, &lease.value(), "").await? {
            let never_run: Vec<String> = strays
                .into_iter()
                .filter(|id| !lost_outcomes.contains(id))
                .collect();
            give_back(&queue, &mut conn, never_run).await;
        }
        if config.keep_queued_on_stop {
            let left = queue.depth(&mut conn).await?;
            tracing::info!(count = left, "queued tasks stay queued for the next worker");
        } else {
            let failed = queue
                .fail_pending(
                    &mut conn,
                    &lease.value(),
                    "worker shut down before running this task",
                )
                .await?;
            if failed > 0 {
                tracing::warn!(
                    count = failed,
                    "ended queued tasks as errors (PRESERVE_TASKS or --keep-queued-on-stop keep them)"
                );
            }
        }
        // The heartbeat goes with the lease, and only if the lease is
        // still ours: otherwise both belong to the circle's new owner.
        if !lease
            .release(&mut conn, &[worker_heartbeat_key(&config.circle)])
            .await?
        {
            tracing::warn!("the circle's lease was not ours any more; leaving its heartbeat");
        }
        Ok(())
    };
    if let Err(e) = tokio::time::timeout(Duration::from_secs(10), cleanup)
        .await
        .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))))
    {
        tracing::warn!(error = %e, "could not tidy the queue on shutdown; the next worker will");
    }
    Ok(())
}

/// Gives taken ids back to the queue (logged, never fatal: if Redis fails
/// here, the ids stay in the processing list for the next owner's recovery).
async fn give_back(queue: &TaskQueue, conn: &mut ConnectionManager, ids: Vec<String>) {
    match queue.give_back(conn, &ids).await {
        Ok(n) if n > 0 => tracing::warn!(
            count = n,
            "gave tasks back to the queue for the circle's owner"
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not give tasks back; the next owner's recovery ends them")
        }
    }
}

/// Outcomes of tasks this worker ran but could not deliver because Redis
/// had lost the task (it restarted empty). A client whose wait broke with
/// that restart submits the task again under the same id; the worker then
/// answers with the outcome it has instead of running the script twice.
/// Bounded in entries and bytes, and short-lived.
#[derive(Default)]
struct LostOutcomes {
    entries: VecDeque<(String, TaskOutcome, std::time::Instant)>,
    bytes: usize,
}

impl LostOutcomes {
    const MAX_ENTRIES: usize = 256;
    const MAX_BYTES: usize = 16 * 1024 * 1024;
    const KEEP_FOR: Duration = Duration::from_secs(300);

    fn keep(&mut self, id: String, outcome: TaskOutcome) {
        self.bytes += outcome_size(&outcome);
        self.entries
            .push_back((id, outcome, std::time::Instant::now()));
        while self.entries.len() > Self::MAX_ENTRIES || self.bytes > Self::MAX_BYTES {
            match self.entries.pop_front() {
                Some((_, o, _)) => self.bytes -= outcome_size(&o),
                None => break,
            }
        }
    }

    /// Whether this worker ran `id` and holds its outcome.
    fn contains(&self, id: &str) -> bool {
        self.entries.iter().any(|(i, _, _)| i == id)
    }

    fn take(&mut self, id: &str) -> Option<TaskOutcome> {
        while let Some((_, o, at)) = self.entries.front() {
            if at.elapsed() < Self::KEEP_FOR {
                break;
            }
            self.bytes -= outcome_size(o);
            self.entries.pop_front();
        }
        let at = self.entries.iter().position(|(i, _, _)| i == id)?;
        let (_, outcome, _) = self.entries.remove(at)?;
        self.bytes -= outcome_size(&outcome);
        Some(outcome)
    }
}

fn outcome_size(outcome: &TaskOutcome) -> usize {
    match outcome {
        TaskOutcome::Completed { output } => output.len(),
        TaskOutcome::Error { error } => error.len(),
    }
}

/// The error for a worker whose circle was taken over, naming the new owner.
async fn lost_ownership(conn: &mut ConnectionManager, circle: &CirclePublicKey) -> WorkerError {
    let owner: Option<circles_dispatcher::CircleOwner> = redis::cmd("GET")
        .arg(circles_dispatcher::protocol::owner_key(circle))
        .query_async::<Option<String>>(conn)
        .await
        .ok()
        .flatten()
        .and_then(|v| serde_json::from_str(&v).ok());
    WorkerError::LostOwnership {
        circle: circle.to_hex(),
        owner: owner.map_or_else(
            || "another worker".to_string(),
            |o| format!("pid {} on host {}", o.pid, o.host),
        ),
    }
}

/// What one attempt to take a task from the queue came to.
enum Take {
    /// A task id, moved into the processing list, and the task when it
    /// could be loaded in the same round trip.
    Task(String, Option<Box<Taken>>),
    /// Nothing yet: the wait ended.
    Again,
    /// Redis failed (and we backed off): the take may have moved an id
    /// whose answer was lost, to be looked for in the processing list.
    Failed,
    /// Stop was asked for.
    Stop,
    /// Another worker owns the circle now.
    Lost,
}

/// Waits (at most [`TAKE_WAIT`]) for the next task with `BLMOVE`, after
/// confirming the lease when it may have run out during a pause.
async fn take_one(
    lease: &Lease,
    conn: &mut ConnectionManager,
    blocking: &mut BlockingLink,
    queue: &TaskQueue,
    stop_rx: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Take {
    // After a pause (SIGSTOP, a stalled machine) the heartbeat thread may
    // not have noticed yet that a successor took over: confirm the lease
    // before taking one more task.
    if lease.needs_confirming()
        && !lease.is_lost()
        && let Err(e) = lease.renew(conn).await
    {
        return if backoff.wait("confirming the lease", &e, stop_rx).await {
            Take::Again
        } else {
            Take::Stop
        };
    }
    if lease.is_lost() {
        return Take::Lost;
    }
    // Never cancelled: a BLMOVE dropped half-way could still move a task
    // after we stopped looking. A stop ends the wait with CLIENT UNBLOCK
    // instead, and whatever BLMOVE returns is handled as usual. Connected
    // first, so the id to unblock is known during the wait.
    if let Err(e) = blocking.connect().await {
        return if backoff.wait("connecting for tasks", &e, stop_rx).await {
            Take::Again
        } else {
            Take::Stop
        };
    }
    let unblock_id = blocking.client_id();
    let take = blocking.take_loaded(queue);
    tokio::pin!(take);
    let taken = tokio::select! {
        taken = &mut take => taken,
        _ = stop_rx.changed() => {
            if let Some(id) = unblock_id {
                let _ = redis::cmd("CLIENT").arg("UNBLOCK").arg(id).query_async::<i64>(&mut conn.clone()).await;
            }
            take.await
        }
    };
    match taken {
        Ok(Some((id, taken))) => {
            backoff.reset();
            Take::Task(id, taken.map(Box::new))
        }
        Ok(None) => Take::Again,
        Err(e) => {
            // Failed either way, stop or not: the loop must know the take
            // may have moved an id whose answer was lost (it stops at the
            // top when asked to, and the shutdown gives such ids back).
            backoff.wait("waiting for tasks", &e, stop_rx).await;
            Take::Failed
        }
    }
}

/// What a snapshot task needs: the store, where to write, who we are.
struct Snapshots {
    store: Arc<CircleStore>,
    db_dir: PathBuf,
    host: String,
}

/// Runs one loaded task, turning every failure into an error outcome.
fn run_task(
    queue: &TaskQueue,
    engine: &ScriptEngine,
    snapshots: &Snapshots,
    raw_id: &str,
    taken: Taken,
) -> TaskOutcome {
    let record = match taken {
        Taken::Task(record) => record,
        Taken::Snapshot(record) => {
            if let Some(expired) = expired_before_run(&record) {
                return TaskOutcome::Error { error: expired };
            }
            let started = std::time::Instant::now();
            return match crate::snapshot::write_snapshot(
                &snapshots.store,
                &snapshots.db_dir,
                raw_id,
                &snapshots.host,
            ) {
                Ok(report) => {
                    tracing::info!(task_id = %raw_id, file = %report.file, values = report.values, elapsed = ?started.elapsed(), "database snapshot written");
                    TaskOutcome::Completed {
                        output: serde_json::to_string(&report).expect("report serialises"),
                    }
                }
                Err(error) => {
                    tracing::warn!(task_id = %raw_id, %error, "database snapshot failed");
                    TaskOutcome::Error { error }
                }
            };
        }
        Taken::Broken(reason) => {
            tracing::warn!(task_id = %raw_id.escape_debug(), %reason, "broken task");
            return TaskOutcome::Error { error: reason };
        }
    };
    // A task whose caller gave up before any worker took it (the worker was
    // down, paused or busy) is not run: its side effects would surprise a
    // client that was told it timed out.
    if let Some(expired) = expired_before_run(&record) {
        tracing::info!(task_id = %raw_id, "task expired before it ran");
        return TaskOutcome::Error { error: expired };
    }
    let script = record.script.unwrap_or_default();
    let caller = record.caller_id.unwrap_or_default();
    let context = queue_circle_hex(queue);
    let wall = record.timeout_secs.map(Duration::from_secs);
    let started = std::time::Instant::now();
    // The script runs right here: tasks are sequential, and the heartbeat
    // has its own thread, so nothing else waits on this one. (A hop to
    // another thread costs more than running `40 + 2`.)
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine.run(&script, &context, &caller, wall)
    }))
    .unwrap_or_else(|_| Err("script panicked".to_string()));
    tracing::debug!(task_id = %raw_id, elapsed = ?started.elapsed(), ok = result.is_ok(), "task done");
    match result {
        Ok(output) => TaskOutcome::Completed { output },
        Err(error) => TaskOutcome::Error { error },
    }
}

/// The error for a task whose deadline (`created_at` + `timeout_secs`)
/// has passed, or `None` while it may still run. Tasks without both fields
/// (written by other tools) never expire.
fn expired_before_run(record: &circles_dispatcher::TaskRecord) -> Option<String> {
    let created = chrono::DateTime::parse_from_rfc3339(record.created_at.as_deref()?).ok()?;
    let timeout = record.timeout_secs?;
    // Checked: a task hash is anybody's with Redis access, and 10^13 s
    // overflowed the date (a panic that took the worker down). A deadline
    // past what a date can hold never comes.
    let deadline = chrono::TimeDelta::try_seconds(i64::try_from(timeout).ok()?)
        .and_then(|timeout| created.checked_add_signed(timeout))?;
    (chrono::Utc::now() > deadline).then(|| {
        format!(
            "expired before it ran: no worker took it within its {timeout}s timeout (submitted {}), so its caller stopped waiting",
            record.created_at.as_deref().unwrap_or_default()
        )
    })
}

fn queue_circle_hex(queue: &TaskQueue) -> String {
    queue.circle().to_hex()
}

/// What the worker publishes about itself, refreshed with a TTL.
#[derive(Clone)]
struct Heartbeat {
    key: String,
    /// Canonical hex, as registered in `rhai_circles`.
    circle: String,
    beat: WorkerHeartbeat,
    tasks_done: Arc<AtomicU64>,
    /// Renewed with every beat.
    lease: Arc<Lease>,
}

impl Heartbeat {
    /// Renews the lease, then refreshes the heartbeat and the registration
    /// (a Redis that restarted empty learns about this circle again within
    /// one interval). A lost lease stops the beating: the heartbeat is the
    /// new owner's to write.
    async fn beat(&self, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        if self.lease.is_lost() || !self.lease.renew(conn).await? {
            return Ok(());
        }
        let mut beat = self.beat.clone();
        beat.beat_at = now_rfc3339();
        beat.tasks_done = self.tasks_done.load(Ordering::Relaxed);
        let json = serde_json::to_string(&beat).expect("heartbeat serialises");
        redis::pipe()
            .cmd("SET")
            .arg(&self.key)
            .arg(json)
            .arg("EX")
            .arg(HEARTBEAT_TTL_SECS)
            .ignore()
            .cmd("SADD")
            .arg(CIRCLES_SET)
            .arg(&self.circle)
            .ignore()
            .cmd("HSET")
            .arg(LAST_SEEN_HASH)
            .arg(&self.circle)
            .arg(&beat.beat_at)
            .ignore()
            .query_async(conn)
            .await
    }

    /// Beats every `every` on a thread of its own, with its own runtime and
    /// connection, so a long script on the worker's thread never lets the
    /// heartbeat lapse; the first beat is due `every` after `last_beat`.
    fn spawn(
        self,
        redis_url: String,
        every: Duration,
        last_beat: std::time::Instant,
    ) -> HeartbeatThread {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("heartbeat runtime");
                runtime.block_on(async move {
                    let Ok(Some(mut conn)) = connect(&redis_url, &mut stop_rx).await else {
                        return;
                    };
                    // The worker beat once itself before it said it was
                    // ready: the next is due one interval after that one,
                    // however long this thread took to connect.
                    let first = tokio::time::Instant::from_std(last_beat + every);
                    let mut tick = tokio::time::interval_at(first, every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = stop_rx.changed() => return,
                            _ = tick.tick() => {}
                        }
                        if let Err(e) = self.beat(&mut conn).await {
                            tracing::debug!(error = %e, "heartbeat not written");
                        }
                    }
                });
            })
            .expect("spawn heartbeat thread");
        HeartbeatThread {
            stop: stop_tx,
            thread,
        }
    }
}

/// The running heartbeat thread.
struct HeartbeatThread {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl HeartbeatThread {
    /// Stops beating (the key then expires, or is deleted on shutdown).
    fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.thread.join();
    }
}

/// Tells systemd (or the launcher, which speaks the same protocol on its own
/// socket) that the worker is connected and its queue open.
fn notify_ready(config: &WorkerConfig) {
    if std::env::var_os(circles_dispatcher::protocol::ENV_NOTIFY_SOCKET).is_none() {
        return;
    }
    let status = format!("serving circle {}", config.circle);
    let states = [
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::MainPid(std::process::id()),
        sd_notify::NotifyState::Status(&status),
    ];
    if let Err(e) = sd_notify::notify(&states) {
        tracing::warn!(error = %e, "could not send readiness notification");
    }
}

fn notify_stopping() {
    if std::env::var_os(circles_dispatcher::protocol::ENV_NOTIFY_SOCKET).is_some() {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    }
}

/// A client for `url` whose connections skip `CLIENT SETINFO`: the library
/// name in `CLIENT LIST` is not worth a round trip on each of a worker's
/// three connections at every start.
fn client(url: &str) -> Result<redis::Client, WorkerError> {
    let invalid = |source| WorkerError::RedisUrl {
        url: url.into(),
        source,
    };
    let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(invalid)?;
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    redis::Client::open(info.set_redis_settings(settings)).map_err(invalid)
}

/// Connects, retrying with backoff until Redis answers or we are told to
/// stop (`Ok(None)`). Never a tight loop.
async fn connect(
    url: &str,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<ConnectionManager>, WorkerError> {
    let client = client(url)?;
    // One retry inside the manager, not its default six: those add up to
    // ~9.5 s of silence before the first failure surfaces here, to be
    // logged. Our own backoff (logged at every attempt) does the rest.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(1)
        .set_max_delay(BACKOFF_MAX);
    let mut backoff = Backoff::new();
    loop {
        // A stop during an attempt ends it at once (SIGTERM while Redis is
        // down must not wait for the connection timeout).
        let attempt = tokio::select! {
            attempt = ConnectionManager::new_with_config(client.clone(), config.clone()) => attempt,
            _ = stop.changed() => return Ok(None),
        };
        match attempt {
            Ok(conn) => return Ok(Some(conn)),
            Err(e) => {
                if !backoff
                    .wait(
                        &format!("connecting to {}", circles_dispatcher::RedisUrl::new(url)),
                        &e,
                        stop,
                    )
                    .await
                {
                    return Ok(None);
                }
            }
        }
    }
}

/// The connection `BLMOVE` blocks on, with its Redis client id so that a
/// stop can end the wait at once (`CLIENT UNBLOCK`). Reconnected on the next
/// take after an error.
struct BlockingLink {
    client: redis::Client,
    current: Option<(redis::aio::MultiplexedConnection, i64)>,
}

impl BlockingLink {
    fn new(url: &str) -> Result<Self, WorkerError> {
        Ok(Self {
            client: client(url)?,
            current: None,
        })
    }

    /// Connects (and learns the client id) unless connected.
    async fn connect(&mut self) -> redis::RedisResult<()> {
        if self.current.is_none() {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(TAKE_WAIT + Duration::from_secs(5)));
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let id: i64 = redis::cmd("CLIENT")
                .arg("ID")
                .query_async(&mut conn)
                .await?;
            crate::queue::load_take_script(&mut conn).await?;
            self.current = Some((conn, id));
        }
        Ok(())
    }

    /// The client id of the live connection, if there is one.
    fn client_id(&self) -> Option<i64> {
        self.current.as_ref().map(|(_, id)| *id)
    }

    /// One `BLMOVE` of at most [`TAKE_WAIT`] and the load of what it took
    /// (the server-side timeout bounds it; the response timeout only guards
    /// against a dead connection).
    async fn take_loaded(
        &mut self,
        queue: &TaskQueue,
    ) -> redis::RedisResult<Option<(String, Option<Taken>)>> {
        self.connect().await?;
        let (conn, _) = self.current.as_mut().expect("connected above");
        let taken = queue.take_loaded(conn, TAKE_WAIT).await;
        if taken.is_err() {
            self.current = None;
        }
        taken
    }
}

/// Retries a Redis operation with backoff until it succeeds (`Some`) or stop
/// is requested (`None`).
async fn retry<T, F, Fut>(stop: &mut watch::Receiver<bool>, what: &str, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = redis::RedisResult<T>>,
{
    let mut backoff = Backoff::new();
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) => {
                if !backoff.wait(what, &e, stop).await {
                    return None;
                }
            }
        }
    }
}

/// Retries until success: used once a task is ours, because giving up would
/// lose its outcome.
async fn retry_forever<T, F, Fut>(what: &str, op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = redis::RedisResult<T>>,
{
    let (_tx, mut never) = watch::channel(false);
    retry(&mut never, what, op).await.expect("never stopped")
}
