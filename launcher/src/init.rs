//! Sending each circle's init script through the dispatcher once its worker
//! is ready, with the circle's own key as `CALLER_ID` — the same in direct
//! and service mode.

use std::time::Duration;

use circles_dispatcher::{CirclePublicKey, DispatchError, Dispatcher};

use crate::settings::CircleSpec;

/// How one init script ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    /// The script's output.
    Done(String),
    /// Why it failed (the script's error, a timeout, Redis).
    Failed(String),
}

impl InitOutcome {
    /// `ok: <output>` / `error: <message>`, as the status table shows it.
    pub fn summary(&self) -> String {
        match self {
            Self::Done(output) => format!("ok: {output}"),
            Self::Failed(message) => format!("error: {message}"),
        }
    }
}

/// Runs the init scripts of `circles` (those that have one) all at once and
/// logs each outcome.
pub async fn run_init_scripts<'a>(
    dispatcher: &Dispatcher,
    circles: impl IntoIterator<Item = &'a CircleSpec>,
    timeout: Duration,
) -> Vec<(CirclePublicKey, InitOutcome)> {
    let calls = circles.into_iter().filter_map(|c| {
        let script = c.init_script.as_ref()?;
        Some(async move {
            let result = dispatcher.run_as(&c.key, &script.source, timeout, &c.key.to_hex()).await;
            let outcome = match result {
                Ok(output) => {
                    tracing::info!(circle = %c.name, script = %script.path.display(), %output, "init script done");
                    InitOutcome::Done(output)
                }
                Err(e) => {
                    let message = match e {
                        DispatchError::ScriptError { message, .. } => message,
                        e => e.to_string(),
                    };
                    tracing::error!(circle = %c.name, script = %script.path.display(), "init script failed: {message}");
                    InitOutcome::Failed(message)
                }
            };
            (c.key, outcome)
        })
    });
    futures_util::future::join_all(calls).await
}
