//! A completed build's artifact: moved from the work directory (or linked
//! from the cache) into `artifacts/TENANT/BUILD/`, checked against the
//! tenant's storage quota and the build's size limit, recorded, and put in
//! the artifact cache for the next build of the same inputs.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::cache::Cache;
use crate::job::Job;
use crate::paths::{layer_file, layer_files, DataDir, ARTIFACT};
use crate::state::State;
use crate::store::{BuildRow, CacheKind, Store};

/// Where completed builds' artifacts go, and the cache they go into.
pub struct Artifacts {
    pub dirs: DataDir,
    pub cache: Arc<Cache>,
}

fn log(store: &Store, id: &str, level: &str, message: &str) {
    let _ = store.log(id, level, message, "builderd");
}

/// Why an artifact cannot be kept: the error category and message.
type Refused = (&'static str, String);

/// The bytes an artifact takes: the image and its compressed copy.
fn artifact_bytes(meta: &Value) -> i64 {
    let layers: i64 = meta["layer_disks"].as_array().map_or(0, |d| {
        d.iter()
            .map(|d| d["size_bytes"].as_i64().unwrap_or(0))
            .sum()
    });
    meta["image"]["size_bytes"].as_i64().unwrap_or(0)
        + meta["compressed"]["size_bytes"].as_i64().unwrap_or(0)
        + layers
}

/// Does `size` more fit in the tenant's storage quota?
fn check_storage(store: &Store, tenant: &str, size: i64) -> Result<(), Refused> {
    let used = store
        .usage(tenant)
        .map_err(|e| ("resource", e.to_string()))?
        .storage_bytes;
    let limit = store
        .tenant(tenant)
        .ok()
        .flatten()
        .map(|t| t.tier.limits().storage_bytes)
        .unwrap_or(0);
    if (used + size) as u64 > limit {
        return Err((
            "resource",
            format!(
                "the artifact ({size} bytes) does not fit in the tenant's storage quota ({used} of {limit} bytes used); delete builds to free space"
            ),
        ));
    }
    Ok(())
}

impl Artifacts {
    /// Moves the image and its metadata into the artifact store and records
    /// them; the build completes only when they are in place (answers
    /// whether it did, else it failed). Then the artifact goes into the
    /// cache under `key`, the key of what the build process resolved (an
    /// image's manifest, a Git project's commit and pinned Containerfile).
    pub fn finish(&self, store: &Store, build: &BuildRow, key: Option<&str>) -> bool {
        let id = build.id.as_str();
        match self.keep_artifact(store, build) {
            Ok(_) => {
                let _ = store.transition(id, &State::ACTIVE, State::Completed);
                log(store, id, "info", "completed");
                if let Some(key) = key {
                    match self
                        .cache
                        .insert(key, &self.dirs.artifacts(&build.tenant_id, id))
                    {
                        Ok(bytes) => {
                            let _ = store.add_cache_entry(CacheKind::Artifact, key, bytes);
                        }
                        Err(e) => log(store, id, "warn", &format!("not cached: {e}")),
                    }
                }
                true
            }
            Err(e) => self.refuse(store, build, e),
        }
    }

    /// Completes a build with the cached artifact `key`, already linked into
    /// its artifact directory, `meta` being the cached build's metadata.
    pub fn finish_cached(
        &self,
        store: &Store,
        build: &BuildRow,
        job: &Job,
        key: &str,
        mut meta: Value,
    ) -> bool {
        let id = build.id.as_str();
        // This build's own account: its source, and no one else's timings.
        meta["source"] = Value::String(job.image.clone());
        meta["cache_hit"] = Value::Bool(true);
        if let Some(m) = meta.as_object_mut() {
            m.remove("timings_ms");
        }
        let size = artifact_bytes(&meta);
        let kept = (|| {
            let image = meta["image"]["size_bytes"].as_u64().unwrap_or(0);
            if let Some(limit) = job.size_limit.filter(|l| image > *l) {
                return Err((
                    "resource",
                    format!("the image is {image} bytes, over the size limit of {limit} bytes; raise size_limit_bytes or make the image smaller"),
                ));
            }
            check_storage(store, &build.tenant_id, size)?;
            let dest = self.dirs.artifacts(&build.tenant_id, id);
            std::fs::write(dest.join(format!("{ARTIFACT}.json")), meta.to_string())
                .map_err(|e| ("resource", format!("storing the artifact: {e}")))?;
            store
                .set_artifact(id, &meta.to_string(), size)
                .and_then(|()| store.set_cache_hit(id))
                .map_err(|e| ("resource", e.to_string()))
        })();
        match kept {
            Ok(()) => {
                let _ = store.touch_cache_entry(CacheKind::Artifact, key);
                let _ = store.transition(id, &State::ACTIVE, State::Completed);
                log(
                    store,
                    id,
                    "info",
                    &format!(
                        "completed from the artifact cache: manifest {} was built before with the same options",
                        meta["manifest_digest"].as_str().unwrap_or("?")
                    ),
                );
                true
            }
            Err(e) => self.refuse(store, build, e),
        }
    }

    fn refuse(&self, store: &Store, build: &BuildRow, (category, message): Refused) -> bool {
        let id = build.id.as_str();
        let _ = std::fs::remove_dir_all(self.dirs.artifacts(&build.tenant_id, id));
        let _ = store.set_error(id, category, &message);
        log(store, id, "error", &message);
        let _ = store.transition(id, &State::ACTIVE, State::Failed);
        false
    }

    /// Moves the build's files into its artifact directory; answers the
    /// metadata as recorded.
    fn keep_artifact(&self, store: &Store, build: &BuildRow) -> Result<Value, Refused> {
        let id = build.id.as_str();
        let work = self.dirs.work(id);
        let dest = self.dirs.artifacts(&build.tenant_id, id);
        let io = |e: std::io::Error| ("resource", format!("storing the artifact: {e}"));
        std::fs::create_dir_all(&dest).map_err(io)?;
        let meta_path = work.join(format!("{ARTIFACT}.json"));
        let meta = std::fs::read(&meta_path).map_err(io)?;
        let mut meta: Value = serde_json::from_slice(&meta)
            .map_err(|e| ("build", format!("the build's metadata: {e}")))?;
        // Name the files as a download names them, not by the work directory.
        for key in ["image", "compressed"] {
            if let Some(file) = meta[key]["file"].as_str() {
                let name = Path::new(file)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                meta[key]["file"] = Value::String(name);
            }
        }
        if let Some(disks) = meta["layer_disks"].as_array_mut() {
            for (n, disk) in disks.iter_mut().enumerate() {
                disk["file"] = Value::String(layer_file(n));
            }
        }
        let size = artifact_bytes(&meta);
        check_storage(store, &build.tenant_id, size)?;
        for name in [
            ARTIFACT.to_string(),
            format!("{ARTIFACT}.gz"),
            format!("{ARTIFACT}.zst"),
        ]
        .into_iter()
        .chain(layer_files(&work))
        {
            let from = work.join(&name);
            if from.exists() {
                std::fs::rename(&from, dest.join(&name)).map_err(io)?;
            }
        }
        std::fs::write(dest.join(format!("{ARTIFACT}.json")), meta.to_string()).map_err(io)?;
        store
            .set_artifact(id, &meta.to_string(), size)
            .map_err(|e| ("resource", e.to_string()))?;
        Ok(meta)
    }
}
