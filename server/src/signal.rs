//! A one-way, many-listener flag ("shutdown has begun", "the grace period is
//! over") that tasks can both poll and await.
//!
//! A `watch` channel rather than a `Notify`, because a task that starts
//! listening after the flag was raised must still see it. A trigger that is
//! dropped counts as raised: if the server goes away, everything waiting on
//! it should stop too.

use tokio::sync::watch;

/// Raises the flag.
#[derive(Debug)]
pub(crate) struct Trigger(watch::Sender<bool>);

/// Waits for, or checks, the flag.
#[derive(Debug, Clone)]
pub(crate) struct Signal(watch::Receiver<bool>);

/// A new, lowered flag.
pub(crate) fn flag() -> (Trigger, Signal) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Signal(rx))
}

impl Trigger {
    /// Raises the flag for every [`Signal`], present and future.
    pub(crate) fn raise(&self) {
        self.0.send_replace(true);
    }
}

impl Signal {
    /// Whether the flag is raised.
    pub(crate) fn is_raised(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Resolves once the flag is raised (at once if it already is).
    pub(crate) async fn raised(&mut self) {
        // An error means the trigger is gone, which counts as raised. The
        // borrow guard is dropped inside this function, so callers' futures
        // stay `Send`.
        let _ = self.0.wait_for(|raised| *raised).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn late_listeners_see_a_raised_flag() {
        let (trigger, mut signal) = flag();
        assert!(!signal.is_raised());
        trigger.raise();
        let mut late = signal.clone();
        late.raised().await;
        signal.raised().await;
        assert!(late.is_raised());
    }

    #[tokio::test]
    async fn a_dropped_trigger_counts_as_raised() {
        let (trigger, mut signal) = flag();
        drop(trigger);
        assert!(signal.is_raised());
        signal.raised().await;
    }
}
