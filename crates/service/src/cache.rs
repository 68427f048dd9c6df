//! The artifact cache and the bound on what is cached.
//!
//! A build whose inputs are those of one built before (the same manifest,
//! every option that shapes the image, the same builderd binary) gets that
//! artifact instead of building again. Entries live under
//! `DATA/cache/artifacts/KEY/` as hard links to a completed build's files,
//! so a cached artifact outlives the build that made it, and each tenant's
//! copy is a link of its own (deleting one deletes no other).
//!
//! Layer and config blobs are cached by digest in `DATA/blobs` (the blob
//! cache `builderd build` fills) and shared by all tenants, each blob only
//! for the repositories it was downloaded from, after the tenant's own
//! credentials resolved a manifest naming it there (see `docs/caching.md`).
//! Together they are bounded: past `max_bytes`, the least recently used
//! entries go first, never a blob a running build has leased.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use builderd_oci::{BlobCache, Digest};
use serde_json::Value;

use crate::job::Job;
use crate::paths::{artifact_files, layer_files, ARTIFACT};
use crate::store::{CacheEntry, CacheKind, Store};

pub struct Cache {
    artifacts: PathBuf,
    pub blobs: BlobCache,
    /// Past this, entries are evicted.
    pub max_bytes: u64,
    /// Names the builderd binary that makes the images: another binary may
    /// make other bytes.
    builder_id: String,
}

impl Cache {
    /// The cache of the data directory; `builder` is the binary that
    /// builds (None to list or prune the cache only).
    pub fn open(data_dir: &Path, builder: Option<&Path>, max_bytes: u64) -> io::Result<Cache> {
        let artifacts = data_dir.join("cache/artifacts");
        fs::create_dir_all(&artifacts)?;
        let blobs = BlobCache::open(&data_dir.join("blobs")).map_err(io::Error::other)?;
        let builder_id = match builder {
            Some(path) => {
                let mut file = fs::File::open(path)?;
                let mut hash = <sha2::Sha256 as sha2::Digest>::new();
                io::copy(&mut file, &mut hash)?;
                Digest::of_hasher(hash).hex().to_string()
            }
            None => String::new(),
        };
        Ok(Cache {
            artifacts,
            blobs,
            max_bytes,
            builder_id,
        })
    }

    /// Something besides the binary that decides what builds make (the
    /// operator's hardening policy): a change of it is another builder.
    pub fn also_made_by(&mut self, input: &[u8]) {
        let with = [self.builder_id.as_bytes(), b"\0", input].concat();
        self.builder_id = Digest::of(&with).hex().to_string();
    }

    /// The key of what a build would make: where the image comes from
    /// (registry and repository: an artifact is served only for the
    /// repository whose blobs made it, to a build whose credentials just
    /// resolved that manifest there), the platform's manifest and everything
    /// of the job that shapes the image (not the tag, which the manifest
    /// stands for, nor the size limit, checked against the image, nor the
    /// retry policy). An image the tenant's commands changed is the
    /// tenant's own: its key names the tenant, the commands and their
    /// network; so is a Git project's, whose `manifest` is the digest the
    /// build process resolved of its commit, args and Containerfile.
    pub fn key(&self, manifest: &Digest, job: &Job, tenant: &str) -> String {
        let origin = match builderd_oci::Source::parse(&job.image) {
            Ok(builderd_oci::Source::Registry(r)) => r.origin(),
            // A Git source without its ref: the commit it named is in
            // `manifest`.
            _ if job.project.is_some() => job.image.split('#').next().unwrap_or_default().into(),
            _ => job.image.clone(),
        };
        let inputs = serde_json::json!({
            "builder": self.builder_id,
            "origin": origin,
            "manifest": manifest.as_str(),
            "platform": job.platform,
            "init": job.init,
            "init_script": job.init_script,
            "compression": job.compression,
            "entrypoint": job.entrypoint,
            "cmd": job.cmd,
            "env": job.env,
            "working_dir": job.working_dir,
            "user": job.user,
            "hostname": job.hostname,
            "steps": (!job.commands.is_empty()).then(|| serde_json::json!({
                "tenant": tenant,
                "commands": job.commands,
                "network": job.step_network.name(),
            })),
            // A Git project's build runs the tenant's Containerfile over the
            // tenant's own layer cache and cache mounts: the tenant's own.
            "project": job.project.as_ref().map(|_| serde_json::json!({"tenant": tenant})),
        });
        // What the flatten leaves out or changes makes another artifact
        // (keys of builds with the defaults stay as they were).
        let mut inputs = inputs;
        if job.preserve_layers {
            inputs["preserve_layers"] = serde_json::Value::Bool(true);
        }
        if job.optimize_for_size || job.remove_dev_packages || job.no_harden {
            inputs["policy"] = serde_json::json!({
                "optimize_for_size": job.optimize_for_size,
                "remove_dev_packages": job.remove_dev_packages,
                "harden": !job.no_harden,
            });
        }
        Digest::of(inputs.to_string().as_bytes()).hex().to_string()
    }

    fn entry(&self, key: &str) -> PathBuf {
        self.artifacts.join(key)
    }

