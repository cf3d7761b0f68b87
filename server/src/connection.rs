//! One client's WebSocket to one circle: reading request frames, running
//! them, and writing the answers.
//!
//! A connection has three kinds of task. The reader (this module's
//! [`serve`]) reads frames in order. `fetch_nonce` and `authenticate` are
//! cheap and change the session, so the reader handles them itself: a
//! `play` sent right after `authenticate` is read after the session has
//! changed. Each `play` waits on a worker, possibly for a long time, so it
//! gets its own task and many can be in flight at once. All answers go
//! through a channel to one writer task, the only owner of the socket's
//! sending half, so frames never interleave.
//!
//! On shutdown the reader stops reading, waits for its `play` tasks (which
//! give up with an error when the server's grace period ends), then sends
//! a close frame ("going away").
//!
//! A connection must keep talking: the reader pings every half idle
//! timeout, and a client that has sent nothing at all (not even a pong) for
//! a whole idle timeout is closed. A frame over the size limit gets a
//! JSON-RPC error and a close with 1009 ("message too big"); `fetch_nonce`
//! is rate-limited per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use circles_dispatcher::{CirclePublicKey, DispatchError, TaskId};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::admission::{MAX_PLAYS_PER_NETWORK, PlayShare};
use crate::auth::{AuthError, EthSignature};
use crate::config::ANONYMOUS_CALLER_ID;
use crate::rpc::{
    self, AuthenticateParams, Call, FetchNonceParams, PlayParams, RequestId, Response, RpcError,
    code,
};
use crate::server::Shared;

