//! Tenants and the keys that speak for them.

use rusqlite::{params, OptionalExtension};

use super::{exec, now_ms, row, tenant_row, KeyOwner, Result, Store, StoreError, Tenant};
use crate::tier::Tier;

impl Store {
    pub fn create_tenant(&self, id: &str, tier: Tier, key_hash: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let exists: bool = row(&tx, "SELECT 1 FROM tenants WHERE id = ?1", [id], |_| {
            Ok(true)
        })
        .optional()?
        .unwrap_or(false);
        if exists {
            return Err(StoreError::Conflict(format!("tenant {id} exists already")));
        }
        let now = now_ms();
        exec(
            &tx,
            "INSERT INTO tenants (id, tier, created_ms, webhook_secret) VALUES (?1, ?2, ?3, ?4)",
            params![id, tier.name(), now, super::outbox::new_secret()],
        )?;
        exec(
            &tx,
            "INSERT INTO api_keys (hash, tenant_id, created_ms) VALUES (?1, ?2, ?3)",
            params![key_hash, id, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn tenant(&self, id: &str) -> Result<Option<Tenant>> {
        self.read(|c| {
            row(
                c,
                "SELECT id, tier FROM tenants WHERE id = ?1",
                [id],
                tenant_row,
            )
            .optional()
        })
    }

    pub fn key_owner(&self, key_hash: &str) -> Result<Option<KeyOwner>> {
        // The key and its tenant in one statement: one snapshot, one round.
        type Found = (bool, Option<String>, Option<String>);
        let found: Option<Found> = self.read(|c| {
            row(
                c,
                "SELECT k.tenant_id IS NULL, t.id, t.tier FROM api_keys k
                 LEFT JOIN tenants t ON t.id = k.tenant_id WHERE k.hash = ?1",
                [key_hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
        })?;
        Ok(match found {
            None => None,
            Some((true, _, _)) => Some(KeyOwner::Operator),
            Some((false, Some(id), Some(tier))) => Some(KeyOwner::Tenant(Tenant {
                id,
                tier: Tier::parse(&tier).unwrap_or(Tier::Free),
            })),
            // A key whose tenant is gone speaks for no one.
            Some((false, _, _)) => None,
        })
    }
}
