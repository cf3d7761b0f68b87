//! The server's line to Redis: a [`Dispatcher`] that is replaced by a fresh
//! one when its connection breaks.
//!
//! Why: a `Dispatcher` keeps one multiplexed connection for short commands
//! (submit, `SISMEMBER`), and that connection does not reconnect by itself.
//! Without this, a Redis restart would leave every later `play` failing with
//! "broken pipe" until the server itself was restarted. The call that hits
//! the broken connection still fails (retrying a submission could queue a
//! task twice); the calls after it use the new connection.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use circles_dispatcher::Dispatcher;

/// Recorded as the dispatcher's own caller id; every `play` overrides it
/// with the connection's caller, so it shows only if that ever goes wrong.
const DISPATCHER_CALLER_ID: &str = "circles-server";
/// At most one reconnection attempt per this interval, however many calls
/// fail meanwhile, so a Redis that stays down is not hammered.
const MIN_RECONNECT_INTERVAL: Duration = Duration::from_millis(500);

/// The current dispatcher and how to replace it.
#[derive(Debug)]
pub(crate) struct RedisLink {
    url: String,
    /// The dispatcher in use, with a generation number that grows with each
    /// replacement, so that a failure seen on an old one does not replace a
    /// new one again.
    current: RwLock<(u64, Dispatcher)>,
    /// When the last reconnection attempt started; held while one runs.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
}

/// A dispatcher lent to one call, and which generation it is.
#[derive(Debug, Clone)]
pub(crate) struct LentDispatcher {
    pub(crate) dispatcher: Dispatcher,
    generation: u64,
}

impl RedisLink {
    /// Connects to Redis at `url`.
    pub(crate) async fn connect(url: &str) -> Result<Self, circles_dispatcher::DispatchError> {
        let dispatcher = Dispatcher::connect(url, DISPATCHER_CALLER_ID).await?;
        Ok(Self {
            url: url.to_string(),
            current: RwLock::new((0, dispatcher)),
            last_attempt: tokio::sync::Mutex::new(None),
        })
    }

    /// The dispatcher to use for one call.
    pub(crate) fn dispatcher(&self) -> LentDispatcher {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        LentDispatcher {
            dispatcher: current.1.clone(),
            generation: current.0,
        }
    }

    /// Reports that a call on `lent` failed talking to Redis: replaces the
    /// dispatcher unless that already happened, another call is already
    /// reconnecting, or the last attempt was too recent.
    pub(crate) async fn connection_failed(&self, lent: &LentDispatcher) {
        let Ok(mut last_attempt) = self.last_attempt.try_lock() else {
            return;
        };
        if self.dispatcher().generation != lent.generation
            || last_attempt.is_some_and(|t| t.elapsed() < MIN_RECONNECT_INTERVAL)
        {
            return;
        }
        *last_attempt = Some(Instant::now());
        match Dispatcher::connect(&self.url, DISPATCHER_CALLER_ID).await {
            Ok(fresh) => {
                let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
                *current = (lent.generation + 1, fresh);
                tracing::info!(url = %self.url, "reconnected to Redis");
            }
            Err(error) => tracing::warn!(%error, "cannot reconnect to Redis yet"),
        }
    }
}
