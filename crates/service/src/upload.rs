//! `UploadArchive`, as a plain `PUT` of the body to the method's path or as
//! gRPC / Connect client streaming: a tenant's archive, written to `uploads/TENANT/ID` as it arrives (never held
//! in memory), hashed, bounded by the room left in the tenant's storage
//! quota and the operator's upload limit, and abandoned when the client
//! stalls. It answers the upload's id (for `upload://ID` in CreateBuild)
//! and the body's sha256. An upload is its tenant's alone (another tenant's
//! id is `not_found`), counts in its storage, and goes once unused for the
//! server's upload lifetime.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use connectrpc::ConnectError;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::store::{now_ms, Store, StoreError, Tenant, Upload};
use crate::upload_rules::{new_id, Uploads};

/// A client that sends nothing for this long loses its upload.
const STALL: Duration = Duration::from_secs(60);
/// Uploads expired in one sweep.
const BATCH: i64 = 100;

/// An upload's bytes as they arrive; an error is the client's (a broken
/// connection, a malformed message).
pub type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// Receives `chunks` as an upload of `tenant`'s. `declared` is the size the
/// client announced, if it did: one that cannot fit is refused before a byte
/// is written.
pub async fn receive(
    store: &Store,
    uploads: &Uploads,
    tenant: &Tenant,
    declared: Option<u64>,
    chunks: Chunks,
) -> Result<Upload, ConnectError> {
    let _under_way = uploads.start(&tenant.id).ok_or_else(|| {
        ConnectError::resource_exhausted(
            "an upload of this tenant's is under way: one at a time (each is measured against \
             the storage quota's room)",
        )
    })?;
    let limit = tenant.tier.limits().storage_bytes;
    let used = store
        .usage(&tenant.id)
        .map_err(|e| ConnectError::internal(e.to_string()))?
        .storage_bytes
        .max(0) as u64;
    let room = limit.saturating_sub(used).min(uploads.max_bytes);
    let too_big = |size: u64| {
        ConnectError::resource_exhausted(format!(
            "the upload ({size} bytes or more) does not fit: the tier {} has {room} bytes of its \
             storage quota left ({used} of {limit} used), and uploads are at most {} bytes",
            tenant.tier.name(),
            uploads.max_bytes
        ))
    };
    if let Some(size) = declared.filter(|&s| s > room) {
        return Err(too_big(size));
    }
    let id = new_id();
    let dir = uploads.dir.join(&tenant.id);
    std::fs::create_dir_all(&dir).map_err(|e| ConnectError::internal(format!("uploads: {e}")))?;
    let part = dir.join(format!(".{id}.part"));
    let written = write_body(chunks, &part, room).await;
    let (size, sha256) = match written {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(match e {
                BodyError::TooBig(n) => too_big(n),
                BodyError::Stalled => ConnectError::deadline_exceeded(format!(
                    "the upload sent nothing for {}s: abandoned",
                    STALL.as_secs()
                )),
                BodyError::Client(m) => ConnectError::invalid_argument(format!("the upload: {m}")),
                BodyError::Disk(e) => ConnectError::unavailable(format!("writing the upload: {e}")),
            });
        }
    };
    let upload = Upload {
        id: id.clone(),
        tenant_id: tenant.id.clone(),
        size_bytes: size as i64,
        sha256,
        created_ms: now_ms(),
        expires_ms: uploads.expiry(),
    };
    let file = uploads.file(&tenant.id, &id);
    let recorded = std::fs::rename(&part, &file)
        .map_err(|e| ConnectError::internal(format!("uploads: {e}")))
        .and_then(|()| {
            store.insert_upload(&upload, limit).map_err(|e| match e {
                StoreError::Conflict(m) => ConnectError::resource_exhausted(m),
                e => ConnectError::internal(e.to_string()),
            })
        });
    if let Err(e) = recorded {
        let _ = std::fs::remove_file(&part);
        let _ = std::fs::remove_file(&file);
        return Err(e);
    }
    Ok(upload)
}

enum BodyError {
    TooBig(u64),
    Stalled,
    Client(String),
    Disk(std::io::Error),
}

/// Streams the body into `path` (0600, synced); answers its size and sha256.
async fn write_body(
    mut body: Chunks,
    path: &std::path::Path,
    room: u64,
) -> Result<(u64, String), BodyError> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(BodyError::Disk)?;
    let mut hash = Sha256::new();
    let mut size = 0u64;
    loop {
        let chunk = match tokio::time::timeout(STALL, body.next()).await {
            Err(_) => return Err(BodyError::Stalled),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Client(e)),
            Ok(Some(Ok(chunk))) => chunk,
        };
        size += chunk.len() as u64;
        if size > room {
            return Err(BodyError::TooBig(size));
        }
        hash.update(&chunk);
        file.write_all(&chunk).await.map_err(BodyError::Disk)?;
    }
    file.sync_all().await.map_err(BodyError::Disk)?;
    Ok((size, format!("{:x}", hash.finalize())))
}

/// Deletes expired uploads for ever, every minute.
pub async fn sweep(store: Arc<Store>, uploads: Uploads) {
    loop {
        let (store, rules) = (store.clone(), uploads.clone());
        let swept = tokio::task::spawn_blocking(move || sweep_once(&store, &rules)).await;
        match swept {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(uploads = n, "expired uploads deleted"),
            Ok(Err(e)) => tracing::error!(error = %e, "deleting expired uploads"),
            Err(e) => tracing::error!(error = %e, "deleting expired uploads"),
        }
        tokio::time::sleep(Duration::from_secs(60).min(uploads.lifetime)).await;
    }
}

fn sweep_once(store: &Store, uploads: &Uploads) -> anyhow::Result<usize> {
    let mut n = 0;
    loop {
        let expired = store.expired_uploads(BATCH)?;
        let mut deleted = 0;
        for (tenant, id) in &expired {
            match std::fs::remove_file(uploads.file(tenant, id)) {
                // Kept for the next sweep; the others go on.
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(upload = %id, error = %e, "deleting an expired upload")
                }
                _ => {
                    store.delete_upload(id)?;
                    deleted += 1;
                }
            }
        }
        n += deleted;
        if (expired.len() as i64) < BATCH || deleted == 0 {
            return Ok(n);
        }
    }
}

/// What a server stopped mid-upload left: partial files, and files whose
/// record was never written. Run before any upload is taken.
pub fn sweep_leftovers(store: &Store, uploads: &Uploads) -> anyhow::Result<usize> {
    let mut n = 0;
    let Ok(tenants) = std::fs::read_dir(&uploads.dir) else {
        return Ok(0);
    };
    for tenant in tenants {
        for file in std::fs::read_dir(tenant?.path())? {
            let path = file?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let left = name.ends_with(".part")
                || !crate::upload_rules::is_id(name)
                || !store.has_upload(name)?;
            if left && std::fs::remove_file(&path).is_ok() {
                n += 1;
            }
        }
    }
    Ok(n)
}
