//! The webhook deliveries a sidecar reports to the operator with its acknowledgements
//! (`bulwark_api::distribution::WebhookDeliveries`): per endpoint, the store's cumulative
//! counts, the last failure, the last success and when the current failure streak began.
//!
//! The streak is found by sampling ([`Tracker::observe`], every [`SAMPLE_INTERVAL`] while the
//! stream is connected, and with every acknowledgement): a sample in which the delivered count
//! grew ends a streak (even if failures came in the same second: the leader must never disable
//! an endpoint that still succeeds); a sample in which only failures were counted starts one, at
//! the newest failure it saw (so at most one interval late, never early). A spec change
//! (another generation) and a disabled endpoint start the clock over. The leader combines the
//! pods' streaks (operator `deliveries`), and keeps the endpoint's in its status, so a sidecar
//! restart (which forgets its streak) does not reset the endpoint's.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use bulwark_api::distribution::{MAX_REASON_CHARS, WebhookDeliveries, WebhookFailure};
use bulwark_policy::{runtime::Runtime, webhooks::outbox::Outbox};

/// How often the stream samples the counts while connected.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// One endpoint as the sidecar sees it now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub delivered: u64,
    pub failed_attempts: u64,
    pub dead_lettered: u64,
    pub last_failure: Option<WebhookFailure>,
    /// The generation of the endpoint in the installed policy (0: not in it).
    pub generation: i64,
    /// Disabled, or not in the installed policy: no attempts are made.
    pub disabled: bool,
}

/// Where observations come from.
#[async_trait]
pub trait DeliverySource: Send + Sync {
    /// Every endpoint the store has counted and every endpoint of the installed policy.
    async fn observe(&self) -> BTreeMap<String, Observed>;
}

/// The sidecar's outbox and installed policy.
pub struct OutboxSource {
    pub outbox: Arc<Outbox>,
    pub runtime: Arc<Runtime>,
}

impl OutboxSource {
    pub fn new(outbox: Arc<Outbox>, runtime: Arc<Runtime>) -> Self {
        Self { outbox, runtime }
    }
}

#[async_trait]
impl DeliverySource for OutboxSource {
    async fn observe(&self) -> BTreeMap<String, Observed> {
        let counts = self.outbox.counts();
        let policy = self.runtime.policy();
        let mut out: BTreeMap<String, Observed> = BTreeMap::new();
        for (id, c) in counts {
            let entry = out.entry(id).or_default();
            entry.delivered = c.delivered;
            entry.failed_attempts = c.failed_attempts;
            entry.dead_lettered = c.dead_lettered;
        }
        for endpoint in policy.webhooks.iter() {
            out.entry(endpoint.id.clone()).or_default();
        }
        let failures = self.outbox.last_failures();
        for (id, entry) in &mut out {
            let endpoint = policy.webhooks.get(id);
            entry.generation = endpoint.map_or(0, |e| e.source.generation);
            entry.disabled = endpoint.is_none_or(|e| e.disabled);
            entry.last_failure = failures.get(id).map(|f| WebhookFailure {
                at_ms: f.at_unix_ms,
                status: f.status,
                reason: f.reason.chars().take(MAX_REASON_CHARS).collect(),
            });
        }
        out
    }
}

/// What the tracker remembers of one endpoint between samples.
#[derive(Clone, Debug)]
struct Track {
    delivered: u64,
    failed_attempts: u64,
    generation: i64,
    failing_since: Option<u64>,
    last_success: Option<u64>,
}

/// Turns samples into reports, remembering each endpoint's streak.
#[derive(Debug, Default)]
pub struct Tracker {
    endpoints: HashMap<String, Track>,
}

impl Tracker {
    /// Takes one sample at `now_ms`; returns the report.
    pub fn observe(
        &mut self,
        now_ms: u64,
        observed: BTreeMap<String, Observed>,
    ) -> BTreeMap<String, WebhookDeliveries> {
        self.endpoints.retain(|id, _| observed.contains_key(id));
        let mut report = BTreeMap::new();
        for (id, o) in observed {
            let track = self.endpoints.entry(id.clone()).or_insert_with(|| Track {
                // First sight (or after a restart): no deltas yet.
                delivered: o.delivered,
                failed_attempts: o.failed_attempts,
                generation: o.generation,
                failing_since: None,
                last_success: None,
            });
            if track.generation != o.generation {
                track.generation = o.generation;
                track.failing_since = None;
            }
            if o.delivered > track.delivered {
                track.last_success = Some(now_ms);
                track.failing_since = None;
            } else if o.failed_attempts > track.failed_attempts && track.failing_since.is_none() {
                track.failing_since = Some(
                    o.last_failure
                        .as_ref()
                        .map_or(now_ms, |f| f.at_ms.min(now_ms)),
                );
            }
            if o.disabled {
                track.failing_since = None;
            }
            track.delivered = o.delivered;
            track.failed_attempts = o.failed_attempts;
            report.insert(
                id,
                WebhookDeliveries {
                    generation: o.generation,
                    delivered: o.delivered,
                    failed_attempts: o.failed_attempts,
                    dead_lettered: o.dead_lettered,
                    last_failure: o.last_failure,
                    last_success_ms: track.last_success,
                    failing_since_ms: track.failing_since,
                },
            );
        }
        report
    }
}

