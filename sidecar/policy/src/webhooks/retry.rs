//! What an attempt's result means for its delivery: delivered, try again later (when), or give
//! up. Pure: the dispatcher carries it out.
//!
//! Retried: network errors, timeouts, `429` (its `Retry-After` honoured up to
//! [`MAX_RETRY_AFTER`]), `5xx`, and the three `4xx` that say "not now" rather than "never":
//! `408 Request Timeout`, `409 Conflict` (the receiver is busy with the same resource) and
//! `425 Too Early`. Any other `4xx`, and a redirect the endpoint does not follow, will not
//! change by asking again: the message becomes a dead letter at once (replayable once the
//! receiver is fixed). Refused targets (the SSRF guard) are the same: asking again cannot help.

use std::time::Duration;

/// The most a receiver's `Retry-After` can push an attempt back: beyond it the schedule's own
/// delay decides, so a receiver cannot park messages for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How an attempt ended, as the transport saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    /// A response arrived (any status).
    Response {
        status: u16,
        /// `Retry-After` in seconds, when the response had one.
        retry_after: Option<Duration>,
    },
    /// No response: the connection failed, broke or timed out.
    Failed { kind: FailureKind, detail: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// DNS, connect, TLS or a connection that broke off: may work later.
    Network,
    /// The attempt took longer than the endpoint's `timeout`.
    Timeout,
    /// The target resolves only to addresses the endpoint may not reach (SSRF guard), or the
    /// URL cannot be used: will not work later either.
    Refused,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::Timeout => "timeout",
            Self::Refused => "refused",
        }
    }
}

impl AttemptResult {
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Response { status, .. } if (200..300).contains(status))
    }

    /// A short, secret-free description for status and dead letters (`HTTP 503`, `timeout`).
    pub fn describe(&self) -> String {
        match self {
            Self::Response { status, .. } => format!("HTTP {status}"),
            Self::Failed { kind, detail } => format!("{}: {detail}", kind.as_str()),
        }
    }

    /// The metric label of the result (bounded: status classes and failure kinds).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Response { status, .. } => match status {
                200..=299 => "2xx",
                300..=399 => "3xx",
                429 => "429",
                400..=499 => "4xx",
                _ => "5xx",
            },
            Self::Failed { kind, .. } => kind.as_str(),
        }
    }

    fn retryable(&self) -> bool {
        match self {
            Self::Response { status, .. } => {
                matches!(status, 408 | 409 | 425 | 429) || (500..=599).contains(status)
            }
            Self::Failed { kind, .. } => *kind != FailureKind::Refused,
        }
    }
}

/// What to do with a delivery after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    Delivered,
    /// Attempt again `after` this long (from now).
    RetryAfter(Duration),
    /// Give up: keep it as a dead letter, with why.
    DeadLetter(String),
}

/// The retry schedule of an endpoint: `delays[0]` before the first attempt, `delays[n]` after
/// the `n`th failure, each spread by up to `jitter_percent` of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub delays: Vec<Duration>,
    pub jitter_percent: u8,
    /// Messages older than this are not attempted again.
    pub max_message_age: Duration,
}

impl Schedule {
    /// Svix's: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    pub fn default_delays() -> Vec<Duration> {
        [0, 5, 300, 1800, 7200, 18_000, 36_000, 36_000]
            .into_iter()
            .map(Duration::from_secs)
            .collect()
    }

    /// The delay before the first attempt.
    pub fn first(&self, random: f64) -> Duration {
        self.jittered(self.delays.first().copied().unwrap_or_default(), random)
    }

    /// After attempt number `attempts` (1 = the first) ended with `result`, for a message
    /// accepted `age` ago. `random` is uniform in `[0, 1)`, for the jitter.
    pub fn next(&self, attempts: u32, result: &AttemptResult, age: Duration, random: f64) -> Next {
        if result.is_success() {
            return Next::Delivered;
        }
        if !result.retryable() {
            return Next::DeadLetter(format!("{} (not retried)", result.describe()));
        }
        let Some(&scheduled) = self.delays.get(attempts as usize) else {
            return Next::DeadLetter(format!(
                "{} after {attempts} attempts (schedule exhausted)",
                result.describe()
            ));
        };
        let mut delay = self.jittered(scheduled, random);
        if let AttemptResult::Response {
            status: 429,
            retry_after: Some(asked),
        } = result
        {
            delay = delay.max((*asked).min(MAX_RETRY_AFTER));
        }
        if age + delay > self.max_message_age {
            return Next::DeadLetter(format!(
                "{} and the next attempt would pass maxMessageAge",
                result.describe()
            ));
        }
        Next::RetryAfter(delay)
    }

    fn jittered(&self, delay: Duration, random: f64) -> Duration {
        delay.mul_f64(1.0 + f64::from(self.jitter_percent) / 100.0 * random.clamp(0.0, 1.0))
    }
}

