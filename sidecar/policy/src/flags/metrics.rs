//! Feature-flag metrics (`bulwark_flag_*`, `bulwark_ofrep_*`). Labels are bounded by the
//! configuration: flag keys and variant names come from `FeatureFlag`s, never from requests
//! (an unknown key asked of OFREP counts under the status, not its key).

use std::sync::OnceLock;

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

use super::{CompiledFlag, Reason, Resolution};
use crate::metrics::registry::registered;

/// From 10 µs (a static flag) to 25 ms (a bulk answer under load).
const LATENCY_BUCKETS: [f64; 9] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025,
];

pub struct FlagMetrics {
    /// Evaluations by flag, variant (empty when there is none) and reason.
    pub evaluations: IntCounterVec,
    /// Gate decisions by gate and decision (`allowed`, `denied`, `routed`).
    pub gate_decisions: IntCounterVec,
    /// OFREP requests by endpoint (`single`, `bulk`) and HTTP status.
    pub ofrep_requests: IntCounterVec,
    /// Time to answer an OFREP request (parse, evaluate, serialise), by endpoint.
    pub ofrep_seconds: HistogramVec,
    /// Calls of flagd's evaluation API by method and gRPC status code (`Ok`, `NotFound`, ...).
    pub api_calls: IntCounterVec,
    /// Time to resolve a call of the evaluation API, by method.
    pub api_seconds: HistogramVec,
}

impl FlagMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            evaluations: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bulwark_flag_evaluations_total",
                        "Feature-flag evaluations by flag, variant and reason.",
                    ),
                    &["flag", "variant", "reason"],
                )?,
            )?,
            gate_decisions: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bulwark_flag_gate_decisions_total",
                        "Requests a feature-flag gate decided, by gate and decision (allowed, denied, routed).",
                    ),
                    &["gate", "decision"],
                )?,
            )?,
            ofrep_requests: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bulwark_ofrep_requests_total",
                        "OFREP requests by endpoint (single, bulk) and HTTP status.",
                    ),
                    &["endpoint", "status"],
                )?,
            )?,
            ofrep_seconds: registered(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "bulwark_ofrep_request_duration_seconds",
                        "Time to answer an OFREP request, by endpoint.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["endpoint"],
                )?,
            )?,
            api_calls: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bulwark_flagd_api_calls_total",
                        "Calls of flagd's evaluation API (gRPC and Connect), by method and status code.",
                    ),
                    &["method", "code"],
                )?,
            )?,
            api_seconds: registered(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "bulwark_flagd_api_call_duration_seconds",
                        "Time to resolve a call of flagd's evaluation API, by method.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["method"],
                )?,
            )?,
        })
    }
}

/// Counts one evaluation (`bulwark_flag_evaluations_total`), wherever it was made (OFREP, gates).
pub fn count_evaluation(evaluations: &IntCounterVec, flag: &str, resolution: &Resolution<'_>) {
    evaluation_series(evaluations, flag, resolution).inc();
}

fn evaluation_series(
    evaluations: &IntCounterVec,
    flag: &str,
    resolution: &Resolution<'_>,
) -> IntCounter {
    evaluations.with_label_values(&[
        flag,
        resolution.variant.unwrap_or(""),
        resolution.reason.as_str(),
    ])
}

/// One flag's `bulwark_flag_evaluations_total` series, each looked up once, on its first count:
/// gates count every proxied request, and a label lookup (hashing three labels) costs more than
/// the count itself.
pub struct EvaluationSeries {
    evaluations: IntCounterVec,
    /// By variant (its position among the flag's variants; the last slot: no variant) and
    /// reason.
    series: Box<[OnceLock<IntCounter>]>,
}

impl EvaluationSeries {
    pub fn new(evaluations: IntCounterVec, flag: &CompiledFlag) -> Self {
        Self {
            evaluations,
            series: (0..(flag.variants.len() + 1) * Reason::COUNT)
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// Counts `resolution`, one of `flag`'s (the flag this was made for).
    pub fn count(&self, flag: &CompiledFlag, resolution: &Resolution<'_>) {
        let variant = resolution
            .variant
            .and_then(|v| flag.variants.keys().position(|k| k == v))
            .unwrap_or(flag.variants.len());
        let slot = variant * Reason::COUNT + resolution.reason as usize;
        match self.series.get(slot) {
            Some(series) => series.get_or_init(|| self.labelled(flag, resolution)).inc(),
            None => self.labelled(flag, resolution).inc(),
        }
    }

    fn labelled(&self, flag: &CompiledFlag, resolution: &Resolution<'_>) -> IntCounter {
        evaluation_series(&self.evaluations, &flag.key, resolution)
    }
}
