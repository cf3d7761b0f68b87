//! From an HTTP request to a circle's WebSocket: which circles exist, which
//! path or port names which circle, and the 404 for everything else.
//!
//! Every check happens before the upgrade, so a client with a wrong or
//! unknown key gets a plain HTTP 404 it can read, not a WebSocket that
//! closes at once. The set of circles is asked on each upgrade (one cheap
//! `SISMEMBER`) so that a circle whose worker starts after the server is
//! reachable without a restart.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::admission::ClientInfo;
use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use circles_dispatcher::CirclePublicKey;
use circles_dispatcher::protocol::CIRCLES_SET;

use crate::connection;
use crate::server::Shared;
use circles_dispatcher::Dispatcher;

/// The circles a server knows: those it was configured with, plus every
/// circle a worker has registered in the Redis set `rhai_circles`.
#[derive(Debug)]
pub(crate) struct CircleDirectory {
    configured: HashSet<CirclePublicKey>,
}

impl CircleDirectory {
    pub(crate) fn new(configured: impl IntoIterator<Item = CirclePublicKey>) -> Self {
        Self {
            configured: configured.into_iter().collect(),
        }
    }

    /// Whether `circle` is served. Configured circles need no Redis.
    pub(crate) async fn contains(
        &self,
        circle: &CirclePublicKey,
        redis: &Dispatcher,
    ) -> Result<bool, circles_dispatcher::DispatchError> {
        if self.configured.contains(circle) {
            return Ok(true);
        }
        // Retried once on a fresh connection: the first lookup after a
        // Redis restart must not turn into a 503.
        redis
            .query_idempotent(
                redis::cmd("SISMEMBER")
                    .arg(CIRCLES_SET)
                    .arg(circle.to_hex()),
            )
            .await
    }
}

/// What a listener's handlers need: the server, and for a per-circle
/// listener the circle it is bound to.
#[derive(Clone)]
struct ListenerState {
    shared: Arc<Shared>,
    bound_circle: Option<CirclePublicKey>,
}

/// Routes of the main listener: `/<circle_pk>` for every known circle.
pub(crate) fn main_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/{circle}", any(upgrade_by_path))
        .fallback(no_circle_in_path)
        .with_state(ListenerState {
            shared,
            bound_circle: None,
        })
}

/// Routes of a listener bound to one circle: `/` and `/<that circle's key>`.
pub(crate) fn circle_router(shared: Arc<Shared>, circle: CirclePublicKey) -> Router {
    Router::new()
        .route("/", any(upgrade_bound_circle))
        .route("/{circle}", any(upgrade_by_path))
        .fallback(no_circle_in_path)
        .with_state(ListenerState {
            shared,
            bound_circle: Some(circle),
        })
}

async fn upgrade_by_path(
    State(listener): State<ListenerState>,
    Path(raw_key): Path<String>,
    ConnectInfo(peer): ConnectInfo<ClientInfo>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Exactly the key's hex: `/0x<pk>` or `/%20<pk>` would be other names
    // for the same circle.
    let circle = match CirclePublicKey::parse_exact(&raw_key) {
        Ok(circle) => circle,
        Err(invalid) => return not_found(invalid.to_string()),
    };
    match listener.bound_circle {
        Some(bound) if bound != circle => {
            return not_found(format!(
                "this port serves circle {bound} only, not {circle}"
            ));
        }
        Some(_) => {}
        None => match listener
            .shared
            .directory
            .contains(&circle, &listener.shared.dispatcher)
            .await
        {
            Ok(true) => {}
            Ok(false) => return not_found(format!("unknown circle {circle}")),
            Err(e) => {
                tracing::warn!(%circle, error = %e, "cannot look up circle in Redis");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot look up circle {circle}: Redis error: {e}\n"),
                )
                    .into_response();
            }
        },
    }
    upgrade_to(listener.shared, circle, peer, upgrade)
}

async fn upgrade_bound_circle(
    State(listener): State<ListenerState>,
    ConnectInfo(peer): ConnectInfo<ClientInfo>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match listener.bound_circle {
        Some(circle) => upgrade_to(listener.shared, circle, peer, upgrade),
        None => no_circle_in_path().await.into_response(),
    }
}

fn upgrade_to(
    shared: Arc<Shared>,
    circle: CirclePublicKey,
    client: ClientInfo,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let peer: SocketAddr = client.addr;
    // A request that raced the shutdown signal must not open a connection
    // the drain would then have to wait for.
    if shared.shutdown.is_raised() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down\n",
        )
            .into_response();
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let max_message = shared.max_message_bytes;
    upgrade
        // Small buffers: most connections are idle, and tungstenite's
        // defaults (128 KiB each way) made every one cost ~130 kB.
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_failed_upgrade(move |e| tracing::debug!(%peer, error = %e, "WebSocket upgrade failed"))
        .on_upgrade(move |socket: WebSocket| {
            client.mark_upgraded();
            connection::serve(socket, shared, circle, peer)
        })
}

/// Initial read buffer of a WebSocket; it grows for bigger messages.
const WS_READ_BUFFER: usize = 4 * 1024;

fn not_found(reason: String) -> Response {
    (StatusCode::NOT_FOUND, format!("{reason}\n")).into_response()
}

async fn no_circle_in_path() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        "no circle here: connect to ws://HOST:PORT/<circle public key>\n",
    )
}
