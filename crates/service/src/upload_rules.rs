//! Where uploads go, how long they are kept, how large they may be, and
//! what their ids look like.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::now_ms;

/// The operator's rules for uploads.
#[derive(Clone, Debug)]
pub struct Uploads {
    /// `DATA/uploads`.
    pub dir: PathBuf,
    /// How long an upload no build names is kept.
    pub lifetime: Duration,
    /// The largest upload, whatever the tier's room.
    pub max_bytes: u64,
    /// Tenants with an upload under way: one each at a time, so that the
    /// room an upload is measured against is not spent twice.
    pub in_flight: Arc<Mutex<HashSet<String>>>,
}

/// A tenant's upload under way; the tenant may upload again once it drops.
pub struct Uploading<'a> {
    of: &'a Mutex<HashSet<String>>,
    tenant: String,
}

impl Drop for Uploading<'_> {
    fn drop(&mut self) {
        self.of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.tenant);
    }
}

impl Uploads {
    /// The upload's file: `uploads/TENANT/ID`.
    pub fn file(&self, tenant: &str, id: &str) -> PathBuf {
        self.dir.join(tenant).join(id)
    }

    /// Marks `tenant`'s upload under way; None if one already is.
    pub fn start(&self, tenant: &str) -> Option<Uploading<'_>> {
        let mut under_way = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        under_way.insert(tenant.to_string()).then(|| Uploading {
            of: &self.in_flight,
            tenant: tenant.to_string(),
        })
    }

    /// When an upload made or used now expires.
    pub fn expiry(&self) -> i64 {
        now_ms() + self.lifetime.as_millis() as i64
    }
}

/// Whether `id` has an upload id's form (what `new_id` makes).
pub fn is_id(id: &str) -> bool {
    id.strip_prefix("upload_")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A new upload id.
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the kernel's random source works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("upload_{hex}")
}
