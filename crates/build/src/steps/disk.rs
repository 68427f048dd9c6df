//! The base image as the steps see it: an ext4 disk our own writer makes
//! from the image's blobs, every owner shifted into the step's user
//! namespace (`HOST_ID_BASE` up), mounted read-only as the lower layer of
//! the step container's overlay. The engine never imports the image: its
//! own unpacking of a large image into its storage took most of a cold
//! build (bench/README.md), where one pass of our writer takes seconds.
//! Each disk is kept in the storage's `bases/` for the next build of the
//! same image (once that build has checked the blobs), the `KEEP_BASES`
//! most recently used of them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use builderd_ext4::{Free, Options, Writer};
use builderd_oci::{Digest, Image};

use super::base::BlobAt;
use super::engine::{HOST_ID_BASE, HOST_ID_RANGE};
use crate::blob_checks::BlobChecks;
use crate::layer_streams::{Blob, Streams};

/// How many base disks a storage keeps.
pub const KEEP_BASES: usize = 4;

/// The base's disk for one build: one the storage kept, or one written
/// for this build, to be kept once the digest checks of the blobs it was
/// written from have passed (`Keeper`).
pub struct Disk {
    pub path: PathBuf,
    keeper: Option<Keeper>,
}

/// The disk of `image`: the one `storage` keeps in `bases/`, or one written
/// from `layers` into the build's work directory `work` (which also holds
/// blobs that come only as streams).
pub fn provide(storage: &Path, image: &Image, layers: Vec<BlobAt>, work: &Path) -> Result<Disk> {
    let bases = storage.join("bases");
    private_dir(&bases)?;
    let kept = bases.join(format!("{}.ext4", key(image).hex()));
    if std::fs::metadata(&kept).is_ok() {
        if whole(&kept) {
            touch(&kept);
            return Ok(Disk {
                path: kept,
                keeper: None,
            });
        }
        // Cut short (a machine that stopped while it was kept): written again.
        let _ = std::fs::remove_file(&kept);
    }
    let path = work.join("base.ext4");
    let checks = write(&path, image, layers, work)?;
    Ok(Disk {
        keeper: Some(Keeper {
            written: path.clone(),
            kept,
            storage: storage.to_path_buf(),
            checks,
        }),
        path,
    })
}

impl Disk {
    /// What keeps the disk for later builds, when it was written for this
    /// one.
    pub fn keeper(self) -> Option<Keeper> {
        self.keeper
    }
}

/// A directory only root may enter: the disks are tenants' images.
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        // One an earlier version made is made private too.
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .with_context(|| format!("making {} private", dir.display()))
}

/// Its time is its last use, for the pruning.
fn touch(path: &Path) {
    let _ = std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
}

/// The file is as long as the filesystem its superblock describes.
fn whole(path: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut sb = [0u8; 64];
    if file.read_exact_at(&mut sb, 1024).is_err() || sb[56..58] != [0x53, 0xef] {
        return false;
    }
    let blocks = u64::from(u32::from_le_bytes(sb[4..8].try_into().unwrap()));
    let block_size = 1024u64 << u32::from_le_bytes(sb[24..28].try_into().unwrap()).min(6);
    file.metadata()
        .is_ok_and(|m| m.len() >= blocks * block_size)
}

/// Keeps a disk written for a build in the storage's `bases/`.
pub struct Keeper {
    written: PathBuf,
    kept: PathBuf,
    storage: PathBuf,
    /// The digest checks of the very reads the disk was written from.
    checks: BlobChecks,
}

impl Keeper {
    /// Call once the disk is unmounted: it is kept if the blobs it was
    /// written from were what their digests say (the checks ran beside the
    /// steps), and otherwise only written again by the next build.
    pub fn keep(self) {
        if self.checks.join().is_ok() && std::fs::rename(&self.written, &self.kept).is_ok() {
            touch(&self.kept);
            prune(&self.storage);
        }
    }
}

/// Names a disk by what it is made of: the image's config and layers, and
/// the writer's version.
fn key(image: &Image) -> Digest {
    let mut text = format!(
        "builderd base disk\n{}\n{}\n",
        env!("CARGO_PKG_VERSION"),
        image.config_digest
    );
    for layer in &image.layers {
        text.push_str(layer.digest.as_str());
        text.push('\n');
    }
    Digest::of(text.as_bytes())
}

