//! A WebhookEndpoint's delivery status, from what its sidecars report (written by the leader).
//!
//! Each sidecar reports, with its acknowledgements ([`Ack::webhooks`]), its cumulative counts
//! per endpoint, its last failure, its last success and when its current failure streak began
//! (`bulwark_api::distribution::WebhookDeliveries`). The leader, from the replicas' merged
//! reports:
//!
//! - **sums the counts over pods** into `status.deliveries`. A pod's counts stop being reported
//!   when the pod is gone, so the leader moves them into `status.retiredDeliveries` (part of
//!   the sum) when a pod it had counted leaves the index, or when a pod's counts go backwards
//!   (its store was reset): `deliveries` does not drop when pods are replaced ([`Tally`]);
//! - keeps the **newest failure** in `status.lastFailure`;
//! - decides the **`Delivering` condition** ([`decide`]): `True` while no attempt is failing;
//!   `False`/`Failing` while every attempt since a time has failed ([`failing_since`]), with
//!   `lastTransitionTime` at that time; `False`/`AutoDisabled` once that has lasted
//!   `disableAfterFailingFor` (default 120h, `0s` never), which disables the endpoint until its
//!   spec changes; `False`/`Disabled` when `spec.disabled` is true.
//!
//! [`Ack::webhooks`]: bulwark_api::distribution::Ack::webhooks

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use bulwark_api::{
    crd::{
        WebhookEndpointSpec,
        webhook::{DeliveryCounts, DeliveryFailure},
    },
    distribution::WebhookDeliveries,
};
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

use crate::index::AUTO_DISABLED;

/// `disableAfterFailingFor` when omitted.
pub const DEFAULT_DISABLE_AFTER: Duration = Duration::from_secs(120 * 3600);

pub const DELIVERING: &str = "Delivering";
pub const FAILING: &str = "Failing";
pub const DISABLED: &str = "Disabled";

/// One pod as counted: `namespace/name` and uid (a pod re-created under the same name is
/// another pod, with a store of its own).
pub type PodId = (String, String);

/// What the leader has counted for one endpoint in this leadership term.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    /// The endpoint's uid: a re-created endpoint starts over.
    pub uid: String,
    /// Counts of pods that are gone (or whose counts were reset), from the stored status at
    /// the start of the term, then kept here.
    pub retired: DeliveryCounts,
    /// The last counts of each pod counted.
    pub pods: HashMap<PodId, DeliveryCounts>,
}

impl Tally {
    /// A tally for endpoint `uid`, from the stored `retiredDeliveries`.
    pub fn new(uid: &str, retired: Option<&DeliveryCounts>) -> Self {
        Self {
            uid: uid.to_owned(),
            retired: retired.cloned().unwrap_or_default(),
            pods: HashMap::new(),
        }
    }

    /// Takes this round's reports (`reported`: the live pods that report the endpoint) and
    /// `alive` (whether a pod still exists); returns the total.
    pub fn update<'a>(
        &mut self,
        reported: impl IntoIterator<Item = (PodId, &'a WebhookDeliveries)>,
        alive: impl Fn(&PodId) -> bool,
    ) -> DeliveryCounts {
        for (pod, report) in reported {
            let now = counts(report);
            if let Some(before) = self.pods.get(&pod)
                && (now.succeeded < before.succeeded
                    || now.failed_attempts < before.failed_attempts
                    || now.dead_lettered < before.dead_lettered)
            {
                // The pod's store started over: what it counted before stays counted.
                self.retired = add(&self.retired, before);
            }
            self.pods.insert(pod, now);
        }
        let gone: Vec<PodId> = self.pods.keys().filter(|p| !alive(p)).cloned().collect();
        for pod in gone {
            if let Some(last) = self.pods.remove(&pod) {
                self.retired = add(&self.retired, &last);
            }
        }
        self.pods
            .values()
            .fold(self.retired.clone(), |sum, c| add(&sum, c))
    }
}

fn counts(r: &WebhookDeliveries) -> DeliveryCounts {
    let i = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    DeliveryCounts {
        succeeded: i(r.delivered),
        failed_attempts: i(r.failed_attempts),
        dead_lettered: i(r.dead_lettered),
    }
}

