//! When to restart: the restart policy as a value, and the pure decision
//! that turns each exit into "restart after this backoff" or "give up".
//!
//! The numbers mirror the services crate's `RestartPolicy` (systemd's
//! `RestartSec=`, `StartLimitBurst=`): a child that keeps failing soon after
//! starting ends `failed`, like a unit that hit its start limit, instead of
//! looping forever.

use std::time::Duration;

/// How a supervised child is restarted and stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Wait before the first restart; doubles after each fast failure.
    pub backoff_start: Duration,
    /// The backoff never grows past this.
    pub backoff_max: Duration,
    /// A run that served (was ready) for less than this is a fast failure;
    /// a run that never became ready always is.
    pub fast_failure: Duration,
    /// Fast failures in a row before giving up (state `failed`).
    pub max_fast_failures: u32,
    /// How long a child may take to send `READY=1` before it is killed and
    /// the attempt counts as a fast failure.
    pub ready_timeout: Duration,
    /// How long a stopping child may take after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            backoff_start: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            fast_failure: Duration::from_secs(10),
            max_fast_failures: 5,
            ready_timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// What to do after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Start it again after this long.
    Restart {
        /// The backoff to wait first.
        after: Duration,
    },
    /// Too many fast failures in a row: stop trying.
    GiveUp {
        /// How many fast failures there were in a row.
        fast_failures: u32,
    },
}

/// Counts fast failures and grows the backoff; pure, so it is tested without
/// processes or clocks.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    fast_failures: u32,
    backoff: Duration,
}

impl RestartTracker {
    /// A tracker with no failures yet.
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            fast_failures: 0,
            backoff: policy.backoff_start,
        }
    }

    /// Fast failures in a row so far.
    pub fn fast_failures(&self) -> u32 {
        self.fast_failures
    }

    /// Records an exit after the child served (was ready) for `served`
    /// (zero if it never became ready) and says what to do next.
    pub fn on_exit(&mut self, served: Duration) -> RestartDecision {
        if served < self.policy.fast_failure {
            self.fast_failures += 1;
        } else {
            // A run that served long enough starts the count afresh.
            self.fast_failures = 0;
            self.backoff = self.policy.backoff_start;
        }
        if self.fast_failures >= self.policy.max_fast_failures.max(1) {
            return RestartDecision::GiveUp {
                fast_failures: self.fast_failures,
            };
        }
        let after = self.backoff;
        self.backoff = (self.backoff * 2).min(self.policy.backoff_max);
        RestartDecision::Restart { after }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            backoff_start: Duration::from_millis(100),
            backoff_max: Duration::from_millis(350),
            fast_failure: Duration::from_secs(10),
            max_fast_failures: 4,
            ..RestartPolicy::default()
        }
    }

    #[test]
    fn fast_failures_back_off_exponentially_up_to_the_cap_then_give_up() {
        let mut t = RestartTracker::new(policy());
        let ms = Duration::from_millis;
        assert_eq!(
            t.on_exit(Duration::ZERO),
            RestartDecision::Restart { after: ms(100) }
        );
        assert_eq!(
            t.on_exit(ms(5)),
            RestartDecision::Restart { after: ms(200) }
        );
        assert_eq!(
            t.on_exit(Duration::ZERO),
            RestartDecision::Restart { after: ms(350) }
        );
        assert_eq!(
            t.on_exit(Duration::ZERO),
            RestartDecision::GiveUp { fast_failures: 4 }
        );
    }

    #[test]
    fn a_run_that_served_long_enough_resets_count_and_backoff() {
        let mut t = RestartTracker::new(policy());
        for _ in 0..3 {
            t.on_exit(Duration::ZERO);
        }
        assert_eq!(t.fast_failures(), 3);
        assert_eq!(
            t.on_exit(Duration::from_secs(60)),
            RestartDecision::Restart {
                after: Duration::from_millis(100)
            }
        );
        assert_eq!(t.fast_failures(), 0);
        // Three more fast failures are needed again before giving up.
        for _ in 0..3 {
            assert!(matches!(
                t.on_exit(Duration::ZERO),
                RestartDecision::Restart { .. }
            ));
        }
        assert!(matches!(
            t.on_exit(Duration::ZERO),
            RestartDecision::GiveUp { .. }
        ));
    }

    #[test]
    fn zero_allowed_failures_still_means_one() {
        let mut t = RestartTracker::new(RestartPolicy {
            max_fast_failures: 0,
            ..policy()
        });
        assert_eq!(
            t.on_exit(Duration::ZERO),
            RestartDecision::GiveUp { fast_failures: 1 }
        );
    }
}
