//! The sidecar's redb files (quota usage, the webhook queue) hold the app's data: they are
//! readable by the sidecar's user only.

use std::{
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

use redb::{Builder, Database};

/// redb's page cache, per database. Its default (1 GiB) made a large webhook backlog's RSS
/// approach that; the stores are written sequentially by key and read mostly recently written
/// pages, so a small cache serves them (measured in BENCHMARKS.md, "Webhook delivery").
const CACHE_BYTES: usize = 64 << 20;

/// Opens (or creates) a redb database at `path` with mode 0600, set on an existing file too
/// (files made by older versions are closed as well). Fails while another process holds it
/// (e.g. the old sidecar during an upgrade).
pub fn open(path: &Path) -> Result<Database, redb::Error> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(redb::StorageError::from)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(redb::StorageError::from)?;
    Ok(Builder::new().set_cache_size(CACHE_BYTES).create(path)?)
}
