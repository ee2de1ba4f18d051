//! The operator's Prometheus metrics (`bulwark_` prefix).

use prometheus::{Encoder, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    /// 1 when the apiserver serves every Bulwark kind.
    pub api_ready: IntGauge,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let info = IntGauge::with_opts(
            Opts::new(
                "bulwark_operator_info",
                "Build information of the running operator.",
            )
            .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        info.set(1);
        registry.register(Box::new(info))?;
        let api_ready = IntGauge::new(
            "bulwark_operator_api_ready",
            "1 when the apiserver answers and serves every bulwark.dev kind, else 0.",
        )?;
        registry.register(Box::new(api_ready.clone()))?;
        Ok(Self {
            registry,
            api_ready,
        })
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        out
    }
}