/// A `Retry-After` header: delay-seconds. (An HTTP-date is ignored: the schedule decides.)
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn schedule() -> Schedule {
        Schedule {
            delays: Schedule::default_delays(),
            jitter_percent: 0,
            max_message_age: Duration::from_secs(72 * 3600),
        }
    }

    fn status(status: u16) -> AttemptResult {
        AttemptResult::Response {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn success_is_delivered_and_permanent_errors_are_dead_at_once() {
        let s = schedule();
        assert_eq!(
            s.next(1, &status(204), Duration::ZERO, 0.0),
            Next::Delivered
        );
        for permanent in [400, 401, 403, 404, 410, 422, 301] {
            assert!(
                matches!(
                    s.next(1, &status(permanent), Duration::ZERO, 0.0),
                    Next::DeadLetter(_)
                ),
                "{permanent}"
            );
        }
        let refused = AttemptResult::Failed {
            kind: FailureKind::Refused,
            detail: "10.0.0.1 is private".into(),
        };
        assert!(matches!(
            s.next(1, &refused, Duration::ZERO, 0.0),
            Next::DeadLetter(_)
        ));
    }

    #[test]
    fn transient_errors_follow_the_schedule_until_it_ends() {
        let s = schedule();
        for transient in [408, 409, 425, 429, 500, 502, 503, 504] {
            assert_eq!(
                s.next(1, &status(transient), Duration::ZERO, 0.0),
                Next::RetryAfter(Duration::from_secs(5)),
                "{transient}"
            );
        }
        let timeout = AttemptResult::Failed {
            kind: FailureKind::Timeout,
            detail: "15s".into(),
        };
        assert_eq!(
            s.next(2, &timeout, Duration::ZERO, 0.0),
            Next::RetryAfter(Duration::from_secs(300))
        );
        assert!(matches!(
            s.next(8, &timeout, Duration::ZERO, 0.0),
            Next::DeadLetter(_)
        ));
    }

    #[test]
    fn retry_after_pushes_a_429_back_within_bounds() {
        let s = schedule();
        let asked = |secs| AttemptResult::Response {
            status: 429,
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            s.next(1, &asked(60), Duration::ZERO, 0.0),
            Next::RetryAfter(Duration::from_secs(60))
        );
        // Shorter than the schedule: the schedule wins.
        assert_eq!(
            s.next(1, &asked(1), Duration::ZERO, 0.0),
            Next::RetryAfter(Duration::from_secs(5))
        );
        assert_eq!(
            s.next(1, &asked(86_400), Duration::ZERO, 0.0),
            Next::RetryAfter(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn an_attempt_past_the_message_age_is_not_scheduled() {
        let s = Schedule {
            max_message_age: Duration::from_secs(60),
            ..schedule()
        };
        assert!(matches!(
            s.next(2, &status(503), Duration::from_secs(10), 0.0),
            Next::DeadLetter(_)
        ));
    }

    proptest! {
        #[test]
        fn jitter_stays_within_its_percent(random in 0.0f64..1.0, percent in 0u8..=100, n in 1u32..8) {
            let s = Schedule { jitter_percent: percent, ..schedule() };
            let base = s.delays[n as usize];
            match s.next(n, &status(503), Duration::ZERO, random) {
                Next::RetryAfter(d) => {
                    prop_assert!(d >= base);
                    prop_assert!(d <= base.mul_f64(1.0 + f64::from(percent) / 100.0));
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
