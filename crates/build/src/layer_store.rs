//! The store of layer disks (`preserve_layers`): one read-only ext4 per
//! layer in overlayfs form, kept once and shared by every build that uses
//! the same layer over the same layers below, by the same builderd, with
//! the same policy. A disk's key is a chain (as OCI's ChainID): the key of
//! the layers below, the layer's digest, how its entries were adjusted and
//! the policy's identity. Beside each disk, its state: the merged tree up
//! to it (the next layer's disk needs it), the policy's verdicts on it (a
//! reused disk still counts in the build's report), and its checksum.
//! The state is the verdicts then the tree, in postcard, compressed.
//!
//! A disk is written under a temporary name and renamed into place, its
//! metadata last: what the store lists is whole. Two builds that write the
//! same key write the same bytes (the disk's UUID and times come from the
//! key), so either may win.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use builderd_ext4::{Metadata, Timestamp, Xattr};
use builderd_flatten::{LayerStats, Node, Skeleton, Verdict};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Bumped when a stored disk's form changes.
const FORM: &str = "builderd-layer-disk 1";

/// One stored disk, as its metadata file says.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stored {
    pub key: String,
    /// The layer's blob digest.
    pub digest: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    pub dropped: u64,
    pub newest_mtime: i64,
    /// The policy's verdicts kept in its state.
    pub applied: u64,
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

#[derive(Serialize, Deserialize)]
enum StoredNode {
    Dir(Meta),
    File,
    Symlink(Vec<u8>),
    Other,
}

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
        self.dir.join(format!("{key}.state"))
    }

    /// The stored disk of `key`, if the store has it whole.
    pub fn find(&self, key: &str) -> Option<Stored> {
        let text = std::fs::read(self.metadata(key)).ok()?;
        let stored: Stored = serde_json::from_slice(&text).ok()?;
        let size = std::fs::metadata(self.disk(key)).ok()?.len();
        (stored.key == key && size == stored.size_bytes && self.state(key).is_file())
            .then_some(stored)
    }

    fn state_bytes(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.state(key);
        let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
        zstd::decode_all(bytes.as_slice()).with_context(|| format!("{}: not zstd", path.display()))
    }

    /// The policy's verdicts on `key`'s layer.
    pub fn applied(&self, key: &str) -> Result<Vec<Applied>> {
        let raw = self.state_bytes(key)?;
        let (applied, _) = postcard::take_from_bytes(&raw)
            .with_context(|| format!("{}: not a layer's state", self.state(key).display()))?;
        Ok(applied)
    }

    /// The merged tree up to `key`'s layer.
    pub fn tree(&self, key: &str) -> Result<Skeleton> {
        let raw = self.state_bytes(key)?;
        let bad = || format!("{}: not a layer's state", self.state(key).display());
        let (_, rest): (Vec<Applied>, _) = postcard::take_from_bytes(&raw).with_context(bad)?;
        let tree: Vec<(Vec<u8>, StoredNode)> = postcard::from_bytes(rest).with_context(bad)?;
        Ok(tree
            .into_iter()
            .map(|(path, node)| {
                let node = match node {
                    StoredNode::Dir(m) => Node::Dir(m.to_metadata()),
                    StoredNode::File => Node::File,
                    StoredNode::Symlink(t) => Node::Symlink(t),
                    StoredNode::Other => Node::Other,
                };
                (path, node)
            })
            .collect())
    }

    /// Puts a written disk (`disk`, a temporary file in the store) in
    /// place with its state and metadata.
    pub fn put(
        &self,
        stored: &Stored,
        disk: tempfile::NamedTempFile,
        tree: &Skeleton,
        applied: Vec<Applied>,
    ) -> Result<()> {
        // The verdicts first: a build that takes the disk reads only them
        // unless the layer is the last one it takes.
        let tree: Vec<(&Vec<u8>, StoredNode)> = tree
            .iter()
            .map(|(p, n)| {
                let node = match n {
                    Node::Dir(m) => StoredNode::Dir(Meta::from(m)),
                    Node::File => StoredNode::File,
                    Node::Symlink(t) => StoredNode::Symlink(t.clone()),
                    Node::Other => StoredNode::Other,
                };
                (p, node)
            })
            .collect();
        let mut raw = postcard::to_allocvec(&applied).context("encoding a layer's state")?;
        raw.extend(postcard::to_allocvec(&tree).context("encoding a layer's state")?);
        let packed = zstd::encode_all(raw.as_slice(), 1)?;
        self.write(&self.state(&stored.key), &packed)?;
        disk.as_file().sync_all()?;
        use std::os::unix::fs::PermissionsExt;
        disk.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o444))?;
        disk.persist(self.disk(&stored.key))
            .context("putting a layer disk in the store")?;
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

    fn write(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let mut tmp = self.temp()?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path)
            .with_context(|| format!("{}: cannot put it in place", path.display()))?;
        Ok(())
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
            digest,
            sha256,
            size_bytes: size,
            entries: s.entries,
            whiteouts: s.whiteouts,
            opaque_dirs: s.opaque_dirs,
            dropped: s.dropped,
            newest_mtime: s.newest_mtime,
            applied: 0,
        }
    }
}
