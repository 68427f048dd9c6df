//! The store of layer disks (`preserve_layers`): one read-only ext4 per
//! layer in overlayfs form, kept once and shared by every build that uses
//! the same layer over the same layers below, by the same builderd, with
//! the same policy. A disk's key is a chain (as OCI's ChainID): the key of
//! the layers below, the layer's digest, how its entries were adjusted and
//! the policy's identity. Beside each disk, its state: the merged tree up
//! to it (the next layer's disk needs it), the policy's verdicts on it (a
//! reused disk still counts in the build's report), and its checksum.
//! The tree is a table searched where it lies (`builderd_flatten::Skeleton`),
//! or, for a layer that changes little of a large one, only its changes over
//! it (`KEY.changes`, naming that tree's key); the verdicts are postcard.
//!
//! A disk is written under a temporary name and renamed into place, its
//! metadata last: what the store lists is whole. Two builds that write the
//! same key write the same bytes (the disk's UUID and times come from the
//! key), so either may win.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use builderd_ext4::{Metadata, Timestamp, Xattr};
use builderd_flatten::{LayerStats, Skeleton, Verdict};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::report::LayerDisk;

/// Bumped when a stored disk's form changes.
const FORM: &str = "builderd-layer-disk 2";

/// One stored disk, as its metadata file says.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stored {
    pub key: String,
    /// What the build's report says of it too.
    #[serde(flatten)]
    pub disk: LayerDisk,
    pub dropped: u64,
    pub newest_mtime: i64,
    /// The policy's verdicts kept beside it.
    pub applied: u64,
    /// The sizes of the files of its tree and verdicts.
    pub tree_bytes: u64,
    /// Its tree is stored as the changes over this key's (whole) tree.
    pub tree_base: Option<String>,
    pub applied_bytes: u64,
}

/// A policy verdict told of one entry of the layer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Applied {
    verdict: (u8, u16),
    pub path: Vec<u8>,
    pub size: u64,
    meta: Meta,
}

impl Applied {
    pub fn new(verdict: Verdict, path: &[u8], size: u64, meta: &Metadata) -> Applied {
        let verdict = match verdict {
            Verdict::Keep => (0, 0),
            Verdict::Note(r) => (1, r),
            Verdict::Change(r) => (2, r),
            Verdict::Empty(r) => (3, r),
            Verdict::Drop(r) => (4, r),
        };
        Applied {
            verdict,
            path: path.to_vec(),
            size,
            meta: Meta::from(meta),
        }
    }

    pub fn verdict(&self) -> Verdict {
        match self.verdict {
            (1, r) => Verdict::Note(r),
            (2, r) => Verdict::Change(r),
            (3, r) => Verdict::Empty(r),
            (4, r) => Verdict::Drop(r),
            _ => Verdict::Keep,
        }
    }

