//! An upstream's settings with every default filled in: the one place that says what an omitted
//! field means (docs/failover.md lists the same values and why).

use std::time::Duration;

use bulwark_api::crd::failover::{
    Bulkhead, CircuitBreaker, FailoverMode, HealthCheck, LoadBalancer, OutlierDetection, Retry,
    RetryOn, Timeouts, Upstream,
};

use super::{breaker::BreakerConfig, budget::BudgetConfig, outlier::OutlierConfig};
use crate::grpc::Code;

/// Nanoseconds of a CRD duration, or `default`.
fn nanos(d: Option<bulwark_api::Duration>, default: Duration) -> u64 {
    u64::try_from(d.map_or(default, |d| d.as_std()).as_nanos()).unwrap_or(u64::MAX)
}

/// When traffic moves between groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSettings {
    pub mode: FailoverMode,
    pub min_healthy_percent: u8,
    pub failback_nanos: u64,
    pub zone_aware: bool,
    pub load_balancer: LoadBalancer,
}

/// An active health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSettings {
    /// `Some(path)`: HTTP GET of `path`; `None`: a TCP connect.
    pub http: Option<HttpProbe>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub jitter_percent: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProbe {
    pub path: String,
    /// Empty: 200-399.
    pub expected_statuses: Vec<u16>,
    pub host: Option<String>,
}

impl HttpProbe {
    pub fn healthy(&self, status: u16) -> bool {
        if self.expected_statuses.is_empty() {
            (200..400).contains(&status)
        } else {
            self.expected_statuses.contains(&status)
        }
    }
}

/// Which failures a retry may follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySettings {
    /// Tries after the first.
    pub attempts: u32,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub on_timeout: bool,
    pub on_5xx: bool,
    pub on_gateway_error: bool,
    pub on_429: bool,
    pub statuses: Vec<u16>,
    /// The gRPC codes retried, one bit per code.
    pub grpc_codes: u32,
    pub non_idempotent: bool,
    pub backoff_base_nanos: u64,
    pub backoff_max_nanos: u64,
    pub budget: BudgetConfig,
}

impl RetrySettings {
    /// Whether a response with `status` may be retried.
    pub fn retries_status(&self, status: u16) -> bool {
        (self.on_5xx && (500..600).contains(&status))
            || (self.on_gateway_error && matches!(status, 502..=504))
            || (self.on_429 && status == 429)
            || self.statuses.contains(&status)
    }

