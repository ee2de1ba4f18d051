//! The sidecar's Prometheus metrics (`bulwark_` prefix, base units, `_total` counters).

use prometheus::{Encoder, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    /// Requests proxied by the inbound listener, by response status class (`2xx`, ...).
    pub inbound_requests: IntCounterVec,
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
        let inbound_requests = IntCounterVec::new(
            Opts::new(
                "bulwark_inbound_requests_total",
                "Requests handled by the inbound listener, by response status class.",
            ),
            &["status_class"],
        )?;
        registry.register(Box::new(inbound_requests.clone()))?;
        Ok(Self {
            registry,
            inbound_requests,
        })
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

/// `2xx`, `4xx`, ... for a status code; `error` when no response was sent.
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_their_labels() {
        let m = Metrics::new().unwrap();
        m.inbound_requests
            .with_label_values(&[status_class(Some(429))])
            .inc();
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("bulwark_inbound_requests_total{status_class=\"4xx\"} 1"),
            "{text}"
        );
        assert!(text.contains("bulwark_sidecar_info{version=\""), "{text}");
    }

    #[test]
    fn classes_cover_every_status() {
        assert_eq!(status_class(Some(204)), "2xx");
        assert_eq!(status_class(Some(503)), "5xx");
        assert_eq!(status_class(Some(99)), "error");
        assert_eq!(status_class(None), "error");
    }
}