/// Writes the disk at `out`; answers the digest checks of the blobs it
/// read, still running (at idle priority, beside the steps: waiting for
/// them here took a fifth of the disk's time).
fn write(out: &Path, image: &Image, layers: Vec<BlobAt>, scratch: &Path) -> Result<BlobChecks> {
    // The flatten may open a layer twice (a hard link whose target an upper
    // layer replaced): a stream is kept as a file first.
    let mut files = Vec::with_capacity(layers.len());
    for (i, at) in layers.into_iter().enumerate() {
        files.push(match at {
            BlobAt::File(path) => path,
            BlobAt::Stream(mut reader) => {
                let path = scratch.join(format!("layer-{i}"));
                let mut file = std::fs::File::create(&path)?;
                std::io::copy(&mut reader, &mut file)
                    .with_context(|| format!("copying layer {i} of the base image"))?;
                path
            }
        });
    }
    let open_blob = |i: usize| {
        Ok(Blob {
            reader: Box::new(std::fs::File::open(&files[i])?),
            verified: false,
        })
    };
    let streams = Streams::new(&image.layers, &open_blob, Arc::new(AtomicU64::new(0)));
    let beyond = Arc::new(AtomicU32::new(0));
    let mut layers = streams.layers();
    for layer in &mut layers {
        let beyond = beyond.clone();
        layer.adjust = Some(Arc::new(move |_, meta| {
            for id in [&mut meta.uid, &mut meta.gid] {
                if *id < HOST_ID_RANGE {
                    *id += HOST_ID_BASE;
                } else {
                    beyond.store(*id, Ordering::Relaxed);
                }
            }
            true
        }));
    }
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(out)
            .with_context(|| format!("creating {}", out.display()))?
    };
    let mut writer = Writer::new(
        file,
        Options {
            free: Free::Bytes(0),
            journal: false,
            implicit_owner: HOST_ID_BASE,
            ..Default::default()
        },
    )?;
    let flattened = builderd_flatten::flatten(&layers, &mut writer, None, &|_| {});
    drop(layers);
    flattened.context("writing the base image's disk for the steps")?;
    let (_, file) = writer.finish()?;
    // Whole on the disk before it may be kept.
    file.sync_all().context("flushing the base disk")?;
    let id = beyond.load(Ordering::Relaxed);
    if id != 0 {
        anyhow::bail!(
            "the base image has an entry owned by id {id}: a step's user namespace maps only ids 0 to {}",
            HOST_ID_RANGE - 1
        );
    }
    Ok(streams.take_checks())
}

/// Removes all but the `KEEP_BASES` most recently used disks. A disk
/// another build has mounted stays readable to it until that build
/// unmounts it.
pub fn prune(storage: &Path) {
    let bases = storage.join("bases");
    let mut disks: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(&bases).into_iter().flatten().flatten() {
        if !entry.file_name().to_string_lossy().ends_with(".ext4") {
            // What earlier versions kept there (the engine's image ids).
            let _ = std::fs::remove_file(entry.path());
        } else if let Ok(when) = entry.metadata().and_then(|m| m.modified()) {
            disks.push((when, entry.path()));
        }
    }
    disks.sort_by(|a, b| b.cmp(a));
    for (_, path) in disks.into_iter().skip(KEEP_BASES) {
        let _ = std::fs::remove_file(path);
    }
}

/// A disk mounted read-only (no device files, no journal replay) at a
/// directory; unmounted when dropped.
pub struct Mounted(PathBuf);

impl Mounted {
    pub fn new(disk: &Path, at: &Path) -> Result<Mounted> {
        std::fs::create_dir_all(at).with_context(|| format!("creating {}", at.display()))?;
        let out = std::process::Command::new("mount")
            .args(["-t", "ext4", "-o", "ro,nodev,nosuid,loop,noload"])
            .arg(disk)
            .arg(at)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            anyhow::bail!(
                "mounting the base disk {}: {}",
                disk.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Mounted(at.to_path_buf()))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        super::mounts::unmount(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_most_recently_used_disks() {
        let dir = tempfile::tempdir().unwrap();
        let bases = dir.path().join("bases");
        std::fs::create_dir(&bases).unwrap();
        let now = std::time::SystemTime::now();
        for n in 0..6u64 {
            let f = std::fs::File::create(bases.join(format!("{n}.ext4"))).unwrap();
            f.set_modified(now - std::time::Duration::from_secs(100 - n))
                .unwrap();
        }
        prune(dir.path());
        let mut left: Vec<String> = std::fs::read_dir(&bases)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["2.ext4", "3.ext4", "4.ext4", "5.ext4"]);
    }
}