    /// Whether a gRPC answer with `code` in its headers may be retried.
    pub fn retries_grpc(&self, code: u8) -> bool {
        code < 32 && self.grpc_codes & (1 << code) != 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeoutSettings {
    pub request: Duration,
    pub per_try: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BulkheadSettings {
    pub max_concurrent: u32,
    pub max_queue: u32,
    pub queue_timeout: Duration,
}

/// Everything about an upstream except where it is and which requests it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub groups: GroupSettings,
    pub health: Option<HealthSettings>,
    /// Off unless the upstream has `outlierDetection` (as Istio).
    pub outlier: Option<OutlierConfig>,
    /// Off unless the upstream has `circuitBreaker`.
    pub breaker: Option<BreakerConfig>,
    /// On by default (as Istio's two retries): failover within a call needs it.
    pub retry: RetrySettings,
    pub timeouts: TimeoutSettings,
    pub bulkhead: Option<BulkheadSettings>,
}

impl Settings {
    pub fn of(upstream: &Upstream) -> Self {
        let failover = upstream.failover.clone().unwrap_or_default();
        Self {
            groups: GroupSettings {
                mode: failover.mode,
                min_healthy_percent: failover.min_healthy_percent.unwrap_or(50),
                failback_nanos: nanos(failover.failback_after, Duration::from_secs(30)),
                zone_aware: failover.zone_aware,
                load_balancer: upstream.load_balancer.unwrap_or_default(),
            },
            health: upstream.health_check.as_ref().map(health),
            outlier: upstream.outlier_detection.as_ref().map(outlier),
            breaker: upstream.circuit_breaker.as_ref().map(breaker),
            retry: retry(upstream.retry.as_ref()),
            timeouts: timeouts(upstream.timeouts.as_ref()),
            bulkhead: upstream.bulkhead.as_ref().map(bulkhead),
        }
    }
}

fn health(h: &HealthCheck) -> HealthSettings {
    HealthSettings {
        http: h.http.as_ref().map(|http| HttpProbe {
            path: http.path.clone().unwrap_or_else(|| "/healthz".into()),
            expected_statuses: http.expected_statuses.clone(),
            host: http.host.clone(),
        }),
        interval: h.interval.map_or(Duration::from_secs(5), |d| d.as_std()),
        timeout: h.timeout.map_or(Duration::from_secs(1), |d| d.as_std()),
        healthy_threshold: h.healthy_threshold.unwrap_or(2),
        unhealthy_threshold: h.unhealthy_threshold.unwrap_or(3),
        jitter_percent: h.jitter_percent.unwrap_or(10),
    }
}

fn outlier(o: &OutlierDetection) -> OutlierConfig {
    let d = OutlierConfig::default();
    OutlierConfig {
        consecutive_5xx: o.consecutive_5xx_errors.unwrap_or(d.consecutive_5xx),
        consecutive_gateway: o
            .consecutive_gateway_errors
            .unwrap_or(d.consecutive_gateway),
        base_ejection_nanos: nanos(o.base_ejection_time, Duration::from_secs(30)),
        max_ejection_nanos: nanos(o.max_ejection_time, Duration::from_secs(300)),
        max_ejection_percent: o.max_ejection_percent.unwrap_or(d.max_ejection_percent),
    }
}

fn breaker(c: &CircuitBreaker) -> BreakerConfig {
    let d = BreakerConfig::default();
    BreakerConfig {
        failure_rate_percent: c.failure_rate_threshold.unwrap_or(d.failure_rate_percent),
        slow_call_rate_percent: c
            .slow_call_rate_threshold
            .unwrap_or(d.slow_call_rate_percent),
        slow_call_nanos: nanos(c.slow_call_duration, Duration::from_secs(5)),
        window_size: c.window_size.unwrap_or(d.window_size),
        minimum_calls: c.minimum_calls.unwrap_or(d.minimum_calls),
        open_nanos: nanos(c.open_duration, Duration::from_secs(30)),
        half_open_calls: c.half_open_calls.unwrap_or(d.half_open_calls),
    }
}

fn retry(r: Option<&Retry>) -> RetrySettings {
    let default = Retry::default();
    let r = r.unwrap_or(&default);
    let on: &[RetryOn] = if r.retry_on.is_empty() {
        &[
            RetryOn::ConnectFailure,
            RetryOn::Reset,
            RetryOn::GatewayError,
        ]
    } else {
        &r.retry_on
    };
    let d = BudgetConfig::default();
    RetrySettings {
        attempts: r.attempts.unwrap_or(2),
        on_connect_failure: on.contains(&RetryOn::ConnectFailure),
        on_reset: on.contains(&RetryOn::Reset),
        on_timeout: on.contains(&RetryOn::Timeout),
        on_5xx: on.contains(&RetryOn::ServerError),
        on_gateway_error: on.contains(&RetryOn::GatewayError),
        on_429: on.contains(&RetryOn::TooManyRequests),
        statuses: r.retriable_status_codes.clone(),
        grpc_codes: on
            .iter()
            .filter_map(|class| match class {
                RetryOn::Cancelled => Some(Code::Cancelled as u8),
                RetryOn::DeadlineExceeded => Some(Code::DeadlineExceeded as u8),
                RetryOn::ResourceExhausted => Some(Code::ResourceExhausted as u8),
                RetryOn::Internal => Some(Code::Internal as u8),
                RetryOn::Unavailable => Some(Code::Unavailable as u8),
                _ => None,
            })
            .fold(0, |bits, code| bits | 1 << code),
        non_idempotent: r.retry_non_idempotent,
        backoff_base_nanos: nanos(r.backoff_base, Duration::from_millis(25)),
        backoff_max_nanos: nanos(r.backoff_max, Duration::from_millis(250)),
        budget: BudgetConfig {
            percent: r.budget_percent.unwrap_or(d.percent),
            min_per_second: r.min_retries_per_second.unwrap_or(d.min_per_second),
        },
    }
}

fn timeouts(t: Option<&Timeouts>) -> TimeoutSettings {
    let request = t
        .and_then(|t| t.request)
        .map_or(Duration::from_secs(15), |d| d.as_std());
    TimeoutSettings {
        request,
        per_try: t.and_then(|t| t.per_try).map_or(request, |d| d.as_std()),
    }
}

fn bulkhead(b: &Bulkhead) -> BulkheadSettings {
    BulkheadSettings {
        max_concurrent: b.max_concurrent,
        max_queue: b.max_queue.unwrap_or(0),
        queue_timeout: b
            .queue_timeout
            .map_or(Duration::from_secs(1), |d| d.as_std()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(yaml: &str) -> Upstream {
        serde_yaml::from_str(yaml).unwrap()
    }

    const MINIMAL: &str = "
name: payments
match: {hosts: [payments]}
groups: [{name: primary, backends: [{address: '127.0.0.1:1'}]}]
";

    #[test]
    fn omitted_fields_take_the_documented_defaults() {
        let s = Settings::of(&upstream(MINIMAL));
        assert_eq!(s.groups.mode, FailoverMode::ActivePassive);
        assert_eq!(s.groups.min_healthy_percent, 50);
        assert_eq!(s.groups.failback_nanos, 30_000_000_000);
        assert_eq!(
            (s.health, s.outlier, s.breaker, s.bulkhead),
            (None, None, None, None)
        );
        assert_eq!(s.retry.attempts, 2);
        assert!(s.retry.on_connect_failure && s.retry.on_reset && s.retry.on_gateway_error);
        assert!(!s.retry.on_5xx && !s.retry.on_timeout && !s.retry.non_idempotent);
        assert!(s.retry.retries_status(503) && !s.retry.retries_status(500));
        assert_eq!(s.timeouts.request, Duration::from_secs(15));
        assert_eq!(s.timeouts.per_try, s.timeouts.request);
    }

    #[test]
    fn given_fields_are_taken_and_per_try_defaults_to_the_request_timeout() {
        let s = Settings::of(&upstream(&format!(
            "{MINIMAL}
retry: {{attempts: 0, retryOn: ['5xx', '429'], retriableStatusCodes: [409]}}
timeouts: {{request: 2s}}
healthCheck: {{http: {{}}, interval: 1s}}
bulkhead: {{maxConcurrent: 3}}
"
        )));
        assert_eq!(s.retry.attempts, 0);
        assert!(s.retry.retries_status(500) && s.retry.retries_status(429));
        assert!(s.retry.retries_status(409) && !s.retry.retries_status(404));
        assert_eq!(s.timeouts.per_try, Duration::from_secs(2));
        let health = s.health.unwrap();
        assert_eq!(health.http.as_ref().unwrap().path, "/healthz");
        assert!(health.http.as_ref().unwrap().healthy(302));
        assert_eq!(health.interval, Duration::from_secs(1));
        assert_eq!(
            (health.healthy_threshold, health.unhealthy_threshold),
            (2, 3)
        );
        assert_eq!(s.bulkhead.unwrap().max_queue, 0);
    }
}
