//! Passive outlier detection per endpoint, with Istio's (Envoy's) semantics: consecutive
//! errors eject an endpoint for a while, longer each time it is ejected again.
//!
//! One [`EndpointOutlier`] per endpoint; its group decides, with [`ejection_allowed`], whether
//! one more may be ejected. Time is `now` in nanoseconds from any monotonic origin; nothing
//! here reads a clock, allocates, locks or panics, and arithmetic saturates.
//!
//! - **Detectors** (a threshold of 0 disables one): `consecutive_5xx` counts statuses
//!   500..=599 and the locally originated failures (connect failure, reset, timeout: Envoy
//!   counts them as 5xx unless told to split them); `consecutive_gateway` counts 502, 503, 504
//!   and the same local failures (another 5xx resets it, as in Envoy). Any other status,
//!   4xx included, resets both.
//! - **Ejection**: when a counter reaches its threshold and the caller passes `may_eject`, the
//!   multiplier `ejections` grows by one and the endpoint is ejected for
//!   `min(base · ejections, max)`, and the counters restart. Refused (the group's cap), the
//!   counters are kept, so the next error ejects once the cap allows. `max` is read as at
//!   least `base`, and the multiplier stops growing once the duration reaches `max` (Envoy
//!   stops one step later), so decay shortens the next ejection as soon as it starts.
//! - **Decay**: while not ejected, each full `base` since the endpoint returned (or since the
//!   last decay) takes one off the multiplier, down to 0. It is applied lazily, by
//!   [`EndpointOutlier::record`] and [`EndpointOutlier::tick`], from the stored times, so the
//!   result does not depend on how often they are called.
//! - Results recorded while ejected (calls sent before the ejection) are ignored.
//! - Time going backwards only keeps an endpoint ejected longer, and decays nothing.

/// Istio's `outlierDetection`, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Consecutive 5xx (local failures included) that eject; 0 = off.
    pub consecutive_5xx: u32,
    /// Consecutive gateway errors (502, 503, 504, local failures) that eject; 0 = off.
    pub consecutive_gateway: u32,
    /// The first ejection's length, the step of the later ones, and the decay period.
    pub base_ejection_nanos: u64,
    /// The longest ejection.
    pub max_ejection_nanos: u64,
    /// At most this share of a group ejected at once (see [`ejection_allowed`]).
    pub max_ejection_percent: u8,
}

impl Default for OutlierConfig {
    /// The CRD's defaults: Istio's (gateway detector off), but a 50 % cap (Istio's is 10 %).
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway: 0,
            base_ejection_nanos: 30_000_000_000,
            max_ejection_nanos: 300_000_000_000,
            max_ejection_percent: 50,
        }
    }
}

/// How a call to an endpoint ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallResult {
    /// The endpoint answered with this status.
    Status(u16),
    /// The endpoint answered a gRPC call with this `grpc-status` in the response headers
    /// (trailers-only: how gRPC servers send errors). Judged as the HTTP status gRPC's code maps
    /// to ([`CallResult::status`]), so an `UNAVAILABLE` server is ejected as a 503 one is.
    Grpc(u8),
    ConnectFailure,
    /// The connection was reset (or closed) before a complete response.
    Reset,
    Timeout,
}

impl CallResult {
    /// The HTTP status the answer counts as; `None` when the endpoint did not answer.
    pub fn status(self) -> Option<u16> {
        match self {
            CallResult::Status(status) => Some(status),
            CallResult::Grpc(code) => Some(crate::grpc::http_equivalent(code)),
            CallResult::ConnectFailure | CallResult::Reset | CallResult::Timeout => None,
        }
    }
}

/// One endpoint's detector; `Default` is a fresh endpoint, never ejected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointOutlier {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    /// The multiplier: ejections in a row, less decay.
    ejections: u32,
    /// Set while ejected (until `tick` or `record` see it end).
    ejected_until: Option<u64>,
    /// When the multiplier last decayed, or the endpoint last returned.
    decayed_at: u64,
}

