//! The server's life: [`Server::bind`] claims every port and connects to
//! Redis, so that all configuration errors surface before anything is
//! served; [`Server::run`] serves until its shutdown future resolves, then
//! drains.
//!
//! Draining, in order: every listener stops accepting (new connections are
//! refused); each connection stops reading and waits for its calls in
//! flight; when the grace period ends, calls still waiting are answered with
//! an error; each connection sends a close frame. `run` returns when every
//! connection is gone, or shortly after the grace period if some client
//! does not let go.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use circles_dispatcher::{CirclePublicKey, Dispatcher};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use crate::admission::{Admission, ClientInfo, GuardedListener};
use crate::auth::NonceStore;
use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::routing::{self, CircleDirectory};
use crate::signal::{self, Signal};

/// Recorded as the dispatcher's own caller id; every `play` overrides it
/// with the connection's caller, so it shows only if that ever goes wrong.
const DISPATCHER_CALLER_ID: &str = "circles-server";

/// After the grace period, how long connections get to send their last
/// answers and close frames before `run` returns without them.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What every listener and connection of a running server shares.
///
/// `run` learns that the last connection has ended when the last `Shared`
/// is dropped: each connection holds an `Arc<Shared>` for its whole life.
pub(crate) struct Shared {
    /// Submits `play` scripts and waits for their results.
    pub(crate) dispatcher: Dispatcher,
    /// Which circles exist.
    pub(crate) directory: CircleDirectory,
    /// Outstanding `fetch_nonce` nonces.
    pub(crate) nonces: NonceStore,
    /// Open connections against their caps.
    pub(crate) admission: Arc<Admission>,
    /// Plays in flight per client network, against their share.
    pub(crate) plays: Arc<crate::admission::PlayShares>,
    /// See [`ServerConfig::idle_timeout`].
    pub(crate) idle_timeout: Duration,
    /// See [`ServerConfig::max_message_bytes`].
    pub(crate) max_message_bytes: usize,
    /// See [`ServerConfig::housekeeping_interval`].
    housekeeping_interval: Duration,
    /// Whether `play` requires authentication.
    pub(crate) enable_auth: bool,
    /// How long a `play` waits for its result.
    pub(crate) play_timeout: Duration,
    /// Raised when shutdown begins.
    pub(crate) shutdown: Signal,
    /// Raised when the shutdown's grace period is over.
    pub(crate) grace_over: Signal,
    /// Never sent on; dropped with the last `Shared`, which closes the
    /// channel `run` waits on.
    _alive: mpsc::Sender<()>,
}

/// A bound, not yet running server.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    dispatcher: Dispatcher,
    main: BoundListener,
    circle_listeners: Vec<(CirclePublicKey, BoundListener)>,
}

#[derive(Debug)]
struct BoundListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Server {
    /// Connects to Redis and binds the main listener and every per-circle
    /// listener. Fails, naming the port or URL, if any of them cannot be
    /// had; nothing is served until [`Self::run`].
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        if config.play_timeout.is_zero() {
            return Err(ServerError::InvalidConfig(
                "the play timeout must be longer than zero".to_string(),
            ));
        }
        if config.idle_timeout < Duration::from_secs(1) {
            return Err(ServerError::InvalidConfig(
                "the idle timeout must be at least one second".to_string(),
            ));
        }
        let dispatcher = Dispatcher::connect(&config.redis_url, DISPATCHER_CALLER_ID)
            .await?
            .with_max_script_bytes(config.max_script_bytes);
        raise_descriptor_limit(config.connections.max_connections);
        let main = bind_listener(&config.host, config.port).await?;
        let mut circle_listeners = Vec::with_capacity(config.circle_ports.len());
        for &(circle, port) in &config.circle_ports {
            circle_listeners.push((circle, bind_listener(&config.host, port).await?));
        }
        Ok(Server {
            config,
            dispatcher,
            main,
            circle_listeners,
        })
    }

    /// The main listener's address (with the real port when bound to 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.main.addr
    }

    /// Each per-circle listener's circle and address.
    pub fn circle_addrs(&self) -> Vec<(CirclePublicKey, SocketAddr)> {
        self.circle_listeners
            .iter()
            .map(|(circle, bound)| (*circle, bound.addr))
            .collect()
    }

    /// Serves until `shutdown` resolves, then drains (see the module docs)
    /// and returns `Ok`. Returns an error if a listener fails on its own.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let (shutdown_trigger, shutdown_signal) = signal::flag();
        let (grace_trigger, grace_signal) = signal::flag();
        let (alive, mut all_gone) = mpsc::channel::<()>(1);
        let configured = self
            .config
            .circles
            .iter()
            .chain(self.config.circle_ports.iter().map(|(circle, _)| circle))
            .copied();
        let shared = Arc::new(Shared {
            directory: CircleDirectory::new(configured),
            dispatcher: self.dispatcher,
            nonces: NonceStore::with_capacity(self.config.nonce_ttl, self.config.max_nonces),
            admission: Admission::new(self.config.connections),
            plays: Default::default(),
            idle_timeout: self.config.idle_timeout,
            max_message_bytes: self.config.max_message_bytes(),
            housekeeping_interval: self
                .config
                .housekeeping_interval
                .max(Duration::from_millis(100)),
            enable_auth: self.config.enable_auth,
            play_timeout: self.config.play_timeout,
            shutdown: shutdown_signal.clone(),
            grace_over: grace_signal,
            _alive: alive,
        });

        let mut listeners = JoinSet::new();
        // Which address each listener task serves, to name it if it fails.
        let mut listener_addrs = HashMap::new();
        let main_addr = self.main.addr;
        tracing::info!(
            auth = self.config.enable_auth,
            "serving circles on ws://{main_addr}/<circle_pk>"
        );
        let main_router = routing::main_router(Arc::clone(&shared));
        let mut routed: Vec<(BoundListener, Router)> = vec![(self.main, main_router)];
        for (circle, bound) in self.circle_listeners {
            tracing::info!(%circle, "serving circle on ws://{}/", bound.addr);
            let router = routing::circle_router(Arc::clone(&shared), circle);
            routed.push((bound, router));
        }
        for (bound, router) in routed {
            let addr = bound.addr;
            let task = spawn_listener(
                &mut listeners,
                bound,
                Arc::clone(&shared.admission),
                router,
                shutdown_signal.clone(),
            );
            listener_addrs.insert(task.id(), addr);
        }
        let housekeeping = tokio::spawn(housekeeping(Arc::downgrade(&shared)));
        drop(shared);

        let failure = tokio::select! {
            () = shutdown => None,
            Some(stopped) = listeners.join_next_with_id() => Some(match stopped {
                Ok((_, Err(error))) => error,
                // Listeners only return after the shutdown signal, which has
                // not been raised yet.
                Ok((_, Ok(addr))) => ServerError::ListenerStopped {
                    addr,
                    reason: "it returned before shutdown".to_string(),
                },
                Err(e) => ServerError::ListenerStopped {
                    addr: listener_addrs.get(&e.id()).copied().unwrap_or(main_addr),
                    reason: e.to_string(),
                },
            }),
        };
        if let Some(error) = &failure {
            tracing::error!(%error, "a listener failed; shutting down");
        }
        tracing::info!("shutting down: no new connections; waiting for calls in flight");
        let grace_deadline = Instant::now() + self.config.shutdown_grace;
        shutdown_trigger.raise();

        // Listeners end once they stop accepting and their plain HTTP
        // exchanges are done; upgraded connections are not theirs to wait
        // for (they are tracked through `Shared`).
        let _ = tokio::time::timeout_at(grace_deadline, async {
            while listeners.join_next().await.is_some() {}
        })
        .await;
        listeners.abort_all();
        while listeners.join_next().await.is_some() {}

        if tokio::time::timeout_at(grace_deadline, all_gone.recv())
            .await
            .is_err()
        {
            tracing::warn!(
                "calls still in flight after {:?}; answering them with an error",
                self.config.shutdown_grace
            );
            grace_trigger.raise();
            if tokio::time::timeout(CLOSE_TIMEOUT, all_gone.recv())
                .await
                .is_err()
            {
                tracing::warn!("some connections did not close in time; leaving them");
            }
        }
        housekeeping.abort();
        tracing::info!("server stopped");
        failure.map_or(Ok(()), Err)
    }
}

