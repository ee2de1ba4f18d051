//! The operator stream's metrics (`bulwark_operator_stream_*`, `bulwark_snapshot_acks_total`).

use prometheus::{Gauge, IntCounterVec, IntGauge, Opts, Registry};

pub struct StreamMetrics {
    /// 1 while a stream is open.
    pub connected: IntGauge,
    /// Connection attempts by result (`success`, `failure`).
    pub connects: IntCounterVec,
    /// Unix time of the last line (snapshot or heartbeat) received; staleness is now minus this.
    pub last_message_timestamp_seconds: Gauge,
    /// Acknowledgements of snapshots, by `accepted` (`true`, `false`) and `result`
    /// (`delivered`, `failed`).
    pub acks: IntCounterVec,
}

impl StreamMetrics {
    /// The metrics, not yet registered.
    pub fn new() -> prometheus::Result<Self> {
        Ok(Self {
            connected: IntGauge::new(
                "bulwark_operator_stream_connected",
                "Whether the policy stream from the operator is open (1) or not (0).",
            )?,
            connects: IntCounterVec::new(
                Opts::new(
                    "bulwark_operator_stream_connects_total",
                    "Attempts to open the policy stream from the operator, by result (success, failure).",
                ),
                &["result"],
            )?,
            last_message_timestamp_seconds: Gauge::new(
                "bulwark_operator_stream_last_message_timestamp_seconds",
                "Unix time of the last message (snapshot or heartbeat) received on the operator stream; 0 before the first.",
            )?,
            acks: IntCounterVec::new(
                Opts::new(
                    "bulwark_snapshot_acks_total",
                    "Acknowledgements of operator snapshots, by accepted (true, false) and result (delivered, failed).",
                ),
                &["accepted", "result"],
            )?,
        })
    }

    /// Registers them, with every label value present from the start so rates and alerts see
    /// zeros.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.connected.clone()))?;
        registry.register(Box::new(self.connects.clone()))?;
        registry.register(Box::new(self.last_message_timestamp_seconds.clone()))?;
        registry.register(Box::new(self.acks.clone()))?;
        for result in ["success", "failure"] {
            self.connects.with_label_values(&[result]);
        }
        for accepted in ["true", "false"] {
            for result in ["delivered", "failed"] {
                self.acks.with_label_values(&[accepted, result]);
            }
        }
        Ok(())
    }
}
