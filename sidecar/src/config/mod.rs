//! Where snapshots come from. Standalone mode reads the same CR YAML users apply to Kubernetes
//! from a directory (`files`) and watches it (`watch`); in Kubernetes the operator streams each
//! pod its snapshot (`stream`). The last good snapshot is kept on disk (`persist`) so a restarted
//! sidecar enforces before any source answers.

pub mod files;
pub mod persist;
pub mod stream;
pub mod watch;

use std::path::Path;

use crate::policy::{ActivePolicy, CompiledPolicy, PolicyEnv};

/// What every source does with a snapshot that compiled: keep it on disk as the last good one,
/// swap it in, count the reload.
pub fn install(compiled: CompiledPolicy, state_dir: &Path, policy: &ActivePolicy, env: &PolicyEnv) {
    if let Err(e) = persist::save(state_dir, &compiled.snapshot) {
        tracing::warn!(error = %e, "cannot persist the last good snapshot");
    }
    policy.install(compiled, &env.metrics);
    env.metrics
        .config_reloads
        .with_label_values(&["success"])
        .inc();
}

/// What every source does with a snapshot that did not compile: the last good one keeps
/// serving; the rejection is counted and logged with `why`.
pub fn reject(env: &PolicyEnv, why: &str, error: &str) {
    env.metrics
        .config_reloads
        .with_label_values(&["failure"])
        .inc();
    tracing::error!(error, "{why} rejected; the last good one keeps serving");
}