/// A source and its tracker: what the stream samples.
pub struct DeliveryReporter {
    source: Arc<dyn DeliverySource>,
    tracker: std::sync::Mutex<Tracker>,
}

impl DeliveryReporter {
    pub fn new(source: Arc<dyn DeliverySource>) -> Self {
        Self {
            source,
            tracker: std::sync::Mutex::default(),
        }
    }

    /// Samples now; returns the report.
    pub async fn sample(&self) -> BTreeMap<String, WebhookDeliveries> {
        let observed = self.source.observe().await;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        bulwark_policy::lock::lock(&self.tracker).observe(now_ms, observed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(delivered: u64, failed: u64, last_failure_at: Option<u64>) -> Observed {
        Observed {
            delivered,
            failed_attempts: failed,
            dead_lettered: 0,
            last_failure: last_failure_at.map(|at_ms| WebhookFailure {
                at_ms,
                status: Some(503),
                reason: "HTTP 503".into(),
            }),
            generation: 1,
            disabled: false,
        }
    }

    fn sample(tracker: &mut Tracker, now: u64, o: Observed) -> WebhookDeliveries {
        let mut report = tracker.observe(now, BTreeMap::from([("shop/billing".into(), o)]));
        report.remove("shop/billing").unwrap()
    }

    #[test]
    fn a_streak_starts_with_failures_alone_and_ends_with_a_delivery() {
        let mut t = Tracker::default();
        // First sight: counts only.
        let r = sample(&mut t, 1_000, observed(3, 1, Some(500)));
        assert_eq!(
            (
                r.delivered,
                r.failed_attempts,
                r.failing_since_ms,
                r.last_success_ms
            ),
            (3, 1, None, None)
        );
        // Deliveries: a success.
        let r = sample(&mut t, 2_000, observed(5, 1, Some(500)));
        assert_eq!((r.failing_since_ms, r.last_success_ms), (None, Some(2_000)));
        // Failures only: a streak from the newest failure seen.
        let r = sample(&mut t, 3_000, observed(5, 3, Some(2_900)));
        assert_eq!(r.failing_since_ms, Some(2_900));
        // More failures: the streak keeps its start.
        let r = sample(&mut t, 4_000, observed(5, 6, Some(3_900)));
        assert_eq!(r.failing_since_ms, Some(2_900));
        // Nothing new: unchanged.
        let r = sample(&mut t, 5_000, observed(5, 6, Some(3_900)));
        assert_eq!(r.failing_since_ms, Some(2_900));
        // A delivery and a failure in one sample: the streak ends (never disable an endpoint
        // that still succeeds).
        let r = sample(&mut t, 6_000, observed(6, 7, Some(5_950)));
        assert_eq!((r.failing_since_ms, r.last_success_ms), (None, Some(6_000)));
    }

    #[test]
    fn a_new_generation_or_disabling_starts_the_clock_over() {
        let mut t = Tracker::default();
        sample(&mut t, 1_000, observed(0, 0, None));
        let r = sample(&mut t, 2_000, observed(0, 2, Some(1_500)));
        assert_eq!(r.failing_since_ms, Some(1_500));
        let mut next = observed(0, 2, Some(1_500));
        next.generation = 2;
        let r = sample(&mut t, 3_000, next.clone());
        assert_eq!((r.generation, r.failing_since_ms), (2, None));
        let mut failing = observed(0, 4, Some(3_500));
        failing.generation = 2;
        assert_eq!(
            sample(&mut t, 4_000, failing.clone()).failing_since_ms,
            Some(3_500)
        );
        failing.disabled = true;
        failing.failed_attempts = 5;
        assert_eq!(sample(&mut t, 5_000, failing).failing_since_ms, None);
    }

    #[test]
    fn endpoints_no_longer_observed_are_forgotten() {
        let mut t = Tracker::default();
        sample(&mut t, 1_000, observed(0, 0, None));
        sample(&mut t, 2_000, observed(0, 1, Some(1_500)));
        assert!(t.observe(3_000, BTreeMap::new()).is_empty());
        assert!(t.endpoints.is_empty());
    }
}
