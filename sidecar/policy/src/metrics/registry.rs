//! Registering and rendering metrics (a leaf: every feature's metrics module uses it).

use prometheus::{Encoder, Registry, TextEncoder, core::Collector};

/// Registers `collector` in `registry` and hands it back for use.
pub fn registered<C: Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> prometheus::Result<C> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

/// `registry` in Prometheus text exposition format.
pub fn render(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("encoding to a Vec cannot fail");
    out
}
