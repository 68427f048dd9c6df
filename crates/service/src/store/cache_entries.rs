//! What the caches hold (blobs, artifacts), the leases running builds hold
//! on blobs, and eviction by least recent use.

use rusqlite::params;

use super::{exec, now_ms, row, CacheEntry, CacheKind, Result, Store, StoreError};

impl Store {
    /// Records that a build reads these blobs (digest, size): none of them
    /// is evicted until `release_blobs`; each counts as used now.
    pub fn lease_blobs(&self, build_id: &str, blobs: &[(String, u64)]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = now_ms();
        for (digest, size) in blobs {
            exec(
                &tx,
                "INSERT INTO blob_leases (build_id, digest) VALUES (?1, ?2)",
                params![build_id, digest],
            )?;
            exec(
                &tx,
                "INSERT INTO cache_entries (kind, name, bytes, last_used_ms) VALUES ('blob', ?1, ?2, ?3)
                 ON CONFLICT (kind, name) DO UPDATE SET last_used_ms = ?3, bytes = ?2",
                params![digest, *size as i64, now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn release_blobs(&self, build_id: &str) -> Result<()> {
        exec(
            &self.conn(),
            "DELETE FROM blob_leases WHERE build_id = ?1",
            [build_id],
        )?;
        Ok(())
    }

    /// At start: no build runs, so no blob is in use.
    pub fn clear_leases(&self) -> Result<()> {
        exec(&self.conn(), "DELETE FROM blob_leases", [])?;
        Ok(())
    }

    /// Records a cache entry found or made (used now).
    pub fn add_cache_entry(&self, kind: CacheKind, name: &str, bytes: u64) -> Result<()> {
        exec(
            &self.conn(),
            "INSERT INTO cache_entries (kind, name, bytes, last_used_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (kind, name) DO UPDATE SET last_used_ms = ?4, bytes = ?3",
            params![kind.name(), name, bytes as i64, now_ms()],
        )?;
        Ok(())
    }

    /// Records that a blob found on disk is in the cache, unless it is known
    /// (an older server's, or one a crash left unrecorded).
    pub fn adopt_cache_entry(
        &self,
        kind: CacheKind,
        name: &str,
        bytes: u64,
        used_ms: i64,
    ) -> Result<()> {
        exec(
            &self.conn(),
            "INSERT OR IGNORE INTO cache_entries (kind, name, bytes, last_used_ms) VALUES (?1, ?2, ?3, ?4)",
            params![kind.name(), name, bytes as i64, used_ms],
        )?;
        Ok(())
    }

    pub fn touch_cache_entry(&self, kind: CacheKind, name: &str) -> Result<()> {
        exec(
            &self.conn(),
            "UPDATE cache_entries SET last_used_ms = ?3 WHERE kind = ?1 AND name = ?2",
            params![kind.name(), name, now_ms()],
        )?;
        Ok(())
    }

    /// Everything in the cache, least recently used first.
    pub fn cache_entries(&self) -> Result<Vec<CacheEntry>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT kind, name, bytes, last_used_ms,
                        EXISTS (SELECT 1 FROM blob_leases l WHERE kind = 'blob' AND l.digest = name)
                 FROM cache_entries ORDER BY last_used_ms, name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(CacheEntry {
                    kind: CacheKind::parse(&r.get::<_, String>(0)?),
                    name: r.get(1)?,
                    bytes: r.get(2)?,
                    last_used_ms: r.get(3)?,
                    in_use: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Evicts least recently used entries not in use until the cache holds
    /// at most `max_bytes`; `remove` deletes an entry's files. All of it in
    /// one write transaction, so no build takes a lease on a blob between
    /// the check and the removal. Answers what went.
    pub fn evict(
        &self,
        max_bytes: u64,
        remove: &mut dyn FnMut(&CacheEntry) -> std::io::Result<()>,
    ) -> Result<Vec<CacheEntry>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut total: i64 = row(
            &tx,
            "SELECT COALESCE(SUM(bytes), 0) FROM cache_entries",
            [],
            |r| r.get(0),
        )?;
        let mut gone = Vec::new();
        if total as u64 > max_bytes {
            let candidates: Vec<CacheEntry> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT kind, name, bytes, last_used_ms FROM cache_entries c
                     WHERE NOT (kind = 'blob' AND EXISTS (SELECT 1 FROM blob_leases l WHERE l.digest = c.name))
                     ORDER BY last_used_ms, name",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok(CacheEntry {
                        kind: CacheKind::parse(&r.get::<_, String>(0)?),
                        name: r.get(1)?,
                        bytes: r.get(2)?,
                        last_used_ms: r.get(3)?,
                        in_use: false,
                    })
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for entry in candidates {
                if total as u64 <= max_bytes {
                    break;
                }
                match remove(&entry) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(StoreError::Conflict(format!(
                            "evicting {} {}: {e}",
                            entry.kind.name(),
                            entry.name
                        )))
                    }
                }
                exec(
                    &tx,
                    "DELETE FROM cache_entries WHERE kind = ?1 AND name = ?2",
                    params![entry.kind.name(), entry.name],
                )?;
                total -= entry.bytes;
                gone.push(entry);
            }
        }
        tx.commit()?;
        Ok(gone)
    }
}