/// `play` calls one connection may have in flight. When a client sends more
/// without waiting, the reader stops reading until one finishes, so one
/// client cannot pile up unbounded work (TCP pushes back on it instead).
const MAX_PLAYS_IN_FLIGHT: usize = 32;
/// Answers waiting for the writer.
const OUTBOX_CAPACITY: usize = 64;
/// `fetch_nonce` calls a connection may make in a burst, and how fast the
/// allowance comes back: a wallet needs one per `authenticate`, a flood of
/// made-up keys is slowed to a trickle per connection.
const NONCE_BURST: f64 = 8.0;
const NONCES_PER_SEC: f64 = 2.0;
/// Numbers the connections for [`crate::auth::NonceStore`].
static NEXT_NONCE_HOLDER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Serves one upgraded connection until the client leaves or the server
/// shuts down.
pub(crate) async fn serve(
    socket: WebSocket,
    shared: Arc<Shared>,
    circle: CirclePublicKey,
    peer: SocketAddr,
) {
    let span = tracing::info_span!("connection", %circle, %peer);
    async move {
        tracing::debug!("connected");
        let (sink, mut frames) = socket.split();
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
        let writer = tokio::spawn(
            write_frames(sink, outbox_rx, shared.idle_timeout).in_current_span(),
        );
        let mut session = Session {
            shared: Arc::clone(&shared),
            circle,
            authenticated: None,
            outbox: outbox.clone(),
            nonce_allowance: TokenBucket::new(NONCE_BURST, NONCES_PER_SEC),
            auth_allowance: TokenBucket::new(NONCE_BURST, NONCES_PER_SEC),
            peer_ip: peer.ip(),
            nonce_holder: NEXT_NONCE_HOLDER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        let mut plays = JoinSet::new();
        let mut shutdown = shared.shutdown.clone();
        let idle_timeout = shared.idle_timeout;
        let mut ping = tokio::time::interval(idle_timeout / 2);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut last_heard = Instant::now();

        let reason = loop {
            tokio::select! {
                biased;
                () = shutdown.raised() => break EndReason::ServerShutdown,
                // The writer gave up on a client that stopped reading.
                () = outbox.closed() => break EndReason::NotReading,
                _ = ping.tick() => {
                    if last_heard.elapsed() >= idle_timeout {
                        break EndReason::Idle;
                    }
                    let _ = outbox.send(Message::Ping(Default::default())).await;
                }
                Some(finished) = plays.join_next(), if !plays.is_empty() => {
                    if let Err(e) = finished
                        && e.is_panic()
                    {
                        tracing::error!(error = %e, "a play task panicked");
                    }
                }
                frame = frames.next(), if plays.len() < MAX_PLAYS_IN_FLIGHT => {
                    last_heard = Instant::now();
                    match frame {
                    Some(Ok(Message::Text(text))) => session.handle_text(text.as_str(), &mut plays).await,
                    Some(Ok(Message::Binary(_))) => {
                        let error = RpcError::new(
                            code::INVALID_REQUEST,
                            "binary frames are not supported: send each JSON-RPC request as a text frame",
                        );
                        session.send(Response::error(RequestId::Null, error)).await;
                    }
                    // Pings are answered by the WebSocket layer itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => break EndReason::ClientClosed,
                    Some(Err(e)) if is_too_big(&e) => {
                        tracing::debug!(error = %e, "frame over the size limit");
                        let error = RpcError::new(
                            code::INVALID_REQUEST,
                            format!(
                                "message too big: the limit is {} bytes (scripts up to {} bytes)",
                                shared.max_message_bytes,
                                shared.dispatcher.max_script_bytes()
                            ),
                        );
                        session.send(Response::error(RequestId::Null, error)).await;
                        break EndReason::TooBig;
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "read failed");
                        break EndReason::ClientClosed;
                    }
                    }
                }
            }
        };

        match reason {
            // Nobody is left to read the answers: stop waiting for them.
            // The tasks stay queued in Redis and the worker still runs them.
            EndReason::ClientClosed | EndReason::NotReading => plays.abort_all(),
            EndReason::Idle | EndReason::TooBig => {
                plays.abort_all();
                let (code, reason) = match reason {
                    EndReason::Idle => (close_code::POLICY, "idle timeout"),
                    _ => (close_code::SIZE, "message too big"),
                };
                let _ = outbox
                    .send(Message::Close(Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    })))
                    .await;
            }
            EndReason::ServerShutdown => {
                // Each play ends by itself when the grace period is over.
                while plays.join_next().await.is_some() {}
                let close = Message::Close(Some(CloseFrame {
                    code: close_code::AWAY,
                    reason: "server shutting down".into(),
                }));
                let _ = outbox.send(close).await;
            }
        }
        drop(session);
        drop(outbox);
        let _ = writer.await;
        tracing::debug!(?reason, "disconnected");
    }
    .instrument(span)
    .await
}

#[derive(Debug, Clone, Copy)]
enum EndReason {
    ClientClosed,
    /// The client read nothing of its answers for the idle timeout: what
    /// waited for it (up to its plays' outputs) is let go.
    NotReading,
    ServerShutdown,
    /// Nothing heard for the idle timeout.
    Idle,
    /// A frame over the size limit.
    TooBig,
}

