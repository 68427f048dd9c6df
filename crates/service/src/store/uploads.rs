//! Uploaded archives (`UploadArchive`): each owned by one tenant, counted
//! in its storage with its artifacts, and gone once unused for the
//! server's upload lifetime (each build that names one starts it again).

use rusqlite::{params, Connection, OptionalExtension};

use super::{exec, now_ms, row, Result, Store, StoreError};

/// One upload, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    pub id: String,
    pub tenant_id: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// Bytes a tenant stores: its artifacts and its uploads.
pub(super) fn storage_used(c: &Connection, tenant: &str) -> rusqlite::Result<i64> {
    row(
        c,
        "SELECT (SELECT COALESCE(SUM(artifact_bytes), 0) FROM builds WHERE tenant_id = ?1)
              + (SELECT COALESCE(SUM(size_bytes), 0) FROM uploads WHERE tenant_id = ?1)",
        [tenant],
        |r| r.get(0),
    )
}

impl Store {
    /// Records `u`, unless the tenant's storage with it would pass
    /// `storage_limit` (checked in the same transaction).
    pub fn insert_upload(&self, u: &Upload, storage_limit: u64) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let used = storage_used(&tx, &u.tenant_id)?;
        if (used + u.size_bytes) as u64 > storage_limit {
            return Err(StoreError::Conflict(format!(
                "storage quota: the upload's {} bytes over the {used} used pass the {storage_limit} \
                 the tier allows; delete builds to free space",
                u.size_bytes
            )));
        }
        exec(
            &tx,
            "INSERT INTO uploads (id, tenant_id, size_bytes, sha256, created_ms, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                u.id,
                u.tenant_id,
                u.size_bytes,
                u.sha256,
                u.created_ms,
                u.expires_ms
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The tenant's upload `id`, if it has not expired; its lifetime starts
    /// again from now (`expires_ms`).
    pub fn use_upload(&self, tenant: &str, id: &str, expires_ms: i64) -> Result<Option<Upload>> {
        let conn = self.conn();
        let found = row(
            &conn,
            "UPDATE uploads SET expires_ms = MAX(expires_ms, ?3)
             WHERE id = ?1 AND tenant_id = ?2 AND expires_ms > ?4
             RETURNING id, tenant_id, size_bytes, sha256, created_ms, expires_ms",
            params![id, tenant, expires_ms, now_ms()],
            |r| {
                Ok(Upload {
                    id: r.get(0)?,
                    tenant_id: r.get(1)?,
                    size_bytes: r.get(2)?,
                    sha256: r.get(3)?,
                    created_ms: r.get(4)?,
                    expires_ms: r.get(5)?,
                })
            },
        )
        .optional()?;
        Ok(found)
    }

    /// Uploads expired before now, at most `limit`: (tenant, id).
    pub fn expired_uploads(&self, limit: i64) -> Result<Vec<(String, String)>> {
        self.read(|c| {
            let mut q = c.prepare_cached(
                "SELECT tenant_id, id FROM uploads WHERE expires_ms <= ?1 ORDER BY expires_ms LIMIT ?2",
            )?;
            let rows = q.query_map(params![now_ms(), limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    /// Whether the upload `id` is recorded (expired or not).
    pub fn has_upload(&self, id: &str) -> Result<bool> {
        self.read(|c| {
            row(c, "SELECT COUNT(*) FROM uploads WHERE id = ?1", [id], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n > 0)
        })
    }

    /// Forgets an upload (its file already removed).
    pub fn delete_upload(&self, id: &str) -> Result<()> {
        exec(&self.conn(), "DELETE FROM uploads WHERE id = ?1", [id])?;
        Ok(())
    }
}