    /// Links the cached artifact `key` into `dest` (created); answers its
    /// metadata, or None when it is not cached.
    pub fn link_into(&self, key: &str, dest: &Path) -> io::Result<Option<Value>> {
        let entry = self.entry(key);
        let meta = match fs::read(entry.join(format!("{ARTIFACT}.json"))) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta: Value = serde_json::from_slice(&meta).map_err(io::Error::other)?;
        fs::create_dir_all(dest)?;
        // The image and its compressed copy; the metadata is the build's own.
        let names = artifact_files().into_iter().chain(layer_files(&entry));
        for name in names.filter(|n| !n.ends_with(".json")) {
            match link_or_copy(&entry.join(&name), &dest.join(&name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound && name != ARTIFACT => {}
                // Evicted just now: as if it had not been there.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(Some(meta))
    }

    /// Keeps a completed build's artifact (its files in `from`) as `key`;
    /// answers its size.
    pub fn insert(&self, key: &str, from: &Path) -> io::Result<u64> {
        let entry = self.entry(key);
        if entry.exists() {
            return dir_bytes(&entry);
        }
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{key}."))
            .tempdir_in(&self.artifacts)?;
        for name in artifact_files().into_iter().chain(layer_files(from)) {
            match link_or_copy(&from.join(&name), &tmp.path().join(&name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let tmp = tmp.keep();
        if let Err(e) = fs::rename(&tmp, &entry) {
            let _ = fs::remove_dir_all(&tmp);
            // Another build of the same inputs got there first.
            if !entry.exists() {
                return Err(e);
            }
        }
        dir_bytes(&entry)
    }

    /// Deletes an entry's files.
    pub fn remove(&self, e: &CacheEntry) -> io::Result<()> {
        match e.kind {
            CacheKind::Blob => {
                let digest = Digest::parse(&e.name).map_err(io::Error::other)?;
                self.blobs.remove(&digest).map_err(io::Error::other)
            }
            CacheKind::Artifact => {
                // Gone in one step (a build linking from it finds nothing),
                // then removed.
                let gone = self.artifacts.join(format!(".{}.gone", e.name));
                fs::rename(self.entry(&e.name), &gone)?;
                fs::remove_dir_all(&gone)
            }
        }
    }

    /// Evicts down to `max_bytes` (None: this cache's bound).
    pub fn evict(
        &self,
        store: &Store,
        max_bytes: Option<u64>,
    ) -> crate::store::Result<Vec<CacheEntry>> {
        store.evict(max_bytes.unwrap_or(self.max_bytes), &mut |e| self.remove(e))
    }

    /// At start: records what is on disk but not in the database (a blob
    /// of an older server, an entry a crash left unrecorded), used when its
    /// file was last changed; removes the half-made entries a crash left.
    pub fn adopt(&self, store: &Store) -> io::Result<()> {
        for f in fs::read_dir(self.blobs.blobs_dir())?.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let meta = f.metadata()?;
            if meta.is_file() && name.len() == 64 {
                store
                    .adopt_cache_entry(
                        CacheKind::Blob,
                        &format!("sha256:{name}"),
                        meta.len(),
                        mtime_ms(&meta),
                    )
                    .map_err(io::Error::other)?;
            }
        }
        for d in fs::read_dir(&self.artifacts)?.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                fs::remove_dir_all(d.path())?;
                continue;
            }
            let bytes = dir_bytes(&d.path())?;
            store
                .adopt_cache_entry(CacheKind::Artifact, &name, bytes, mtime_ms(&d.metadata()?))
                .map_err(io::Error::other)?;
        }
        Ok(())
    }
}

fn mtime_ms(m: &fs::Metadata) -> i64 {
    m.mtime() * 1000 + m.mtime_nsec() / 1_000_000
}

fn dir_bytes(dir: &Path) -> io::Result<u64> {
    let mut n = 0;
    for f in fs::read_dir(dir)?.flatten() {
        n += f.metadata()?.len();
    }
    Ok(n)
}

/// A hard link where the two are on one filesystem, else a copy.
fn link_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    match fs::hard_link(from, to) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => fs::copy(from, to).map(drop),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_make_the_key_their_tenants_and_any_change_a_miss() {
        let data = tempfile::tempdir().unwrap();
        let cache = Cache::open(data.path(), None, 0).unwrap();
        let manifest = Digest::of(b"manifest");
        let plain = Job {
            image: "reg.example/app:v1".into(),
            ..Job::default()
        };
        // Without commands the image is anyone's who can pull it.
        assert_eq!(
            cache.key(&manifest, &plain, "a"),
            cache.key(&manifest, &plain, "b")
        );
        let with = |commands: &[&str]| Job {
            commands: commands.iter().map(|c| c.to_string()).collect(),
            ..plain.clone()
        };
        let key = cache.key(&manifest, &with(&["npm ci"]), "a");
        assert_eq!(key, cache.key(&manifest, &with(&["npm ci"]), "a"));
        assert_ne!(key, cache.key(&manifest, &plain, "a"));
        assert_ne!(key, cache.key(&manifest, &with(&["npm ci", "true"]), "a"));
        assert_ne!(key, cache.key(&manifest, &with(&["npm ci"]), "b"));
        let egress = Job {
            step_network: builderd_build::StepNetwork::Egress,
            ..with(&["npm ci"])
        };
        assert_ne!(key, cache.key(&manifest, &egress, "a"));
    }

    #[test]
    fn the_image_options_and_the_operators_hardening_policy_make_other_keys() {
        let data = tempfile::tempdir().unwrap();
        let mut cache = Cache::open(data.path(), None, 0).unwrap();
        let manifest = Digest::of(b"manifest");
        let plain = Job {
            image: "reg.example/app:v1".into(),
            ..Job::default()
        };
        let key = cache.key(&manifest, &plain, "a");
        for other in [
            Job {
                optimize_for_size: true,
                ..plain.clone()
            },
            Job {
                remove_dev_packages: true,
                ..plain.clone()
            },
            Job {
                no_harden: true,
                ..plain.clone()
            },
        ] {
            assert_ne!(key, cache.key(&manifest, &other, "a"), "{other:?}");
        }
        cache.also_made_by(br#"{"strip_setuid": true}"#);
        assert_ne!(key, cache.key(&manifest, &plain, "a"));
    }
}
