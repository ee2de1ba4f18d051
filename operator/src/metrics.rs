//! The operator's Prometheus metrics (`bulwark_` prefix, base units).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// 1 when the apiserver serves every Bulwark kind.
    pub api_ready: IntGauge,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
    /// Objects in the index, by type.
    pub index_objects: IntGaugeVec,
    /// Pods with a compiled snapshot.
    pub pods: IntGauge,
    /// Per-pod snapshots compiled after watch events, whether or not their content changed.
    pub snapshots_compiled: IntCounter,
    /// Snapshots compiled with new content.
    pub snapshots_published: IntCounter,
    /// Seconds spent compiling after a batch of watch events.
    pub compile_seconds: Histogram,
    /// Open policy streams on this replica.
    pub streams: IntGauge,
    /// Snapshot messages written to streams.
    pub snapshots_sent: IntCounter,
    /// Acknowledgements received, by whether the sidecar accepted the snapshot.
    pub acks: IntCounterVec,
    /// Refused stream requests, by reason.
    pub stream_auth_failures: IntCounterVec,
    /// Status writes, by result.
    pub status_writes: IntCounterVec,
    /// Pods seen by the injection webhook, by outcome.
    pub injections: IntCounterVec,
    pub validations: IntCounterVec,
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
        let metrics = Self {
            api_ready: IntGauge::new(
                "bulwark_operator_api_ready",
                "1 when the apiserver answers and serves every bulwark.dev kind, else 0.",
            )?,
            leader: IntGauge::new(
                "bulwark_operator_leader",
                "1 while this replica holds the leader Lease and writes status, else 0.",
            )?,
            index_objects: IntGaugeVec::new(
                Opts::new(
                    "bulwark_operator_index_objects",
                    "Objects the operator's index holds, by type.",
                ),
                &["type"],
            )?,
            pods: IntGauge::new(
                "bulwark_operator_pods",
                "Injected pods with a compiled snapshot.",
            )?,
            snapshots_compiled: IntCounter::new(
                "bulwark_operator_snapshots_compiled_total",
                "Per-pod snapshots compiled after watch events, whether or not their content changed.",
            )?,
            snapshots_published: IntCounter::new(
                "bulwark_operator_snapshots_published_total",
                "Per-pod snapshots compiled with new content.",
            )?,
            compile_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "bulwark_operator_compile_seconds",
                    "Time to recompile the affected pods after a batch of watch events.",
                )
                .buckets(vec![
                    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
                ]),
            )?,
            streams: IntGauge::new(
                "bulwark_operator_streams",
                "Policy streams open on this replica.",
            )?,
            snapshots_sent: IntCounter::new(
                "bulwark_operator_snapshots_sent_total",
                "Snapshot messages written to policy streams.",
            )?,
            acks: IntCounterVec::new(
                Opts::new(
                    "bulwark_operator_acks_total",
                    "Snapshot acknowledgements from sidecars, by whether the sidecar accepted it.",
                ),
                &["accepted"],
            )?,
            stream_auth_failures: IntCounterVec::new(
                Opts::new(
                    "bulwark_operator_stream_auth_failures_total",
                    "Policy stream requests refused, by reason.",
                ),
                &["reason"],
            )?,
            status_writes: IntCounterVec::new(
                Opts::new(
                    "bulwark_operator_status_writes_total",
                    "Policy status writes, by result.",
                ),
                &["result"],
            )?,
            injections: IntCounterVec::new(
                Opts::new(
                    "bulwark_operator_injections_total",
                    "Pods reviewed by the injection webhook, by outcome.",
                ),
                &["outcome"],
            )?,
            validations: IntCounterVec::new(
                Opts::new(
                    "bulwark_operator_validations_total",
                    "Resources reviewed by the validating webhook, by verdict.",
                ),
                &["verdict"],
            )?,
            registry,
        };
        let r = &metrics.registry;
        r.register(Box::new(metrics.api_ready.clone()))?;
        r.register(Box::new(metrics.leader.clone()))?;
        r.register(Box::new(metrics.index_objects.clone()))?;
        r.register(Box::new(metrics.pods.clone()))?;
        r.register(Box::new(metrics.snapshots_compiled.clone()))?;
        r.register(Box::new(metrics.snapshots_published.clone()))?;
        r.register(Box::new(metrics.compile_seconds.clone()))?;
        r.register(Box::new(metrics.streams.clone()))?;
        r.register(Box::new(metrics.snapshots_sent.clone()))?;
        r.register(Box::new(metrics.acks.clone()))?;
        r.register(Box::new(metrics.stream_auth_failures.clone()))?;
        r.register(Box::new(metrics.status_writes.clone()))?;
        r.register(Box::new(metrics.injections.clone()))?;
        r.register(Box::new(metrics.validations.clone()))?;
        Ok(metrics)
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        out
    }
}