/// Binds `host:port`, naming the port when it is taken.
async fn bind_listener(host: &str, port: u16) -> Result<BoundListener, ServerError> {
    let listener = TcpListener::bind((host, port)).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            ServerError::PortInUse {
                host: host.to_string(),
                port,
            }
        } else {
            ServerError::Bind {
                host: host.to_string(),
                port,
                source,
            }
        }
    })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        host: host.to_string(),
        port,
        source,
    })?;
    Ok(BoundListener { listener, addr })
}

fn spawn_listener(
    listeners: &mut JoinSet<Result<SocketAddr, ServerError>>,
    bound: BoundListener,
    admission: Arc<Admission>,
    router: Router,
    mut shutdown: Signal,
) -> AbortHandle {
    let BoundListener { listener, addr } = bound;
    listeners.spawn(async move {
        axum::serve(
            GuardedListener::new(listener, admission),
            router.into_make_service_with_connect_info::<ClientInfo>(),
        )
        .with_graceful_shutdown(async move { shutdown.raised().await })
        .await
        .map_err(|source| ServerError::Serve { addr, source })?;
        Ok(addr)
    })
}

/// Frees what load left behind: expired nonces (which would otherwise stay
/// until the next `fetch_nonce`), and heap pages freed by closed
/// connections (glibc keeps them for reuse; after a burst of 2,000
/// connections that is hundreds of MiB). Ends with the server.
async fn housekeeping(shared: std::sync::Weak<Shared>) {
    let Some(every) = shared.upgrade().map(|s| s.housekeeping_interval) else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let swept = shared.nonces.sweep();
        let closed = shared.admission.take_closed_count();
        drop(shared);
        if swept > 0 || closed >= TRIM_AFTER_CLOSED {
            tracing::debug!(swept, closed, "releasing freed memory");
            release_free_memory();
        }
    }
}

/// Connections that must have closed since the last trim to trim again.
const TRIM_AFTER_CLOSED: usize = 64;

/// Returns the allocator's free pages to the OS (glibc `malloc_trim`).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only returns unused pages of the allocator's own
    // heaps to the kernel; it is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Raises the soft limit on open files to the hard limit (systemd units set
/// the hard limit with `LimitNOFILE=`), and warns when the connection cap
/// does not fit under it.
fn raise_descriptor_limit(max_connections: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current != Some(hard)
    {
        let raised = Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "cannot raise the open-file limit");
        }
    }
    let current = getrlimit(Resource::Nofile).current;
    if let Some(current) = current
        && (max_connections as u64).saturating_add(256) > current
    {
        tracing::warn!(
            open_files = current,
            max_connections,
            "the open-file limit is close to or below the connection cap; raise it (LimitNOFILE=) or lower --max-connections, or accept() may fail once it is reached"
        );
    }
}