fn add(a: &DeliveryCounts, b: &DeliveryCounts) -> DeliveryCounts {
    DeliveryCounts {
        succeeded: a.succeeded.saturating_add(b.succeeded),
        failed_attempts: a.failed_attempts.saturating_add(b.failed_attempts),
        dead_lettered: a.dead_lettered.saturating_add(b.dead_lettered),
    }
}

/// The newest of the stored last failure and the reported ones.
pub fn last_failure<'a>(
    stored: Option<&DeliveryFailure>,
    reports: impl IntoIterator<Item = &'a WebhookDeliveries>,
) -> Option<DeliveryFailure> {
    let reported = reports
        .into_iter()
        .filter_map(|r| r.last_failure.as_ref())
        .max_by_key(|f| f.at_ms);
    let reported = reported.and_then(|f| {
        Some(DeliveryFailure {
            time: Time(Timestamp::from_millisecond(i64::try_from(f.at_ms).ok()?).ok()?),
            status_code: f.status,
            reason: f
                .reason
                .chars()
                .take(bulwark_api::distribution::MAX_REASON_CHARS)
                .collect(),
        })
    });
    match (stored, reported) {
        (Some(s), Some(r)) if s.time.0 >= r.time.0 => Some(s.clone()),
        (_, Some(r)) => Some(r),
        (s, None) => s.cloned(),
    }
}

/// Since when every attempt (of the current generation) has failed, across pods; `None` when
/// the last attempt anywhere succeeded, or none failed.
///
/// `previous` is the time the stored `Failing` condition gives (it outlives pods and leaders):
/// it holds unless a pod reports a success after it. Each pod reports its own streak
/// (`failingSinceMs`: the first failure after its last success) and its last success. With `L`
/// the last success of any pod, a pod's streak counts from its start if that is after `L`; a
/// pod failing since before `L` counts from its last failure (its first failure after `L` is
/// not known; the last one is a later, so cautious, bound). The earliest of these is when the
/// endpoint's streak began: every attempt since then, on every pod, failed.
pub fn failing_since(previous: Option<u64>, reports: &[&WebhookDeliveries]) -> Option<u64> {
    let last_success = reports.iter().filter_map(|r| r.last_success_ms).max();
    let previous = previous.filter(|p| last_success.is_none_or(|l| l < *p));
    let after = |t: u64| last_success.is_none_or(|l| t > l);
    let reported = reports
        .iter()
        .filter_map(|r| {
            let since = r.failing_since_ms?;
            if after(since) {
                Some(since)
            } else {
                r.last_failure
                    .as_ref()
                    .map(|f| f.at_ms)
                    .filter(|t| after(*t))
            }
        })
        .min();
    match (previous, reported) {
        (Some(p), Some(r)) => Some(p.min(r)),
        (p, r) => p.or(r),
    }
}

/// What the `Delivering` condition should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No attempt is failing (or none was made).
    Delivering,
    /// Every attempt since `since_ms` failed; not for long enough to disable.
    Failing { since_ms: u64 },
    /// `spec.disabled` is true.
    Disabled,
    /// Failing for `disableAfterFailingFor`: the leader disables the endpoint now (an Event
    /// says so).
    Disable { since_ms: u64 },
    /// Disabled by the leader at this generation already: the stored condition stays.
    StillAutoDisabled,
    /// Not Accepted: no sidecar delivers to it.
    NotAccepted,
}

/// `disableAfterFailingFor`, `None` for `0s` (never).
pub fn disable_after(spec: &WebhookEndpointSpec) -> Option<Duration> {
    let d = spec
        .disable_after_failing_for
        .map_or(DEFAULT_DISABLE_AFTER, |d| d.as_std());
    (!d.is_zero()).then_some(d)
}

/// The stored streak start: the `Failing` condition's `lastTransitionTime`, if it describes
/// `generation` (a spec change starts the clock over, as the sidecars' streaks do).
pub fn previous_streak(previous: Option<&Condition>, generation: i64) -> Option<u64> {
    let c = previous?;
    (c.status == "False" && c.reason == FAILING && c.observed_generation == Some(generation))
        .then(|| u64::try_from(c.last_transition_time.0.as_millisecond()).ok())
        .flatten()
}

