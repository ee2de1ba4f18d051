//! The sidecar's Prometheus metrics (`bulwark_` prefix, base units, `_total` counters).

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Requests handled by the inbound listener, by response status class (`2xx`, ...).
    pub inbound_requests: RequestsByStatus,
    /// Requests the app sent through the outbound listener, by response status class.
    pub outbound_requests: RequestsByStatus,
    /// Rate-limit decisions by policy (`namespace/name`), rule and decision
    /// (`allowed`, `limited`, `shadow_limited`).
    pub ratelimit_requests: IntCounterVec,
    /// Time to decide all rate limits of one request.
    pub ratelimit_decision_seconds: Histogram,
    /// Local rate-limit counters held, and counters dropped because the store was full.
    pub ratelimit_counters: IntGauge,
    pub ratelimit_evictions: IntCounter,
    /// Version of the snapshot being enforced.
    pub snapshot_version: IntGauge,
    /// Configuration loads by result (`success`, `failure`).
    pub config_reloads: IntCounterVec,
    /// Failed calls to a shared store, by store (`redis`) and kind (`timeout`, `error`).
    pub store_errors: IntCounterVec,
    /// Quota decisions by policy, quota and decision (`allowed`, `limited`, `shadow_limited`).
    pub quota_requests: IntCounterVec,
    /// Quota usage crossing a warning threshold, by policy, quota and threshold (percent).
    pub quota_threshold_crossings: IntCounterVec,
    /// Local quota usage entries held (one per quota and key used in its current period).
    pub quota_keys: IntGauge,
    /// Bearer tokens checked for `jwt.verification`, by policy and result (`verified`,
    /// `rejected`).
    pub jwt_verifications: IntCounterVec,
    /// The operator stream (registered by [`Metrics::enable_operator_stream`], so standalone
    /// sidecars do not export them): 1 while a stream is open.
    pub operator_stream_connected: IntGauge,
    /// Stream connection attempts by result (`success`, `failure`).
    pub operator_stream_connects: IntCounterVec,
    /// Unix time of the last line (snapshot or heartbeat) received; staleness is now minus this.
    pub operator_stream_last_message_timestamp_seconds: Gauge,
    /// Acknowledgements of snapshots, by `accepted` (`true`, `false`) and `result`
    /// (`delivered`, `failed`).
    pub snapshot_acks: IntCounterVec,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let info = IntGauge::with_opts(
            Opts::new(
                "bulwark_sidecar_info",
                "Build information of the running sidecar.",
            )
            .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        info.set(1);
        registry.register(Box::new(info))?;
        let inbound_requests = RequestsByStatus::new(
            &registry,
            "bulwark_inbound_requests_total",
            "Requests handled by the inbound listener, by response status class.",
        )?;
        let outbound_requests = RequestsByStatus::new(
            &registry,
            "bulwark_outbound_requests_total",
            "Requests the app sent through the outbound listener, by response status class.",
        )?;
        let ratelimit_requests = IntCounterVec::new(
            Opts::new(
                "bulwark_ratelimit_requests_total",
                "Rate-limit decisions by policy, rule and decision.",
            ),
            &["policy", "rule", "decision"],
        )?;
        registry.register(Box::new(ratelimit_requests.clone()))?;
        let ratelimit_decision_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "bulwark_ratelimit_decision_duration_seconds",
                "Time to decide every rate limit that applies to one request.",
            )
            .buckets(vec![
                1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 1e-4, 1e-3, 1e-2,
            ]),
        )?;
        registry.register(Box::new(ratelimit_decision_seconds.clone()))?;
        let ratelimit_counters = IntGauge::new(
            "bulwark_ratelimit_counters",
            "Local rate-limit counters held in memory.",
        )?;
        registry.register(Box::new(ratelimit_counters.clone()))?;
        let ratelimit_evictions = IntCounter::new(
            "bulwark_ratelimit_evictions_total",
            "Local rate-limit counters dropped because the store was full.",
        )?;
        registry.register(Box::new(ratelimit_evictions.clone()))?;
        let snapshot_version = IntGauge::new(
            "bulwark_snapshot_version",
            "Version of the policy snapshot being enforced.",
        )?;
        registry.register(Box::new(snapshot_version.clone()))?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "bulwark_config_reloads_total",
                "Policy configuration loads, by result (success, failure).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(config_reloads.clone()))?;
        let store_errors = IntCounterVec::new(
            Opts::new(
                "bulwark_store_errors_total",
                "Calls to a shared counter store that failed, by store and kind (timeout, error).",
            ),
            &["store", "kind"],
        )?;
        registry.register(Box::new(store_errors.clone()))?;
        let quota_requests = IntCounterVec::new(
            Opts::new(
                "bulwark_quota_requests_total",
                "Quota decisions by policy, quota and decision.",
            ),
            &["policy", "quota", "decision"],
        )?;
        registry.register(Box::new(quota_requests.clone()))?;
        let quota_threshold_crossings = IntCounterVec::new(
            Opts::new(
                "bulwark_quota_threshold_crossings_total",
                "Times a key's quota usage crossed a warning threshold, by policy, quota and threshold (percent).",
            ),
            &["policy", "quota", "threshold"],
        )?;
        registry.register(Box::new(quota_threshold_crossings.clone()))?;
        let quota_keys = IntGauge::new(
            "bulwark_quota_keys",
            "Local quota usage entries held (one per quota and key used in its current period).",
        )?;
        registry.register(Box::new(quota_keys.clone()))?;
        let jwt_verifications = IntCounterVec::new(
            Opts::new(
                "bulwark_jwt_verifications_total",
                "Bearer tokens checked for a policy's jwt.verification, by policy and result (verified, rejected).",
            ),
            &["policy", "result"],
        )?;
        registry.register(Box::new(jwt_verifications.clone()))?;
        let operator_stream_connected = IntGauge::new(
            "bulwark_operator_stream_connected",
            "Whether the policy stream from the operator is open (1) or not (0).",
        )?;
        let operator_stream_connects = IntCounterVec::new(
            Opts::new(
                "bulwark_operator_stream_connects_total",
                "Attempts to open the policy stream from the operator, by result (success, failure).",
            ),
            &["result"],
        )?;
        let operator_stream_last_message_timestamp_seconds = Gauge::new(
            "bulwark_operator_stream_last_message_timestamp_seconds",
            "Unix time of the last message (snapshot or heartbeat) received on the operator stream; 0 before the first.",
        )?;
        let snapshot_acks = IntCounterVec::new(
            Opts::new(
                "bulwark_snapshot_acks_total",
                "Acknowledgements of operator snapshots, by accepted (true, false) and result (delivered, failed).",
            ),
            &["accepted", "result"],
        )?;
        Ok(Self {
            registry,
            inbound_requests,
            outbound_requests,
            ratelimit_requests,
            ratelimit_decision_seconds,
            ratelimit_counters,
            ratelimit_evictions,
            snapshot_version,
            config_reloads,
            store_errors,
            quota_requests,
            quota_threshold_crossings,
            quota_keys,
            jwt_verifications,
            operator_stream_connected,
            operator_stream_connects,
            operator_stream_last_message_timestamp_seconds,
            snapshot_acks,
        })
    }

    /// Exports the operator stream's metrics (once, when the stream is the policy source), with
    /// every label value present from the start so rates and alerts see zeros.
    pub fn enable_operator_stream(&self) -> prometheus::Result<()> {
        self.registry
            .register(Box::new(self.operator_stream_connected.clone()))?;
        self.registry
            .register(Box::new(self.operator_stream_connects.clone()))?;
        self.registry.register(Box::new(
            self.operator_stream_last_message_timestamp_seconds.clone(),
        ))?;
        self.registry
            .register(Box::new(self.snapshot_acks.clone()))?;
        for result in ["success", "failure"] {
            self.operator_stream_connects.with_label_values(&[result]);
        }
        for accepted in ["true", "false"] {
            for result in ["delivered", "failed"] {
                self.snapshot_acks.with_label_values(&[accepted, result]);
            }
        }
        Ok(())
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        out
    }
}

