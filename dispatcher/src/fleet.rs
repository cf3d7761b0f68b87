//! The fleet: every circle registered in Redis, where its worker runs and
//! how it is doing — read from Redis alone, so any host sharing the Redis
//! (or none: an operator's laptop) can see all of them without the data
//! directory of the host that installed them.
//!
//! For each circle in `rhai_circles` it reads the worker heartbeat
//! (`rhai_worker:<pk>`: host, pid, data directory, tasks done, version), the
//! ownership lease (`rhai_owner:<pk>`: host, pid, fencing token), the queue
//! and processing list lengths and `rhai_last_seen`. That is two round trips
//! whatever the number of circles: the set first, then one pipeline.
//!
//! Heartbeat ages come from the key's remaining time to live, so they are
//! measured by Redis's clock alone: hosts whose clocks disagree still give
//! true ages.

use redis::aio::ConnectionLike;
use serde::Serialize;

use crate::protocol::{
    CIRCLES_SET, HEARTBEAT_TTL_SECS, LAST_SEEN_HASH, owner_key, processing_key, task_queue_key,
    worker_heartbeat_key,
};
use crate::{CircleOwner, CirclePublicKey, DispatchError, WorkerHeartbeat};

/// Whether a circle has a worker, as Redis tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CircleState {
    /// Its worker's heartbeat is fresh: it takes tasks.
    Live,
    /// A worker holds the lease but has not published a heartbeat (yet): it
    /// is starting up (recovering, opening its database), or stalled.
    Starting,
    /// No worker holds the circle: submissions are refused as offline.
    Offline,
}

impl CircleState {
    /// `live`, `starting`, `offline`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Starting => "starting",
            Self::Offline => "offline",
        }
    }
}

/// One circle of the fleet. Fields Redis does not know (a circle that never
/// had a heartbeat, a value some other tool wrote) are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FleetEntry {
    /// The circle key (canonical hex).
    pub circle: String,
    /// Live, starting or offline.
    pub state: CircleState,
    /// Host name of its worker (from the heartbeat, else the lease).
    pub host: Option<String>,
    /// Its worker's process id on that host.
    pub pid: Option<u32>,
    /// Directory of the circle's database on that host.
    pub db_dir: Option<String>,
    /// Task ids waiting in its queue.
    pub queue: u64,
    /// Task ids its worker has taken and not yet finished.
    pub in_hand: u64,
    /// Milliseconds since the heartbeat was last refreshed (by Redis's clock).
    pub heartbeat_age_ms: Option<u64>,
    /// When the heartbeat was last refreshed, by the worker's clock (RFC 3339).
    pub beat_at: Option<String>,
    /// When the worker process started (RFC 3339).
    pub started_at: Option<String>,
    /// Tasks that worker process has finished.
    pub tasks_done: Option<u64>,
    /// The worker's version.
    pub version: Option<String>,
    /// When a worker of this circle last beat (RFC 3339): for an offline
    /// circle, "offline since".
    pub last_seen: Option<String>,
    /// The ownership lease, with its fencing token.
    pub owner: Option<CircleOwner>,
}

impl FleetEntry {
    /// `live`, `starting`, or `offline since <last seen>` (`offline, never
    /// seen` when no worker ever beat).
    pub fn state_text(&self) -> String {
        match (self.state, &self.last_seen) {
            (CircleState::Offline, Some(at)) => format!("offline since {at}"),
            (CircleState::Offline, None) => "offline, never seen".to_string(),
            (state, _) => state.as_str().to_string(),
        }
    }
}

/// What Redis answers for one circle, in pipeline order.
type CircleReplies = (
    Option<String>,
    i64,
    Option<String>,
    u64,
    u64,
    Option<String>,
);

