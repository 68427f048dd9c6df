//! API keys: a tenant's (several may be valid at once, so a new one can be
//! rolled out before the old is revoked) and the operator's (one at a time).
//! Only hashes are stored; a key is named by the first characters of its
//! hash, which say nothing of the key itself.

use rusqlite::params;

use super::{exec, now_ms, row, Result, Store, StoreError};

/// One of a tenant's keys, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// The first `KEY_ID` hex digits of the key's sha256.
    pub id: String,
    pub created_ms: i64,
}

/// How many hex digits of a key's hash name it.
pub const KEY_ID: usize = 12;

impl Store {
    /// The tenant's keys, oldest first.
    pub fn tenant_keys(&self, tenant: &str) -> Result<Vec<KeyInfo>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT hash, created_ms FROM api_keys WHERE tenant_id = ?1 ORDER BY created_ms, hash",
            )?;
            let rows = stmt.query_map([tenant], |r| {
                let hash: String = r.get(0)?;
                Ok(KeyInfo {
                    id: hash[..KEY_ID.min(hash.len())].to_string(),
                    created_ms: r.get(1)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Gives the tenant a new key; with `revoke_others`, every key it had
    /// stops working in the same transaction.
    pub fn add_tenant_key(&self, tenant: &str, key_hash: &str, revoke_others: bool) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let known: i64 = row(
            &tx,
            "SELECT COUNT(*) FROM tenants WHERE id = ?1",
            [tenant],
            |r| r.get(0),
        )?;
        if known == 0 {
            return Err(StoreError::Conflict(format!("no tenant {tenant:?}")));
        }
        if revoke_others {
            exec(&tx, "DELETE FROM api_keys WHERE tenant_id = ?1", [tenant])?;
        }
        exec(
            &tx,
            "INSERT INTO api_keys (hash, tenant_id, created_ms) VALUES (?1, ?2, ?3)",
            params![key_hash, tenant, now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Revokes the tenant's key named `id` (a prefix of its hash, at least
    /// `KEY_ID` digits): it stops working at once, also for a running server.
    pub fn revoke_tenant_key(&self, tenant: &str, id: &str) -> Result<()> {
        if id.len() < KEY_ID || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::Conflict(format!(
                "{id:?}: a key id is the {KEY_ID} hex digits `builderd tenant keys` lists"
            )));
        }
        let pattern = format!("{}%", id.to_ascii_lowercase());
        let gone = exec(
            &self.conn(),
            "DELETE FROM api_keys WHERE tenant_id = ?1 AND hash LIKE ?2",
            params![tenant, pattern],
        )?;
        if gone == 0 {
            return Err(StoreError::Conflict(format!(
                "tenant {tenant:?} has no key {id}"
            )));
        }
        Ok(())
    }

    /// Makes `key_hash` the one operator key: any other stops working at once.
    pub fn set_operator_key(&self, key_hash: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        exec(
            &tx,
            "DELETE FROM api_keys WHERE tenant_id IS NULL AND hash != ?1",
            [key_hash],
        )?;
        exec(
            &tx,
            "INSERT OR IGNORE INTO api_keys (hash, tenant_id, created_ms) VALUES (?1, NULL, ?2)",
            params![key_hash, now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyOwner;
    use crate::tier::Tier;

    #[test]
    fn keys_rotate_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let (k1, k2, k3) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        store.create_tenant("acme", Tier::Pro, &k1).unwrap();
        store.add_tenant_key("acme", &k2, false).unwrap();
        assert_eq!(store.tenant_keys("acme").unwrap().len(), 2);
        store.revoke_tenant_key("acme", &k1[..KEY_ID]).unwrap();
        assert!(store.key_owner(&k1).unwrap().is_none());
        assert!(store.key_owner(&k2).unwrap().is_some());
        assert!(store.revoke_tenant_key("acme", "abc").is_err());
        assert!(store.revoke_tenant_key("other", &k2[..KEY_ID]).is_err());
        store.add_tenant_key("acme", &k3, true).unwrap();
        assert!(store.key_owner(&k2).unwrap().is_none());
        assert!(store.key_owner(&k3).unwrap().is_some());
        assert!(store.add_tenant_key("nobody", &k1, false).is_err());

        let (o1, o2) = ("1".repeat(64), "2".repeat(64));
        store.set_operator_key(&o1).unwrap();
        store.set_operator_key(&o2).unwrap();
        assert!(store.key_owner(&o1).unwrap().is_none());
        assert!(matches!(
            store.key_owner(&o2).unwrap(),
            Some(KeyOwner::Operator)
        ));
    }
}
