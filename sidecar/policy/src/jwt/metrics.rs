//! JWT verification metrics (`bulwark_jwt_verifications_total`).

use prometheus::{IntCounterVec, Opts, Registry};

use crate::metrics::registry::registered;

/// `bulwark_jwt_verifications_total`.
pub struct JwtMetrics {
    /// Bearer tokens checked for `jwt.verification`, by policy and result (`verified`,
    /// `rejected`).
    pub verifications: IntCounterVec,
}

impl JwtMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            verifications: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bulwark_jwt_verifications_total",
                        "Bearer tokens checked for a policy's jwt.verification, by policy and result (verified, rejected).",
                    ),
                    &["policy", "result"],
                )?,
            )?,
        })
    }
}