/// Every circle in `rhai_circles`, sorted by host (circles without a host
/// last) then key. Members that are not circle keys are skipped.
pub async fn read_fleet(
    conn: &mut (impl ConnectionLike + Send),
) -> Result<Vec<FleetEntry>, DispatchError> {
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(CIRCLES_SET)
        .query_async(conn)
        .await?;
    let mut circles: Vec<CirclePublicKey> = members
        .iter()
        .filter_map(|m| match m.parse() {
            Ok(key) => Some(key),
            Err(_) => {
                tracing::warn!(member = %crate::text::clip(m, 80), "skipping a member of {CIRCLES_SET} that is not a circle key");
                None
            }
        })
        .collect();
    circles.sort_by_key(CirclePublicKey::to_hex);
    circles.dedup();
    if circles.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for circle in &circles {
        let beat = worker_heartbeat_key(circle);
        pipe.cmd("GET")
            .arg(&beat)
            .cmd("PTTL")
            .arg(&beat)
            .cmd("GET")
            .arg(owner_key(circle))
            .cmd("LLEN")
            .arg(task_queue_key(circle))
            .cmd("LLEN")
            .arg(processing_key(circle))
            .cmd("HGET")
            .arg(LAST_SEEN_HASH)
            .arg(circle.to_hex());
    }
    let values: Vec<redis::Value> = pipe.query_async(conn).await?;
    let mut entries = Vec::with_capacity(circles.len());
    for (circle, chunk) in circles.iter().zip(values.chunks(6)) {
        let replies: CircleReplies = redis::from_redis_value(redis::Value::Array(chunk.to_vec()))
            .map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected reply reading the fleet",
                e.to_string(),
            ))
        })?;
        entries.push(entry(circle, replies));
    }
    entries.sort_by(|a, b| {
        (a.host.is_none(), &a.host, &a.circle).cmp(&(b.host.is_none(), &b.host, &b.circle))
    });
    Ok(entries)
}

/// Builds one entry from what Redis said about `circle`.
fn entry(circle: &CirclePublicKey, replies: CircleReplies) -> FleetEntry {
    let (raw_beat, pttl, raw_owner, queue, in_hand, last_seen) = replies;
    // State goes by the keys being there; what they say is read if it can be.
    let state = if raw_beat.is_some() {
        CircleState::Live
    } else if raw_owner.is_some() {
        CircleState::Starting
    } else {
        CircleState::Offline
    };
    let beat: Option<WorkerHeartbeat> = raw_beat.and_then(|b| serde_json::from_str(&b).ok());
    let owner: Option<CircleOwner> = raw_owner.and_then(|o| serde_json::from_str(&o).ok());
    // PTTL is -2 for a missing key and -1 for one without expiry; the worker
    // always sets the heartbeat with a TTL, so only a positive one is an age.
    let heartbeat_age_ms = (state == CircleState::Live && pttl >= 0)
        .then(|| (HEARTBEAT_TTL_SECS * 1000).saturating_sub(pttl as u64));
    let nonempty = |s: &String| !s.is_empty();
    FleetEntry {
        circle: circle.to_hex(),
        state,
        host: beat
            .as_ref()
            .map(|b| b.host.clone())
            .filter(nonempty)
            .or_else(|| owner.as_ref().map(|o| o.host.clone()).filter(nonempty)),
        pid: beat
            .as_ref()
            .map(|b| b.pid)
            .or_else(|| owner.as_ref().map(|o| o.pid)),
        db_dir: beat.as_ref().map(|b| b.db_dir.clone()).filter(nonempty),
        queue,
        in_hand,
        heartbeat_age_ms,
        beat_at: beat.as_ref().map(|b| b.beat_at.clone()),
        started_at: beat.as_ref().map(|b| b.started_at.clone()),
        tasks_done: beat.as_ref().map(|b| b.tasks_done),
        version: beat.as_ref().map(|b| b.version.clone()),
        last_seen,
        owner,
    }
}

/// The lease of `circle`, if a worker holds it (for refusing to touch a
/// circle that is served somewhere).
pub async fn read_owner(
    conn: &mut (impl ConnectionLike + Send),
    circle: &CirclePublicKey,
) -> Result<Option<CircleOwner>, DispatchError> {
    let (owner, beat): (Option<String>, Option<String>) = redis::pipe()
        .cmd("GET")
        .arg(owner_key(circle))
        .cmd("GET")
        .arg(worker_heartbeat_key(circle))
        .query_async(conn)
        .await?;
    if let Some(owner) = owner.and_then(|o| serde_json::from_str(&o).ok()) {
        return Ok(Some(owner));
    }
    // A heartbeat without a readable lease (an older worker, or a value some
    // other tool wrote) still means somebody serves the circle.
    Ok(beat
        .and_then(|b| serde_json::from_str::<WorkerHeartbeat>(&b).ok())
        .map(|b| CircleOwner {
            host: b.host,
            pid: b.pid,
            pid_namespace: String::new(),
            instance: String::new(),
            token: 0,
            since: b.started_at,
        }))
}
