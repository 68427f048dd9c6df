//! What the retention policy reads and deletes.

use rusqlite::params;

use super::{exec, now_ms, Result, Store};

impl Store {
    /// Finished builds, not yet expired, that finished before `cutoff_ms`:
    /// (tenant, build id), oldest first, at most `limit`.
    pub fn expiring(&self, cutoff_ms: i64, limit: i64) -> Result<Vec<(String, String)>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT tenant_id, id FROM builds
                 WHERE finished_ms < ?1 AND expired_ms IS NULL
                   AND state IN ('COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT')
                 ORDER BY finished_ms LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![cutoff_ms, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    /// The build's artifact is gone (its files deleted first): its logs go
    /// too, and its bytes leave the tenant's storage use. The build's record
    /// (state, times, checksums) stays.
    pub fn expire_build(&self, id: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        exec(&tx, "DELETE FROM logs WHERE build_id = ?1", [id])?;
        exec(
            &tx,
            "UPDATE builds SET artifact_bytes = 0, expired_ms = ?2 WHERE id = ?1",
            params![id, now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes webhook deliveries made or given up before `cutoff_ms` (their
    /// bodies describe builds). Answers how many.
    pub fn purge_deliveries(&self, cutoff_ms: i64) -> Result<usize> {
        Ok(exec(
            &self.conn(),
            "DELETE FROM webhook_deliveries
             WHERE created_ms < ?1 AND (delivered_ms IS NOT NULL OR failed_ms IS NOT NULL)",
            [cutoff_ms],
        )?)
    }
}