impl EndpointOutlier {
    /// Records a call's result at `now`; true when it ejects the endpoint. `may_eject`: the
    /// group's cap allows one more ejection.
    pub fn record(
        &mut self,
        config: &OutlierConfig,
        result: CallResult,
        now: u64,
        may_eject: bool,
    ) -> bool {
        self.tick(config, now);
        if self.ejected_until.is_some() {
            return false;
        }
        let (is_5xx, is_gateway) = match result.status() {
            Some(502..=504) => (true, true),
            Some(500..=599) => (true, false),
            Some(_) => (false, false),
            None => (true, true),
        };
        self.consecutive_5xx = if is_5xx {
            self.consecutive_5xx.saturating_add(1)
        } else {
            0
        };
        self.consecutive_gateway = if is_gateway {
            self.consecutive_gateway.saturating_add(1)
        } else {
            0
        };
        let reached = |count: u32, threshold: u32| threshold > 0 && count >= threshold;
        if !may_eject
            || !(reached(self.consecutive_5xx, config.consecutive_5xx)
                || reached(self.consecutive_gateway, config.consecutive_gateway))
        {
            return false;
        }
        let (base, max) = bounds(config);
        // The smallest multiplier whose duration reaches `max` (1 when `base` is 0).
        let cap = if base == 0 { 1 } else { max.div_ceil(base) };
        let cap = u32::try_from(cap).unwrap_or(u32::MAX);
        self.ejections = self.ejections.saturating_add(1).min(cap);
        let duration = base.saturating_mul(u64::from(self.ejections)).min(max);
        self.ejected_until = Some(now.saturating_add(duration));
        self.consecutive_5xx = 0;
        self.consecutive_gateway = 0;
        true
    }

    /// Ends an ejection that is over at `now`, and applies the multiplier's decay.
    pub fn tick(&mut self, config: &OutlierConfig, now: u64) {
        if let Some(until) = self.ejected_until {
            if now < until {
                return;
            }
            self.ejected_until = None;
            self.decayed_at = until;
        }
        let (base, _) = bounds(config);
        let periods = match now.saturating_sub(self.decayed_at).checked_div(base) {
            Some(periods) => periods.min(u64::from(self.ejections)),
            None => u64::from(self.ejections), // base 0: every period is already over
        };
        // `periods ≤ ejections`, a u32.
        self.ejections -= periods as u32;
        self.decayed_at = self.decayed_at.saturating_add(periods.saturating_mul(base));
    }

    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// The end of the current ejection; kept (in the past) until `tick` or `record` clears it.
    pub fn ejected_until(&self) -> Option<u64> {
        self.ejected_until
    }
}

/// `(base, max)` with `max ≥ base`.
fn bounds(config: &OutlierConfig) -> (u64, u64) {
    let base = config.base_ejection_nanos;
    (base, config.max_ejection_nanos.max(base))
}