/// Whether the stored condition says the leader disabled the endpoint at `generation`.
pub fn auto_disabled(previous: Option<&Condition>, generation: i64) -> bool {
    previous.is_some_and(|c| {
        c.status == "False"
            && c.reason == AUTO_DISABLED
            && c.observed_generation == Some(generation)
    })
}

/// The decision for an endpoint at `generation`, given the stored `Delivering` condition and
/// the reports of the pods that enforce this generation.
pub fn decide(
    spec: &WebhookEndpointSpec,
    accepted: bool,
    generation: i64,
    previous: Option<&Condition>,
    reports: &[&WebhookDeliveries],
    now_ms: u64,
) -> Decision {
    if !accepted {
        return Decision::NotAccepted;
    }
    if spec.disabled {
        return Decision::Disabled;
    }
    if auto_disabled(previous, generation) {
        return Decision::StillAutoDisabled;
    }
    let current: Vec<&WebhookDeliveries> = reports
        .iter()
        .copied()
        .filter(|r| r.generation == generation)
        .collect();
    let Some(since_ms) = failing_since(previous_streak(previous, generation), &current) else {
        return Decision::Delivering;
    };
    match disable_after(spec) {
        Some(after) if now_ms.saturating_sub(since_ms) >= after.as_millis() as u64 => {
            Decision::Disable { since_ms }
        }
        _ => Decision::Failing { since_ms },
    }
}

