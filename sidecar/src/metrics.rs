//! The sidecar's Prometheus metrics (`bulwark_` prefix, base units, `_total` counters), in one
//! registry: the policy features' own ([`PolicyMetrics`], each feature declaring its metrics),
//! the listeners' golden signals ([`crate::listener::metrics`]), config loads, and the operator
//! stream's (registered only when the stream is the policy source).

use std::sync::Arc;

use bulwark_policy::metrics::{
    PolicyMetrics,
    registry::{registered, render},
};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use crate::{config::stream::metrics::StreamMetrics, listener::metrics::ListenerMetrics};

pub struct Metrics {
    registry: Registry,
    pub policy: Arc<PolicyMetrics>,
    /// The inbound listener (clients → app).
    pub inbound: ListenerMetrics,
    /// The outbound listener (the app → other services).
    pub outbound: ListenerMetrics,
    /// Configuration loads by result (`success`, `failure`).
    pub config_reloads: IntCounterVec,
    /// The operator stream's, registered by [`Metrics::enable_operator_stream`] so standalone
    /// sidecars do not export them.
    pub stream: StreamMetrics,
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
        let [inbound, outbound] = ListenerMetrics::register(&registry)?;
        Ok(Self {
            policy: Arc::new(PolicyMetrics::register(&registry)?),
            inbound,
            outbound,
            config_reloads: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "bulwark_config_reloads_total",
                        "Policy configuration loads, by result (success, failure).",
                    ),
                    &["result"],
                )?,
            )?,
            stream: StreamMetrics::new()?,
            registry,
        })
    }

    /// Exports the operator stream's metrics (once, when the stream is the policy source).
    pub fn enable_operator_stream(&self) -> prometheus::Result<()> {
        self.stream.register(&self.registry)
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> Vec<u8> {
        render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_their_labels() {
        let m = Metrics::new().unwrap();
        m.inbound
            .requests
            .count(crate::listener::metrics::Protocol::Http1, Some(429), None);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(
                "bulwark_inbound_requests_total{grpc_status=\"\",protocol=\"http1\",status_class=\"4xx\"} 1"
            ),
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
}
