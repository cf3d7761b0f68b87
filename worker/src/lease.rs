//! One owner per circle, across every host that shares the Redis.
//!
//! A worker serves a circle only while it holds the circle's lease,
//! `rhai_owner:<pk>` (a JSON [`CircleOwner`]): taken with `SET NX PX`,
//! renewed with every heartbeat, deleted on a clean stop. A second worker,
//! on any host, finds it held and refuses, naming the owner's host and pid.
//! A worker that dies without a clean stop leaves a lease that runs out after
//! [`OWNER_LEASE_MS`]; on the same host (same host name and PID namespace) a
//! successor need not wait: a lease whose pid is gone (or is no longer a
//! worker of this circle) is stale and taken over at once.
//!
//! The lease is also the fence: a task is finished (outcome, reply, removal
//! from the processing list) by a script that first checks the lease is
//! still exactly this worker's. A worker that was paused or cut off past the
//! lease's life, while a successor took over and ended its task as
//! abandoned, therefore cannot write its late result over the successor's;
//! it learns it lost the circle and stops. The same check runs before every
//! take when the last renewal is older than half a lease, so a worker that
//! wakes up from a pause does not take one more task first.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use circles_dispatcher::protocol::{OWNER_LEASE_MS, owner_key, owner_token_key};
use circles_dispatcher::task::now_rfc3339;
use circles_dispatcher::{CircleOwner, CirclePublicKey};
use redis::aio::ConnectionManager;

/// Takes the lease if it is free: `{1, value}` with the stored value (its
/// fencing token filled in), or `{0, holder}`.
/// KEYS: lease, token counter. ARGV: owner JSON without token, lease ms.
const ACQUIRE: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder then return {0, holder} end
local owner = cjson.decode(ARGV[1])
owner['token'] = redis.call('INCR', KEYS[2])
local value = cjson.encode(owner)
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return {1, value}
"#;

/// Extends the lease if it is still exactly ours; re-takes it if it is gone
/// (a Redis that restarted empty), answering the value now held; `0` when
/// somebody else holds it. KEYS: lease. ARGV: our value, lease ms.
const RENEW: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// Deletes the lease if it is exactly `ARGV[1]`, and then (only then) the
/// other keys given — the heartbeat on a clean stop, which must not be
/// deleted by a worker whose circle another one owns now.
/// KEYS: lease, then keys to delete with it.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Why a worker cannot own its circle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBy(pub CircleOwner);

/// This worker's hold on its circle.
#[derive(Debug)]
pub struct Lease {
    key: String,
    /// The exact value stored under `key` while we hold it.
    value: RwLock<String>,
    lost: AtomicBool,
    /// When the lease was last confirmed, in ms since `epoch`.
    renewed_ms: AtomicU64,
    epoch: Instant,
}

impl Lease {
    /// Takes the lease of `circle` for this process, or says who holds it.
    /// A stale lease of this host (its pid gone) is taken over.
    pub async fn acquire(
        conn: &mut ConnectionManager,
        circle: &CirclePublicKey,
    ) -> redis::RedisResult<Result<Arc<Lease>, HeldBy>> {
        let me = CircleOwner {
            host: host_name(),
            pid: std::process::id(),
            pid_namespace: pid_namespace(),
            instance: uuid::Uuid::new_v4().to_string(),
            token: 0,
            since: now_rfc3339(),
        };
        let me_json = serde_json::to_string(&me).expect("owner serialises");
        let key = owner_key(circle);
        for _ in 0..2 {
            let (taken, value): (i64, String) = redis::cmd("EVAL")
                .arg(ACQUIRE)
                .arg(2)
                .arg(&key)
                .arg(owner_token_key(circle))
                .arg(&me_json)
                .arg(OWNER_LEASE_MS)
                .query_async(conn)
                .await?;
            if taken == 1 {
                let lease = Lease {
                    key,
                    value: RwLock::new(value),
                    lost: AtomicBool::new(false),
                    renewed_ms: AtomicU64::new(0),
                    epoch: Instant::now(),
                };
                return Ok(Ok(Arc::new(lease)));
            }
            let holder: CircleOwner = match serde_json::from_str(&value) {
                Ok(h) => h,
                Err(_) => {
                    // Not ours to read: treat as held by an unknown owner.
                    return Ok(Err(HeldBy(CircleOwner {
                        host: "(unknown)".into(),
                        pid: 0,
                        pid_namespace: String::new(),
                        instance: String::new(),
                        token: 0,
                        since: String::new(),
                    })));
                }
            };
            if !is_stale(&holder, &me, circle) {
                return Ok(Err(HeldBy(holder)));
            }
            tracing::warn!(
                pid = holder.pid,
                "taking over the lease of a worker of this host that is gone"
            );
            let _: i64 = redis::cmd("EVAL")
                .arg(RELEASE)
                .arg(1)
                .arg(&key)
                .arg(&value)
                .query_async(conn)
                .await?;
        }
        let holder: Option<String> = redis::cmd("GET").arg(&key).query_async(conn).await?;
        let holder = holder
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_else(|| me.clone());
        Ok(Err(HeldBy(holder)))
    }

