//! The on-disk store of `Local` quota usage: one redb file (`quota.redb` in `--state-dir`).
//!
//! redb is an embedded, pure-Rust, ACID key-value store: a committed write survives a crash
//! (kill -9, power loss), and a torn write is rolled back at open. Keys are the usage keys of
//! [`super::usage::UsageStore`] (stable across restarts: policy, quota, its identity hash and a
//! digest of the key value, never the value), values are `(period start, period end, used)`.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{period::Period, usage::Usage};

const USAGE: TableDefinition<'_, &str, (i64, i64, u64)> = TableDefinition::new("quota_usage_v2");
/// Before key values were digested: `policy/quota:<identity>:<value>`. Adopted at open.
const LEGACY_USAGE: TableDefinition<'_, &str, (i64, i64, u64)> =
    TableDefinition::new("quota_usage_v1");

/// The file name in `--state-dir`.
pub const FILE_NAME: &str = "quota.redb";

pub struct QuotaDb {
    db: Database,
}

impl QuotaDb {
    /// Opens (or creates) the store. Fails while another process holds it (e.g. the old
    /// sidecar during an upgrade).
    pub fn open(path: &Path) -> Result<Self, redb::Error> {
        // Private, like the saved snapshot: usage keys hold key values (API keys, users).
        let db = crate::private_db::open(path)?;
        // Create the table so readers never meet a missing one, and adopt an older version's
        // rows in the same transaction, so no file holds both or neither.
        let txn = db.begin_write()?;
        let adopted = adopt_legacy(&txn)?;
        txn.commit()?;
        if adopted > 0 {
            tracing::info!(
                adopted,
                "quota usage of an older version adopted: key values replaced by their digests"
            );
        }
        Ok(Self { db })
    }

    /// Every entry whose period has not ended at `now_seconds`.
    pub fn load(&self, now_seconds: i64) -> Result<Vec<(String, Usage)>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(USAGE)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (key, value) = row?;
            let (start, end, used) = value.value();
            if end > now_seconds {
                out.push((
                    key.value().to_owned(),
                    Usage {
                        period: Period { start, end },
                        used,
                    },
                ));
            }
        }
        Ok(out)
    }

    /// Writes `entries` and deletes entries whose period ended before `now_seconds`, in one
    /// transaction (all or nothing).
    pub fn write(&self, entries: &[(String, Usage)], now_seconds: i64) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(USAGE)?;
            for (key, usage) in entries {
                table.insert(
                    key.as_str(),
                    (usage.period.start, usage.period.end, usage.used),
                )?;
            }
            table.retain(|_, (_, end, _)| end > now_seconds)?;
        }
        txn.commit()?;
        Ok(())
    }
}

/// Moves the rows of [`LEGACY_USAGE`] into [`USAGE`] under digested keys and deletes the old
/// table. The identity prefix is kept, so each row lands exactly where the current version
/// counts that key. A row that does not parse is dropped (it could not have been found).
fn adopt_legacy(txn: &redb::WriteTransaction) -> Result<usize, redb::Error> {
    let mut rows = Vec::new();
    {
        let legacy = txn.open_table(LEGACY_USAGE)?;
        for row in legacy.iter()? {
            let (key, value) = row?;
            if let Some(key) = digested_legacy_key(key.value()) {
                rows.push((key, value.value()));
            }
        }
    }
    txn.delete_table(LEGACY_USAGE)?;
    let mut table = txn.open_table(USAGE)?;
    for (key, value) in &rows {
        table.insert(key.as_str(), *value)?;
    }
    Ok(rows.len())
}

/// `policy/quota:<16 hex>:<value>` → `policy/quota:<16 hex>:<digest of value>`. Neither the
/// policy (namespace/name) nor the quota name can contain `:`.
fn digested_legacy_key(key: &str) -> Option<String> {
    let (name, rest) = key.split_once(':')?;
    let (identity, value) = rest.split_once(':')?;
    if identity.len() != 16 || !identity.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = format!("{name}:{identity}:");
    super::usage::push_value_digest(&mut out, value);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_file_is_readable_by_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let path = dir.path().join(FILE_NAME);
        drop(QuotaDb::open(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
        // A file an older version left world-readable is closed on open.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(QuotaDb::open(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn usage_survives_reopening_and_ended_periods_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let current = Usage {
            period: Period {
                start: 100,
                end: 200,
            },
            used: 7,
        };
        let old = Usage {
            period: Period { start: 0, end: 100 },
            used: 3,
        };
        {
            let db = QuotaDb::open(&path).unwrap();
            db.write(&[("a".into(), current), ("b".into(), old)], 50)
                .unwrap();
            db.write(&[("a".into(), Usage { used: 9, ..current })], 50)
                .unwrap();
        }
        let db = QuotaDb::open(&path).unwrap();
        assert_eq!(
            db.load(150).unwrap(),
            vec![("a".to_owned(), Usage { used: 9, ..current })],
            "the last write wins and b's period has ended"
        );
        db.write(&[], 150).unwrap();
        assert_eq!(db.load(0).unwrap().len(), 1, "b was deleted from disk");
    }

    #[test]
    fn an_older_versions_rows_are_adopted_with_their_values_digested() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let usage = (100, 200, 7);
        let legacy_key = "default/api/monthly:00112233aabbccdd:sk_live_secret";
        {
            // What the previous version wrote.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(LEGACY_USAGE).unwrap();
                table.insert(legacy_key, usage).unwrap();
                table.insert("not a usage key", usage).unwrap();
            }
            txn.commit().unwrap();
        }
        let db = QuotaDb::open(&path).unwrap();
        let mut expected = "default/api/monthly:00112233aabbccdd:".to_owned();
        super::super::usage::push_value_digest(&mut expected, "sk_live_secret");
        let (start, end, used) = usage;
        assert_eq!(
            db.load(150).unwrap(),
            vec![(
                expected,
                Usage {
                    period: Period { start, end },
                    used
                }
            )]
        );
        drop(db);
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(14).any(|w| w == b"sk_live_secret"),
            "the value is gone from the file"
        );
    }

    #[test]
    fn a_second_writer_is_refused_while_the_first_holds_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let _first = QuotaDb::open(&path).unwrap();
        assert!(QuotaDb::open(&path).is_err());
    }
}
