//! The retention policy (`builderd serve --retention AGE`): the artifacts
//! and logs of builds finished longer ago than AGE are deleted, so their
//! bytes leave the tenants' storage use; the builds' records stay, marked
//! expired. Sent webhook deliveries that old go too.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::store::{now_ms, Store};

/// Builds expired in one transaction-sized step.
const BATCH: i64 = 100;

pub struct Retention {
    pub store: Arc<Store>,
    pub artifacts: PathBuf,
    pub age: Duration,
}

impl Retention {
    /// Sweeps now and then for ever: a quarter of the age apart (so nothing
    /// outlives it by more than a quarter), between 1 s and 1 h.
    pub async fn run(self) {
        let every = (self.age / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        loop {
            let this = (self.store.clone(), self.artifacts.clone(), self.age);
            let swept = tokio::task::spawn_blocking(move || sweep(&this.0, &this.1, this.2)).await;
            match swept {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(builds = n, "retention: artifacts and logs deleted"),
                Ok(Err(e)) => tracing::error!(error = %e, "retention"),
                Err(e) => tracing::error!(error = %e, "retention"),
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// Expires what finished before now − `age`; answers how many builds.
fn sweep(store: &Store, artifacts: &std::path::Path, age: Duration) -> anyhow::Result<usize> {
    let cutoff = now_ms() - age.as_millis() as i64;
    let mut expired = 0;
    loop {
        let builds = store.expiring(cutoff, BATCH)?;
        for (tenant, id) in &builds {
            let dir = artifacts.join(tenant).join(id);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => anyhow::bail!("{}: {e}", dir.display()),
            }
            store.expire_build(id)?;
        }
        expired += builds.len();
        if (builds.len() as i64) < BATCH {
            break;
        }
    }
    store.purge_deliveries(cutoff)?;
    Ok(expired)
}