    /// The value stored while we hold the lease (the finish script's fence).
    pub fn value(&self) -> String {
        self.value.read().expect("lease value").clone()
    }

    /// Whether another worker has taken the circle over.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Marks the lease lost (a fenced write was refused).
    pub fn mark_lost(&self) {
        self.lost.store(true, Ordering::Relaxed);
    }

    /// Renews the lease; `false` (and marked lost) when somebody else holds
    /// it now.
    pub async fn renew(
        &self,
        conn: &mut (impl redis::aio::ConnectionLike + Send),
    ) -> redis::RedisResult<bool> {
        let value = self.value();
        let held: i64 = redis::cmd("EVAL")
            .arg(RENEW)
            .arg(1)
            .arg(&self.key)
            .arg(&value)
            .arg(OWNER_LEASE_MS)
            .query_async(conn)
            .await?;
        if held == 1 {
            self.renewed_ms
                .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            Ok(true)
        } else {
            self.mark_lost();
            Ok(false)
        }
    }

    /// Whether the last renewal is so old (a pause, a stalled heartbeat)
    /// that the lease must be confirmed before taking another task.
    pub fn needs_confirming(&self) -> bool {
        let since = self
            .epoch
            .elapsed()
            .as_millis()
            .saturating_sub(u128::from(self.renewed_ms.load(Ordering::Relaxed)));
        since > u128::from(OWNER_LEASE_MS / 2)
    }

    /// Gives the lease up, if still ours, deleting `with` (the heartbeat)
    /// in the same step; `false` when it was not ours any more.
    pub async fn release(
        &self,
        conn: &mut ConnectionManager,
        with: &[String],
    ) -> redis::RedisResult<bool> {
        let released: i64 = redis::cmd("EVAL")
            .arg(RELEASE)
            .arg(1 + with.len())
            .arg(&self.key)
            .arg(with)
            .arg(self.value())
            .query_async(conn)
            .await?;
        Ok(released == 1)
    }

    /// How long a lease lives without renewal.
    pub fn ttl() -> Duration {
        Duration::from_millis(OWNER_LEASE_MS)
    }
}

/// A lease of this host (same host name and PID namespace) whose process
/// is gone, or is not a worker of this circle any more (pid reused).
fn is_stale(holder: &CircleOwner, me: &CircleOwner, circle: &CirclePublicKey) -> bool {
    holder.host == me.host
        && holder.pid_namespace == me.pid_namespace
        && !holder.pid_namespace.is_empty()
        && holder.pid != me.pid
        && !process_may_serve(holder.pid, circle)
}

/// Whether process `pid` on this host is, or may be, a worker for `circle`.
/// Only a process that does not exist, or whose command line can be read
/// and does not name the circle (the pid was reused), is known not to be:
/// a process we may not look at (another user's under `ProtectProc=`,
/// `hidepid`) is taken to be the owner, so a live owner is never displaced.
/// Linux only; elsewhere a lease is never judged stale early and simply
/// runs out.
fn process_may_serve(pid: u32, circle: &CirclePublicKey) -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    let Some(pid_value) = rustix::process::Pid::from_raw(pid as i32) else {
        return false;
    };
    match rustix::process::test_kill_process(pid_value) {
        Err(e) if e == rustix::io::Errno::SRCH => return false,
        Ok(()) | Err(_) => {}
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) if !cmdline.is_empty() => {
            let cmdline = String::from_utf8_lossy(&cmdline).to_lowercase();
            cmdline.contains(&circle.to_hex()) || cmdline.contains(&circle.to_uncompressed_hex())
        }
        // Alive but not ours to read (or a zombie's empty command line).
        _ => true,
    }
}

/// This host's name.
pub fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Which PID namespace this process is in (`pid:[…]`), where known.
fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}
