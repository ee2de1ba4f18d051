//! Where snapshots come from. Standalone mode reads the same CR YAML users apply to Kubernetes
//! from a directory (`files`) and watches it (`watch`); the last good snapshot is kept on disk
//! (`persist`) so a restarted sidecar enforces before any source answers. The operator stream
//! will be a second source producing the same `Snapshot`.

pub mod files;
pub mod persist;
pub mod watch;