/// Whether a group of `total` endpoints with `ejected_now` ejected may eject one more: as
/// Envoy, iff the share ejected *before* this one is below `max_percent` (read as at most
/// 100), so with 2 endpoints and 50 % one can be, and with 3, two can (67 % after).
pub fn ejection_allowed(ejected_now: usize, total: usize, max_percent: u8) -> bool {
    let percent = u128::from(max_percent.min(100));
    (ejected_now as u128) * 100 < (total as u128) * percent
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const S: u64 = 1_000_000_000;

    fn cfg(consecutive_5xx: u32, consecutive_gateway: u32, base: u64, max: u64) -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx,
            consecutive_gateway,
            base_ejection_nanos: base,
            max_ejection_nanos: max,
            max_ejection_percent: 50,
        }
    }

    /// Records `n` times `result` at `now`; true when one ejected.
    fn feed(e: &mut EndpointOutlier, c: &OutlierConfig, n: u32, r: CallResult, now: u64) -> bool {
        (0..n).any(|_| e.record(c, r, now, true))
    }

    #[test]
    fn detectors() {
        let c = cfg(3, 2, 10 * S, 100 * S);
        let mut e = EndpointOutlier::default();
        assert!(!feed(&mut e, &c, 2, CallResult::Status(500), 0));
        assert!(!e.record(&c, CallResult::Status(404), 0, true)); // resets both
        assert!(!feed(&mut e, &c, 2, CallResult::Status(500), 0));
        assert!(e.record(&c, CallResult::Timeout, 0, true)); // the third 5xx
        assert_eq!(
            (
                e.ejected_until(),
                e.is_ejected(10 * S - 1),
                e.is_ejected(10 * S)
            ),
            (Some(10 * S), true, false)
        );
        assert!(!feed(&mut e, &c, 5, CallResult::Reset, 5 * S)); // ignored while ejected
        assert!(!e.record(&c, CallResult::Status(502), 10 * S, true));
        assert_eq!(e.ejected_until(), None);
        assert!(e.record(&c, CallResult::ConnectFailure, 10 * S, true)); // 2 gateway errors
        assert_eq!(e.ejected_until(), Some(30 * S));
        // A 500 resets the gateway counter only.
        let mut e = EndpointOutlier::default();
        let c = cfg(0, 2, S, S);
        for r in [503, 500, 504, 200, 504].map(CallResult::Status) {
            assert!(!e.record(&c, r, 0, true));
        }
        assert!(e.record(&c, CallResult::Status(503), 0, true));
    }

    #[test]
    fn multiplier_grows_caps_and_decays() {
        let c = cfg(1, 0, 10 * S, 35 * S);
        let mut e = EndpointOutlier::default();
        let mut now = 0;
        for expected in [10, 20, 30, 35, 35] {
            assert!(e.record(&c, CallResult::Status(500), now, true));
            let end = e.ejected_until().unwrap();
            assert_eq!(end - now, expected * S);
            now = end;
        }
        assert_eq!(e.ejections, 4, "capped where the duration reaches max");
        // Returned at `now`: one step off per 10 s, lazily.
        e.tick(&c, now + 25 * S);
        assert_eq!((e.ejections, e.decayed_at), (2, now + 20 * S));
        assert!(e.record(&c, CallResult::Status(500), now + 39 * S, true));
        assert_eq!(e.ejected_until(), Some(now + 39 * S + 20 * S)); // 4 − 3 decays + 1
        // Refused by the cap: counters kept, the next error ejects.
        let mut e = EndpointOutlier::default();
        let c = cfg(2, 0, S, S);
        assert!(!e.record(&c, CallResult::Status(500), 0, false));
        assert!(!e.record(&c, CallResult::Status(500), 0, false));
        assert!(e.record(&c, CallResult::Status(500), 0, true));
    }

    #[test]
    fn group_cap() {
        assert!(ejection_allowed(0, 2, 50) && !ejection_allowed(1, 2, 50));
        assert!(ejection_allowed(1, 3, 50) && !ejection_allowed(2, 3, 50));
        assert!(ejection_allowed(0, 1, 1) && !ejection_allowed(0, 1, 0));
        assert!(!ejection_allowed(0, 0, 100) && !ejection_allowed(5, 5, 255));
        assert!(ejection_allowed(usize::MAX - 1, usize::MAX, 100));
        let d = OutlierConfig::default();
        assert_eq!(
            (
                d.consecutive_5xx,
                d.consecutive_gateway,
                d.max_ejection_percent
            ),
            (5, 0, 50)
        );
        assert_eq!(
            (d.base_ejection_nanos, d.max_ejection_nanos),
            (30 * S, 300 * S)
        );
    }

    // Property tests: small thresholds and times, results mostly errors.

    fn config(cases: u32) -> ProptestConfig {
        let mut c = ProptestConfig::with_cases(cases);
        c.failure_persistence = None;
        c
    }

    fn any_config() -> impl Strategy<Value = OutlierConfig> {
        (0..=4u32, 0..=4u32, 0..=20u64, 0..=80u64)
            .prop_map(|(a, b, base, max)| cfg(a, b, base, max))
    }

    fn result() -> impl Strategy<Value = CallResult> {
        prop_oneof![
            Just(CallResult::ConnectFailure),
            Just(CallResult::Reset),
            Just(CallResult::Timeout),
            prop_oneof![Just(500u16), 502..=504u16, 200..=599u16].prop_map(CallResult::Status),
            (0..=16u8).prop_map(CallResult::Grpc),
        ]
    }

    fn steps() -> impl Strategy<Value = Vec<(u64, CallResult, bool)>> {
        let gap = prop_oneof![2 => Just(0u64), 2 => 0..=10u64, 1 => 0..=100u64];
        prop::collection::vec((gap, result(), prop::bool::weighted(0.8)), 0..150)
    }

    fn counts(r: CallResult) -> (bool, bool) {
        match r {
            CallResult::Status(s) => ((500..=599).contains(&s), (502..=504).contains(&s)),
            // UNAVAILABLE and DEADLINE_EXCEEDED are gateway errors; UNKNOWN, UNIMPLEMENTED,
            // INTERNAL and DATA_LOSS server errors; the rest not failures.
            CallResult::Grpc(c) => (matches!(c, 2 | 4 | 12..=15), matches!(c, 4 | 14)),
            _ => (true, true),
        }
    }

    proptest! {
        #![proptest_config(config(500))]

        /// Every step against a recount: an ejection happens exactly when the results since the
        /// last ejection end in a threshold's run of 5xx (or gateway) errors and `may_eject`;
        /// it lasts within [base, max]; the endpoint is back at its end; results meanwhile are
        /// ignored; thresholds of 0 and `may_eject = false` never eject.
        #[test]
        fn agrees_with_recount(c in any_config(), steps in steps()) {
            let mut e = EndpointOutlier::default();
            let (base, max) = bounds(&c);
            let (mut now, mut since, mut until) = (0u64, Vec::new(), None);
            for (gap, result, may) in steps {
                now += gap;
                if until.is_some_and(|u| now < u) {
                    prop_assert!(e.is_ejected(now) && !e.record(&c, result, now, may));
                    continue;
                }
                prop_assert!(!e.is_ejected(now));
                since.push(counts(result));
                let run_5xx = since.iter().rev().take_while(|x| x.0).count();
                let run_gateway = since.iter().rev().take_while(|x| x.1).count();
                let reached = |n: usize, t: u32| t > 0 && n >= t as usize;
                let expected = may
                    && (reached(run_5xx, c.consecutive_5xx)
                        || reached(run_gateway, c.consecutive_gateway));
                prop_assert_eq!(e.record(&c, result, now, may), expected);
                if expected {
                    let end = e.ejected_until().unwrap();
                    prop_assert!(base <= end - now && end - now <= max);
                    (until, since) = (Some(end), Vec::new());
                }
            }
        }

        /// Re-ejected as soon as it returns, the durations are base, 2·base, … up to max; and
        /// a success or 4xx before the threshold starts the count again.
        #[test]
        fn back_to_back(c in any_config(), n in 1..12usize, reset in 200..=499u16) {
            let threshold = c.consecutive_5xx.max(1);
            let c = OutlierConfig { consecutive_5xx: threshold, consecutive_gateway: 0, ..c };
            let (base, max) = bounds(&c);
            let (mut e, mut now) = (EndpointOutlier::default(), 7);
            for k in 1..=n as u64 {
                prop_assert!(!feed(&mut e, &c, threshold - 1, CallResult::Timeout, now));
                prop_assert!(!e.record(&c, CallResult::Status(reset), now, true));
                prop_assert!(!feed(&mut e, &c, threshold - 1, CallResult::Status(599), now));
                prop_assert!(e.record(&c, CallResult::Reset, now, true));
                let end = e.ejected_until().unwrap();
                prop_assert_eq!(end - now, (base * k).min(max));
                now = end;
            }
        }

        /// Decay is lazy and exact: ticking at any times in between changes nothing.
        #[test]
        fn ticks_change_nothing(
            c in any_config(),
            steps in steps(),
            ticks in prop::collection::vec(0..=50u64, 150),
        ) {
            let (mut a, mut now) = (EndpointOutlier::default(), 0);
            let mut b = a;
            for ((gap, result, may), tick) in steps.into_iter().zip(ticks) {
                b.tick(&c, now + tick.min(gap));
                now += gap;
                prop_assert_eq!(a.record(&c, result, now, may), b.record(&c, result, now, may));
                prop_assert_eq!(a, b);
            }
        }

        /// Any input at all, time going backwards included: no panic.
        #[test]
        fn never_panics(
            c in any::<(u32, u32, u64, u64, u8)>(),
            steps in prop::collection::vec((any::<u64>(), any::<u16>(), any::<bool>()), 0..60),
        ) {
            let c = OutlierConfig { max_ejection_percent: c.4, ..cfg(c.0, c.1, c.2, c.3) };
            let mut e = EndpointOutlier::default();
            for (now, status, may) in steps {
                let _ = e.record(&c, CallResult::Status(status), now, may);
                e.tick(&c, now);
                let _ = ejection_allowed(status.into(), now as usize, c.max_ejection_percent);
            }
        }
    }
}