fn at_second(ms: u64) -> Timestamp {
    Timestamp::from_second((ms / 1000) as i64).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn human(d: Duration) -> String {
    bulwark_api::Duration::from_millis(d.as_millis() as u64).to_string()
}

/// The `Delivering` condition for `decision` (`lastTransitionTime` is set by the caller for
/// the `status` changes it does not give: `Failing` gives the streak's start).
pub struct DeliveringCondition {
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
    /// When the condition's status changed, if the decision knows it better than "now".
    pub since: Option<Timestamp>,
}

/// The condition for a decision (not for [`Decision::StillAutoDisabled`], which keeps the
/// stored one).
pub fn condition_for(
    decision: &Decision,
    spec: &WebhookEndpointSpec,
    now_ms: u64,
) -> DeliveringCondition {
    let after = disable_after(spec);
    match decision {
        Decision::Delivering | Decision::StillAutoDisabled => DeliveringCondition {
            status: "True",
            reason: DELIVERING,
            message: "no delivery attempt is failing".into(),
            since: None,
        },
        Decision::Failing { since_ms } => DeliveringCondition {
            status: "False",
            reason: FAILING,
            message: format!(
                "every delivery attempt since {} has failed (status.lastFailure says how); {}",
                at_second(*since_ms),
                match after {
                    Some(d) => format!(
                        "the operator disables the endpoint once this has lasted {} (spec.disableAfterFailingFor)",
                        human(d)
                    ),
                    None => "it is never disabled automatically (spec.disableAfterFailingFor: 0s)".into(),
                }
            ),
            since: Some(at_second(*since_ms)),
        },
        Decision::Disable { since_ms } => DeliveringCondition {
            status: "False",
            reason: AUTO_DISABLED,
            message: format!(
                "every delivery attempt from {} to {} failed ({} or more, spec.disableAfterFailingFor): the operator disabled the endpoint. Messages are still accepted and kept; they are delivered once the spec changes (fix what fails, or set spec.disabled to true and back to false)",
                at_second(*since_ms),
                at_second(now_ms),
                after.map(human).unwrap_or_default()
            ),
            since: Some(at_second(*since_ms)),
        },
        Decision::Disabled => DeliveringCondition {
            status: "False",
            reason: DISABLED,
            message: "spec.disabled is true: messages are accepted and kept, and delivered once it is false".into(),
            since: None,
        },
        Decision::NotAccepted => DeliveringCondition {
            status: "Unknown",
            reason: "Invalid",
            message: "the endpoint is not Accepted; no sidecar delivers to it".into(),
            since: None,
        },
    }
}

/// The reports of one round, by endpoint id: `(pod, its uid, report)`.
pub type ByEndpoint<'a> = BTreeMap<&'a str, Vec<(PodId, &'a WebhookDeliveries)>>;

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_api::distribution::WebhookFailure;

    const HOUR_MS: u64 = 3_600_000;

    fn spec(extra: &str) -> WebhookEndpointSpec {
        serde_yaml::from_str(&format!(
            "url: https://hooks.example.com/in\nsigning: {{secretRef: {{name: s, key: k}}}}\n{extra}"
        ))
        .unwrap()
    }

    fn report(generation: i64) -> WebhookDeliveries {
        WebhookDeliveries {
            generation,
            ..WebhookDeliveries::default()
        }
    }

    fn failing(generation: i64, since: u64, last: u64) -> WebhookDeliveries {
        WebhookDeliveries {
            failing_since_ms: Some(since),
            last_failure: Some(WebhookFailure {
                at_ms: last,
                status: Some(503),
                reason: "HTTP 503".into(),
            }),
            ..report(generation)
        }
    }

    fn condition(reason: &str, generation: i64, since_ms: u64) -> Condition {
        Condition {
            type_: bulwark_api::crd::common::condition::DELIVERING.into(),
            status: "False".into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: Some(generation),
            last_transition_time: Time(Timestamp::from_millisecond(since_ms as i64).unwrap()),
        }
    }

    #[test]
    fn an_endpoint_failing_long_enough_is_disabled_and_stays_so_until_its_spec_changes() {
        let s = spec("");
        let start = 1_000 * HOUR_MS;
        let (p1, p2) = (
            failing(4, start, start + 10),
            failing(4, start + 60_000, start + 70_000),
        );
        let two_pods = [&p1, &p2];
        let at = |h: u64| start + h * HOUR_MS;
        // Failing since the earlier streak, for less than 120h.
        assert_eq!(
            decide(&s, true, 4, None, &two_pods, at(119)),
            Decision::Failing { since_ms: start }
        );
        // 120h: disable.
        assert_eq!(
            decide(&s, true, 4, None, &two_pods, at(120)),
            Decision::Disable { since_ms: start }
        );
        // The stored AutoDisabled condition holds at this generation, whatever is reported.
        let disabled = condition(AUTO_DISABLED, 4, start);
        assert_eq!(
            decide(&s, true, 4, Some(&disabled), &[&report(4)], at(121)),
            Decision::StillAutoDisabled
        );
        // A spec change (generation 5): the sidecars' streaks of generation 4 no longer count.
        assert_eq!(
            decide(&s, true, 5, Some(&disabled), &two_pods, at(200)),
            Decision::Delivering
        );
        // spec.disabled wins; 0s never disables; not Accepted says so.
        assert_eq!(
            decide(&spec("disabled: true"), true, 4, None, &two_pods, at(200)),
            Decision::Disabled
        );
        assert_eq!(
            decide(
                &spec("disableAfterFailingFor: 0s"),
                true,
                4,
                None,
                &two_pods,
                at(10_000)
            ),
            Decision::Failing { since_ms: start }
        );
        assert_eq!(
            decide(&s, false, 4, None, &two_pods, at(200)),
            Decision::NotAccepted
        );
        // A short threshold, as an e2e test would use.
        assert_eq!(
            decide(
                &spec("disableAfterFailingFor: 1m"),
                true,
                4,
                None,
                &two_pods,
                start + 60_000
            ),
            Decision::Disable { since_ms: start }
        );
    }

    #[test]
    fn the_streak_outlives_pods_through_the_stored_condition_and_a_success_ends_it() {
        let s = spec("");
        let start = 500 * HOUR_MS;
        // The stored Failing condition says since `start`; the pods that reported it are gone
        // and the new ones began failing later: the endpoint has been failing since `start`.
        let stored = condition(FAILING, 2, start);
        let new_pod = failing(2, start + 5 * HOUR_MS, start + 6 * HOUR_MS);
        let new_pods = [&new_pod];
        assert_eq!(
            decide(&s, true, 2, Some(&stored), &new_pods, start + 120 * HOUR_MS),
            Decision::Disable { since_ms: start }
        );
        // A success after it, anywhere: the streak is over (and a new one starts after it).
        let mut recovered = report(2);
        recovered.last_success_ms = Some(start + 7 * HOUR_MS);
        let after = failing(2, start + 8 * HOUR_MS, start + 9 * HOUR_MS);
        assert_eq!(
            decide(
                &s,
                true,
                2,
                Some(&stored),
                &[&recovered, &after],
                start + 120 * HOUR_MS
            ),
            Decision::Failing {
                since_ms: start + 8 * HOUR_MS
            }
        );
        assert_eq!(
            decide(
                &s,
                true,
                2,
                Some(&stored),
                &[&recovered],
                start + 120 * HOUR_MS
            ),
            Decision::Delivering
        );
        // The stored streak of another generation does not count.
        let old = condition(FAILING, 1, start);
        assert_eq!(
            decide(
                &s,
                true,
                2,
                Some(&old),
                &[&report(2)],
                start + 200 * HOUR_MS
            ),
            Decision::Delivering
        );
    }

    #[test]
    fn a_pod_failing_since_before_another_pods_success_counts_from_its_last_failure() {
        // Pod A fails since t=10; pod B succeeded at t=20 and has made no attempt since; A's
        // last failure was at t=30. Every attempt since 30 failed, not since 10.
        let a = failing(1, 10, 30);
        let mut b = report(1);
        b.last_success_ms = Some(20);
        assert_eq!(failing_since(None, &[&a, &b]), Some(30));
        // Without B: since 10.
        assert_eq!(failing_since(None, &[&a]), Some(10));
        // Nothing failing.
        assert_eq!(failing_since(None, &[&b]), None);
    }

    #[test]
    fn counts_are_summed_over_pods_and_kept_when_pods_go_or_start_over() {
        let r = |d: u64, f: u64, x: u64| WebhookDeliveries {
            delivered: d,
            failed_attempts: f,
            dead_lettered: x,
            ..WebhookDeliveries::default()
        };
        let pod = |n: &str| (format!("shop/{n}"), format!("uid-{n}"));
        let total = |d: i64, f: i64, x: i64| DeliveryCounts {
            succeeded: d,
            failed_attempts: f,
            dead_lettered: x,
        };
        // Starts from the stored retired counts.
        let mut tally = Tally::new("e", Some(&total(100, 0, 0)));
        let (a, b) = (r(5, 1, 0), r(7, 0, 1));
        let sum = tally.update([(pod("a"), &a), (pod("b"), &b)], |_| true);
        assert_eq!(sum, total(112, 1, 1));
        // Pod b is gone: its counts stay, retired.
        let a2 = r(6, 1, 0);
        let sum = tally.update([(pod("a"), &a2)], |p| p.0 != "shop/b");
        assert_eq!(sum, total(113, 1, 1));
        assert_eq!(tally.retired, total(107, 0, 1));
        // Pod a's store started over: what it had counted stays counted.
        let a3 = r(1, 0, 0);
        let sum = tally.update([(pod("a"), &a3)], |_| true);
        assert_eq!(sum, total(114, 1, 1));
        // A pod that does not report this round keeps its last counts while it exists.
        let sum = tally.update([], |_| true);
        assert_eq!(sum, total(114, 1, 1));
    }

    #[test]
    fn the_newest_failure_is_kept() {
        let stored = DeliveryFailure {
            time: Time(Timestamp::from_second(2_000).unwrap()),
            status_code: None,
            reason: "connect timeout".into(),
        };
        let older = failing(1, 0, 1_000_000);
        let newer = failing(1, 0, 3_000_000);
        assert_eq!(last_failure(Some(&stored), [&older]), Some(stored.clone()));
        let newest = last_failure(Some(&stored), [&older, &newer]).unwrap();
        assert_eq!(
            (newest.status_code, newest.reason.as_str()),
            (Some(503), "HTTP 503")
        );
        assert_eq!(newest.time.0.as_second(), 3_000);
        assert_eq!(last_failure(None, []), None);
    }

    #[test]
    fn messages_are_stable_and_name_the_start() {
        let s = spec("disableAfterFailingFor: 2h");
        let c = condition_for(
            &Decision::Failing {
                since_ms: 1_700_000_000_123,
            },
            &s,
            0,
        );
        assert_eq!(c.reason, FAILING);
        assert!(c.message.contains("2023-11-14T22:13:20Z"), "{}", c.message);
        assert!(c.message.contains("2h"), "{}", c.message);
        let again = condition_for(
            &Decision::Failing {
                since_ms: 1_700_000_000_999,
            },
            &s,
            5,
        );
        assert_eq!(
            c.message, again.message,
            "second precision: rewrites nothing"
        );
    }
}