/// Whether a read error is a message over the size limit.
fn is_too_big(error: &axum::Error) -> bool {
    let source: &(dyn std::error::Error + 'static) = error;
    let mut next = Some(source);
    while let Some(e) = next {
        if let Some(tungstenite::Error::Capacity(_)) = e.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// A token bucket: `burst` calls at once, refilled at `per_sec`.
#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(burst: f64, per_sec: f64) -> Self {
        Self {
            tokens: burst,
            burst,
            per_sec,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Writes every queued frame, flushing when the queue runs dry so that a
/// burst of answers costs one write, then closes the socket. Gives up when
/// a write makes no progress for `stall` (a client that sends but never
/// reads held its answers — megabytes each — and its connection for good):
/// the outbox closes, and the connection ends.
async fn write_frames(
    mut sink: SplitSink<WebSocket, Message>,
    mut outbox: mpsc::Receiver<Message>,
    stall: Duration,
) {
    while let Some(message) = outbox.recv().await {
        let mut result = within(stall, sink.feed(message)).await;
        while result.is_ok() {
            match outbox.try_recv() {
                Ok(message) => result = within(stall, sink.feed(message)).await,
                Err(_) => break,
            }
        }
        let result = match result {
            Ok(()) => within(stall, sink.flush()).await,
            failed => failed,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "write failed; closing the connection");
            return;
        }
    }
    let _ = sink.close().await;
}

/// `write`, failed once it has made no progress for `stall`.
async fn within(
    stall: Duration,
    write: impl std::future::Future<Output = Result<(), axum::Error>>,
) -> Result<(), axum::Error> {
    tokio::time::timeout(stall, write)
        .await
        .unwrap_or_else(|_| {
            Err(axum::Error::new(format!(
                "the client read nothing for {}s",
                stall.as_secs()
            )))
        })
}

/// What a connection knows about its client.
struct Session {
    shared: Arc<Shared>,
    circle: CirclePublicKey,
    /// The key proven by the last successful `authenticate`, if any.
    authenticated: Option<CirclePublicKey>,
    outbox: mpsc::Sender<Message>,
    /// `fetch_nonce` calls this connection may still make now.
    nonce_allowance: TokenBucket,
    /// `authenticate` calls likewise: each costs signature recoveries.
    auth_allowance: TokenBucket,
    /// The client's address, whose share of nonces is bounded.
    peer_ip: std::net::IpAddr,
    /// This connection, to which the nonces it fetches belong.
    nonce_holder: crate::auth::NonceHolder,
}

impl Session {
    async fn handle_text(&mut self, text: &str, plays: &mut JoinSet<()>) {
        let request = match rpc::parse_request(text) {
            Ok(request) => request,
            Err(rejected) => {
                tracing::debug!(error = %rejected.error.message, "rejected frame");
                self.send(rejected.into_response()).await;
                return;
            }
        };
        let id = request.id;
        let call = match Call::from_request(&request.method, request.params) {
            Ok(call) => call,
            Err(error) => return self.answer(id, Err(error)).await,
        };
        match call {
            Call::FetchNonce(params) => {
                let outcome = if self.nonce_allowance.take() {
                    self.fetch_nonce(params)
                } else {
                    Err(RpcError::new(
                        code::RATE_LIMITED,
                        format!(
                            "too many fetch_nonce calls on this connection; at most {NONCES_PER_SEC} per second"
                        ),
                    ))
                };
                self.answer(id, outcome).await;
            }
            Call::Authenticate(params) => {
                let outcome = if self.auth_allowance.take() {
                    self.authenticate(params)
                } else {
                    Err(RpcError::new(
                        code::RATE_LIMITED,
                        format!(
                            "too many authenticate calls on this connection; at most {NONCES_PER_SEC} per second"
                        ),
                    ))
                };
                self.answer(id, outcome).await;
            }
            Call::Play(params) => match self.caller_id() {
                Ok(caller_id) => {
                    let Some(share) = PlayShare::take(&self.shared.plays, self.peer_ip) else {
                        let error = RpcError::new(
                            code::RATE_LIMITED,
                            format!(
                                "too many plays in flight from your network (at most {MAX_PLAYS_PER_NETWORK}); nothing was queued: wait for some to finish"
                            ),
                        );
                        return self.answer(id, Err(error)).await;
                    };
                    let play = play(Arc::clone(&self.shared), self.circle, caller_id, params);
                    let outbox = self.outbox.clone();
                    plays.spawn(
                        async move {
                            let outcome = play.await;
                            drop(share);
                            if let Some(id) = id {
                                let _ = outbox
                                    .send(text_frame(Response::from_outcome(id, outcome)))
                                    .await;
                            }
                        }
                        .in_current_span(),
                    );
                }
                Err(error) => self.answer(id, Err(error)).await,
            },
        }
    }

    /// Who a `play` runs as: the authenticated key, or anonymous when
    /// authentication is off.
    fn caller_id(&self) -> Result<String, RpcError> {
        match (&self.authenticated, self.shared.enable_auth) {
            (Some(key), _) => Ok(key.to_hex()),
            (None, false) => Ok(ANONYMOUS_CALLER_ID.to_string()),
            (None, true) => Err(RpcError::new(
                code::AUTHENTICATION_REQUIRED,
                "authentication required: call fetch_nonce, sign the nonce, then authenticate",
            )),
        }
    }

    fn fetch_nonce(&self, params: FetchNonceParams) -> Result<Value, RpcError> {
        let key = parse_pubkey(&params.pubkey)?;
        let issued = self
            .shared
            .nonces
            .issue(key, self.peer_ip, self.nonce_holder)
            .map_err(|e| RpcError::new(code::RATE_LIMITED, e.to_string()))?;
        Ok(json!({ "nonce": issued.nonce, "expires_at": issued.expires_at }))
    }

    fn authenticate(&mut self, params: AuthenticateParams) -> Result<Value, RpcError> {
        let key = parse_pubkey(&params.pubkey)?;
        let outcome = EthSignature::parse(&params.signature).and_then(|signature| {
            self.shared
                .nonces
                .redeem(&key, self.nonce_holder, &signature)
        });
        match outcome {
            Ok(()) => {
                tracing::info!(caller = %key, "authenticated");
                self.authenticated = Some(key);
                Ok(json!({ "authenticated": true }))
            }
            Err(error) => {
                tracing::debug!(caller = %key, %error, "authentication failed");
                let code = match error {
                    AuthError::MalformedSignature(_) => code::INVALID_PARAMS,
                    AuthError::InvalidSignature
                    | AuthError::NoValidNonce { .. }
                    | AuthError::SignatureMismatch => code::INVALID_CREDENTIALS,
                    AuthError::TooManyNonces | AuthError::TooManyFromAddress => code::RATE_LIMITED,
                };
                Err(RpcError::new(code, error.to_string()))
            }
        }
    }

    /// Answers a request; a notification (no id) gets nothing.
    async fn answer(&self, id: Option<RequestId>, outcome: Result<Value, RpcError>) {
        if let Some(id) = id {
            self.send(Response::from_outcome(id, outcome)).await;
        }
    }

    async fn send(&self, response: Response) {
        // Fails only when the writer is gone, i.e. the client is: the
        // reader notices on its next read.
        let _ = self.outbox.send(text_frame(response)).await;
    }
}

fn text_frame(response: Response) -> Message {
    Message::Text(response.to_json().into())
}

fn parse_pubkey(text: &str) -> Result<CirclePublicKey, RpcError> {
    CirclePublicKey::parse(text).map_err(|e| RpcError::new(code::INVALID_PARAMS, e.to_string()))
}

/// Runs a script on the circle through the dispatcher and maps the outcome
/// to JSON-RPC.
///
/// The play timeout is kept by a local timer as well as by the dispatcher's
/// `BLPOP`: Redis only checks blocked clients' timeouts a few times a second,
/// so without the timer an answer could come up to ~100 ms late, and a
/// script cut off by the worker's wall-time limit (which is the same
/// timeout) would usually win the race and come back as `-32000` rather
/// than as the timeout it is.
async fn play(
    shared: Arc<Shared>,
    circle: CirclePublicKey,
    caller_id: String,
    params: PlayParams,
) -> Result<Value, RpcError> {
    let mut grace_over = shared.grace_over.clone();
    let timeout = shared.play_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let dispatcher = &shared.dispatcher;
    // Submitted and waited for in one round trip.
    let task_id = TaskId::new();
    let run = async {
        let outcome = tokio::time::timeout_at(
            deadline,
            dispatcher.run_task(task_id, &circle, &params.script, timeout, &caller_id),
        )
        .await
        .unwrap_or(Err(DispatchError::Timeout {
            task_id,
            waited: timeout,
        }));
        play_outcome(outcome, timeout)
    };
    tokio::select! {
        outcome = run => outcome,
        () = grace_over.raised() => Err(RpcError::new(
            code::INTERNAL_ERROR,
            "the server shut down before the script finished; it was queued and may still run",
        )),
    }
}

/// Maps a dispatcher outcome to JSON-RPC; `timeout` is the play timeout the
/// client waited (the dispatcher's own figure may be the remainder of it).
fn play_outcome(
    outcome: Result<String, DispatchError>,
    timeout: Duration,
) -> Result<Value, RpcError> {
    match outcome {
        Ok(output) => Ok(Value::String(output)),
        Err(DispatchError::ScriptError { task_id, message }) => {
            tracing::debug!(%task_id, %message, "script failed");
            Err(RpcError::new(code::EXECUTION_ERROR, message.clone())
                .with_data(Value::String(message)))
        }
        Err(DispatchError::Timeout { task_id, .. }) => Err(RpcError::new(
            code::TIMEOUT,
            format!(
                "no result within {}s (task {task_id} stays queued and may still run)",
                timeout.as_secs_f64()
            ),
        )
        .with_data(json!({ "task_id": task_id.to_string() }))),
        Err(error @ DispatchError::Busy { .. }) => {
            Err(RpcError::new(code::RATE_LIMITED, error.to_string()))
        }
        Err(error @ (DispatchError::EmptyScript | DispatchError::ScriptTooLarge { .. })) => {
            Err(RpcError::new(code::INVALID_PARAMS, error.to_string()))
        }
        Err(error @ DispatchError::CircleOffline { .. }) => {
            let DispatchError::CircleOffline { last_seen, .. } = &error else {
                unreachable!()
            };
            let data = json!({ "last_seen": last_seen });
            Err(RpcError::new(code::CIRCLE_OFFLINE, error.to_string()).with_data(data))
        }
        Err(error) => {
            tracing::warn!(%error, "play failed");
            Err(RpcError::new(code::INTERNAL_ERROR, error.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use circles_dispatcher::TaskId;

    const T: Duration = Duration::from_secs(2);

    #[test]
    fn dispatch_outcomes_map_to_the_spec_codes() {
        assert_eq!(play_outcome(Ok("42".into()), T), Ok(json!("42")));

        let err = play_outcome(
            Err(DispatchError::ScriptError {
                task_id: TaskId::new(),
                message: "Variable not found: x".into(),
            }),
            T,
        )
        .unwrap_err();
        assert_eq!(err.code, code::EXECUTION_ERROR);
        assert_eq!(err.message, "Variable not found: x");
        assert_eq!(err.data, Some(json!("Variable not found: x")));

        let task_id = TaskId::new();
        let err = play_outcome(
            Err(DispatchError::Timeout {
                task_id,
                waited: Duration::from_millis(1998),
            }),
            T,
        )
        .unwrap_err();
        assert_eq!(err.code, code::TIMEOUT);
        // The play timeout, not whatever remainder the dispatcher waited.
        assert!(err.message.contains("within 2s"), "{}", err.message);
        assert_eq!(err.data, Some(json!({ "task_id": task_id.to_string() })));

        let err = play_outcome(Err(DispatchError::Busy { in_flight: 1000 }), T).unwrap_err();
        assert_eq!(err.code, code::RATE_LIMITED);
        assert!(
            err.message.contains("nothing was queued"),
            "{}",
            err.message
        );

        let err = play_outcome(Err(DispatchError::EmptyScript), T).unwrap_err();
        assert_eq!(err.code, code::INVALID_PARAMS);

        let err = play_outcome(Err(DispatchError::TaskNotFound(TaskId::new())), T).unwrap_err();
        assert_eq!(err.code, code::INTERNAL_ERROR);
    }
}