/// The `status_class` label values.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// Index in [`STATUS_CLASSES`] of a status code's class; `error` when no response was sent.
fn status_class_index(status: Option<u16>) -> usize {
    match status {
        Some(s @ 100..=599) => usize::from(s / 100 - 1),
        _ => STATUS_CLASSES.len() - 1,
    }
}

/// `2xx`, `4xx`, ... for a status code; `error` when no response was sent.
pub fn status_class(status: Option<u16>) -> &'static str {
    STATUS_CLASSES[status_class_index(status)]
}

/// `<listener>_requests_total{status_class}`, with every class's counter resolved once, so the
/// per-request path does no label lookup.
pub struct RequestsByStatus {
    by_class: [IntCounter; STATUS_CLASSES.len()],
}

impl RequestsByStatus {
    fn new(registry: &Registry, name: &str, help: &str) -> prometheus::Result<Self> {
        let counters = IntCounterVec::new(Opts::new(name, help), &["status_class"])?;
        registry.register(Box::new(counters.clone()))?;
        Ok(Self {
            by_class: STATUS_CLASSES.map(|class| counters.with_label_values(&[class])),
        })
    }

    /// Counts one request by the status it was answered with (`None`: no response was sent).
    pub fn count(&self, status: Option<u16>) {
        self.by_class[status_class_index(status)].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_their_labels() {
        let m = Metrics::new().unwrap();
        m.inbound_requests.count(Some(429));
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("bulwark_inbound_requests_total{status_class=\"4xx\"} 1"),
            "{text}"
        );
        assert!(text.contains("bulwark_sidecar_info{version=\""), "{text}");
    }

    #[test]
    fn operator_stream_metrics_appear_only_once_enabled() {
        let m = Metrics::new().unwrap();
        let text = String::from_utf8(m.render()).unwrap();
        assert!(!text.contains("bulwark_operator_stream"), "{text}");
        m.enable_operator_stream().unwrap();
        let text = String::from_utf8(m.render()).unwrap();
        for line in [
            "bulwark_operator_stream_connected 0",
            "bulwark_operator_stream_connects_total{result=\"failure\"} 0",
            "bulwark_operator_stream_last_message_timestamp_seconds 0",
            "bulwark_snapshot_acks_total{accepted=\"false\",result=\"delivered\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert!(m.enable_operator_stream().is_err(), "registered twice");
    }

    #[test]
    fn classes_cover_every_status() {
        assert_eq!(status_class(Some(101)), "1xx");
        assert_eq!(status_class(Some(204)), "2xx");
        assert_eq!(status_class(Some(308)), "3xx");
        assert_eq!(status_class(Some(599)), "5xx");
        assert_eq!(status_class(Some(600)), "error");
        assert_eq!(status_class(Some(503)), "5xx");
        assert_eq!(status_class(Some(99)), "error");
        assert_eq!(status_class(None), "error");
    }
}
