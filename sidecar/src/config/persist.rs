//! The last good snapshot on local disk: written atomically (temporary file, fsync, rename) after
//! each successful swap, read at start-up so a restarted sidecar enforces at once.

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use bulwark_api::snapshot::{SCHEMA, Snapshot};

const FILE: &str = "last-good-snapshot.json";

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Writes `snapshot` so that a crash leaves either the old file or the new one, never a torn one.
/// Mode 0600: snapshots can carry signing keys.
pub fn save(state_dir: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    let target = path(state_dir);
    let tmp = state_dir.join(format!(".{FILE}.tmp"));
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&serde_json::to_vec(snapshot).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    fs::rename(&tmp, &target)?;
    fs::File::open(state_dir)?.sync_all()
}

/// Why the saved snapshot is not used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Parse(PathBuf, serde_json::Error),
    /// Written by a sidecar of another snapshot format (an upgrade or a rollback).
    #[error("{path}: snapshot schema {found} is not {SCHEMA}")]
    Schema { path: PathBuf, found: u32 },
}

/// The saved snapshot, if any. A file that cannot be read or is of another schema is reported,
/// not used.
pub fn load(state_dir: &Path) -> Result<Option<Snapshot>, LoadError> {
    let target = path(state_dir);
    let bytes = match fs::read(&target) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LoadError::Read(target, e)),
    };
    let snapshot: Snapshot =
        serde_json::from_slice(&bytes).map_err(|e| LoadError::Parse(target.clone(), e))?;
    if snapshot.schema != SCHEMA {
        return Err(LoadError::Schema {
            path: target,
            found: snapshot.schema,
        });
    }
    Ok(Some(snapshot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_and_rejects_other_schemas() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let snapshot = Snapshot {
            version: 9,
            ..Snapshot::empty()
        };
        save(dir.path(), &snapshot).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(snapshot.clone()));
        let mode = fs::metadata(path(dir.path())).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        save(
            dir.path(),
            &Snapshot {
                schema: SCHEMA + 1,
                ..snapshot
            },
        )
        .unwrap();
        assert!(load(dir.path()).unwrap_err().to_string().contains("schema"));
        fs::write(path(dir.path()), b"{torn").unwrap();
        assert!(load(dir.path()).is_err());
    }
}
