//! Where snapshots come from. Standalone mode reads the same CR YAML users apply to Kubernetes
//! from a directory (`files`) and watches it (`watch`); in Kubernetes the operator streams each
//! pod its snapshot (`stream`). The last good snapshot is kept on disk (`persist`) so a restarted
//! sidecar enforces before any source answers.

pub mod files;
pub mod persist;
pub mod stream;
pub mod watch;
