//! Where snapshots come from. Standalone mode reads the same CR YAML users apply to Kubernetes
//! from a directory (`files`) and watches it (`watch`); in Kubernetes the operator streams each
//! pod its snapshot (`stream`). The last good snapshot is kept on disk (`persist`) so a restarted
//! sidecar enforces before any source answers.

pub mod field_line;
pub mod files;
pub mod persist;
pub mod stream;
pub mod watch;

use std::{path::PathBuf, sync::Arc};

use bulwark_api::snapshot::Snapshot;
use bulwark_policy::{
    compiled::{CompiledPolicy, PolicyError},
    runtime::Runtime,
};

use crate::metrics::Metrics;

/// Where every source delivers snapshots: compiled against the runtime, then installed, kept on
/// disk as the last good one and counted.
pub struct Installer {
    pub runtime: Arc<Runtime>,
    pub state_dir: PathBuf,
    pub metrics: Arc<Metrics>,
}

impl Installer {
    /// Compiles `snapshot` (pure: nothing changes until [`Installer::install`]).
    pub fn compile(&self, snapshot: Snapshot) -> Result<CompiledPolicy, PolicyError> {
        self.runtime.compile(snapshot)
    }

    /// What every source does with a snapshot that compiled: keep it on disk as the last good
    /// one, install it, count the reload.
    pub fn install(&self, compiled: CompiledPolicy) {
        if let Err(e) = persist::save(&self.state_dir, &compiled.snapshot) {
            tracing::warn!(error = %e, "cannot persist the last good snapshot");
        }
        self.runtime.install(compiled);
        self.metrics
            .config_reloads
            .with_label_values(&["success"])
            .inc();
    }

    /// What every source does with a snapshot that did not compile: the last good one keeps
    /// serving; the rejection is counted and logged with `why`.
    pub fn reject(&self, why: &str, error: &str) {
        self.metrics
            .config_reloads
            .with_label_values(&["failure"])
            .inc();
        tracing::error!(error, "{why} rejected; the last good one keeps serving");
    }
}