    pub fn meta(&self) -> Metadata {
        self.meta.to_metadata()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Meta {
    mode: u16,
    uid: u32,
    gid: u32,
    times: [(i64, u32); 3],
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    fn from(m: &Metadata) -> Meta {
        let t = |t: Timestamp| (t.secs, t.nanos);
        Meta {
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            times: [t(m.atime), t(m.mtime), t(m.ctime)],
            xattrs: m
                .xattrs
                .iter()
                .map(|x| (x.name.clone(), x.value.clone()))
                .collect(),
        }
    }

    fn to_metadata(&self) -> Metadata {
        let t = |(secs, nanos): (i64, u32)| Timestamp::new(secs, nanos);
        Metadata {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            atime: t(self.times[0]),
            mtime: t(self.times[1]),
            ctime: t(self.times[2]),
            xattrs: self
                .xattrs
                .iter()
                .map(|(name, value)| Xattr {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
}

/// A layer's key; `below` is the key of the layers under it.
pub fn key(below: Option<&str>, digest: &str, adjust: &str, policy: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        FORM,
        env!("CARGO_PKG_VERSION"),
        below.unwrap_or(""),
        digest,
        adjust,
        policy,
    ] {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    hex(&h.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot make the layer store", dir.display()))?;
        sweep(dir);
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    pub fn disk(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.ext4"))
    }

    fn metadata(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    fn state(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.tree"))
    }

    /// Named by the tree it changes too: builds that store one key over
    /// different trees never pair one's metadata with another's changes.
    fn changes_file(&self, key: &str, base: &str) -> PathBuf {
        self.dir.join(format!("{key}.over.{base}.changes"))
    }

    fn applied_file(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.applied"))
    }

    /// The stored disk of `key`, if the store has it whole.
    pub fn find(&self, key: &str) -> Option<Stored> {
        let text = std::fs::read(self.metadata(key)).ok()?;
        let stored: Stored = serde_json::from_slice(&text).ok()?;
        let size = |p: PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
        let tree = match &stored.tree_base {
            None => size(self.state(key)),
            // The tree it changes must be there whole too.
            Some(base) => match self.find(base) {
                Some(b) if b.tree_base.is_none() => size(self.changes_file(key, base)),
                _ => return None,
            },
        };
        (stored.key == key
            && size(self.disk(key)) == stored.disk.size_bytes
            && tree == stored.tree_bytes
            && size(self.applied_file(key)) == stored.applied_bytes)
            .then_some(stored)
    }

    /// The policy's verdicts on `key`'s layer.
    pub fn applied(&self, key: &str) -> Result<Vec<Applied>> {
        let path = self.applied_file(key);
        let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
        postcard::from_bytes(&bytes)
            .with_context(|| format!("{}: not a layer's verdicts", path.display()))
    }

    /// The merged tree up to `stored`'s layer, and the key of the whole
    /// tree it is kept over (its own, or its `tree_base`).
    pub fn tree(&self, stored: &Stored) -> Result<(Skeleton, String)> {
        let read =
            |path: PathBuf| std::fs::read(&path).with_context(|| format!("{}", path.display()));
        let base = stored.tree_base.as_deref().unwrap_or(&stored.key);
        let path = self.state(base);
        let whole = Skeleton::from_bytes(read(path.clone())?)
            .with_context(|| format!("{}", path.display()))?;
        if stored.tree_base.is_none() {
            return Ok((whole, stored.key.clone()));
        }
        let path = self.changes_file(&stored.key, base);
        let tree = Skeleton::with_changes(whole, &read(path.clone())?)
            .with_context(|| format!("{}", path.display()))?;
        Ok((tree, base.to_string()))
    }

    /// Puts a written disk (`disk`, a temporary file in the store) in
    /// place with its state and metadata.
    pub fn put(
        &self,
        stored: &mut Stored,
        disk: tempfile::NamedTempFile,
        tree: &Skeleton,
        tree_base: Option<&str>,
        applied: Vec<Applied>,
    ) -> Result<()> {
        // The disk is flushed (artifacts link it); the tree, the verdicts
        // and the metadata are not: the metadata, written last, gives the
        // sizes of all, and an entry whose files differ is not taken.
        // A layer that changes little of a large tree keeps only its
        // changes (over the whole tree the build read), not the tree again.
        let (changed, of) = tree.changed();
        match tree_base.filter(|_| changed.saturating_mul(4) < of) {
            Some(base) => {
                let bytes = tree.changes_to_bytes();
                stored.tree_bytes = bytes.len() as u64;
                stored.tree_base = Some(base.to_string());
                self.write(&self.changes_file(&stored.key, base), &bytes)?;
            }
            None => {
                let bytes = tree.to_bytes();
                stored.tree_bytes = bytes.len() as u64;
                stored.tree_base = None;
                self.write(&self.state(&stored.key), &bytes)?;
            }
        }
        stored.applied = applied.len() as u64;
        if !applied.is_empty() {
            let bytes = postcard::to_allocvec(&applied).context("encoding a layer's verdicts")?;
            stored.applied_bytes = bytes.len() as u64;
            self.write(&self.applied_file(&stored.key), &bytes)?;
        }
        disk.as_file().sync_all()?;
        use std::os::unix::fs::PermissionsExt;
        disk.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o444))?;
        disk.persist(self.disk(&stored.key))
            .context("putting a layer disk in the store")?;
        // Not flushed either: lost in a crash, the entry is made again.
        self.write(
            &self.metadata(&stored.key),
            &serde_json::to_vec_pretty(stored)?,
        )
    }

    /// A temporary file in the store, for a disk being written.
    pub fn temp(&self) -> Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix(".layer.")
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .with_context(|| format!("{}: cannot write in the layer store", self.dir.display()))
    }

    /// Writes `bytes` to `path` by a rename, so that a reader never sees
    /// a part of them.
    fn write(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let mut tmp = self.temp()?;
        tmp.write_all(bytes)?;
        tmp.persist(path)
            .with_context(|| format!("{}: cannot put it in place", path.display()))?;
        Ok(())
    }
}

/// A build killed while it wrote leaves its temporary files: those older
/// than a day go (no build writes one that long).
fn sweep(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let day = std::time::Duration::from_secs(24 * 3600);
    for e in entries.flatten() {
        let name = e.file_name();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > day));
        if name.to_string_lossy().starts_with(".layer.") && old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl Stored {
    pub fn from_stats(
        key: String,
        digest: String,
        sha256: String,
        size: u64,
        s: &LayerStats,
    ) -> Stored {
        Stored {
            key,
            disk: LayerDisk {
                digest,
                sha256,
                size_bytes: size,
                entries: s.entries,
                whiteouts: s.whiteouts,
                opaque_dirs: s.opaque_dirs,
            },
            dropped: s.dropped,
            newest_mtime: s.newest_mtime,
            applied: 0,
            tree_bytes: 0,
            tree_base: None,
            applied_bytes: 0,
        }
    }
}
