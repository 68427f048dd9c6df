//! The base image as the steps see it: an ext4 disk our own writer makes
//! from the image's blobs, every owner shifted into the step's user
//! namespace (`HOST_ID_BASE` up), mounted read-only as the lower layer of
//! the step container's overlay. The engine never imports the image: its
//! own unpacking of a large image into its storage took most of a cold
//! build (bench/README.md), where one pass of our writer takes seconds.
//! Each disk is kept in the storage's `bases/` for the next build of the
//! same image (once that build has checked the blobs), the `KEEP_BASES`
//! most recently used of them.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use builderd_ext4::{Free, Options, Writer};
use builderd_oci::{Digest, Image};

use super::base::BlobAt;
use super::engine::{HOST_ID_BASE, HOST_ID_RANGE};
use crate::layer_streams::{Blob, Streams};

/// How many base disks a storage keeps.
pub const KEEP_BASES: usize = 4;

/// The base's disk for one build: one the storage kept, or one written
/// for this build (unchecked, see `write`), to be kept once the build has
/// checked the blobs it came from.
pub struct Disk {
    pub path: PathBuf,
    keep_as: Option<PathBuf>,
}

/// The disk of `image`: the one `storage` keeps in `bases/`, or one written
/// from `layers` into the build's work directory `work` (which also holds
/// blobs that come only as streams).
pub fn provide(storage: &Path, image: &Image, layers: Vec<BlobAt>, work: &Path) -> Result<Disk> {
    let bases = storage.join("bases");
    std::fs::create_dir_all(&bases).with_context(|| format!("creating {}", bases.display()))?;
    let kept = bases.join(format!("{}.ext4", key(image).hex()));
    if std::fs::metadata(&kept).is_ok() {
        // Its time is its last use, for the pruning.
        let _ = std::fs::File::options()
            .write(true)
            .open(&kept)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        return Ok(Disk {
            path: kept,
            keep_as: None,
        });
    }
    let path = work.join("base.ext4");
    write(&path, image, layers, work)?;
    Ok(Disk {
        path,
        keep_as: Some(kept),
    })
}

impl Disk {
    /// What keeps the disk for later builds, when it was written for this
    /// one.
    pub fn keeper(&self, storage: &Path) -> Option<Keeper> {
        self.keep_as.as_ref().map(|kept| Keeper {
            written: self.path.clone(),
            kept: kept.clone(),
            storage: storage.to_path_buf(),
        })
    }
}

/// Keeps a disk written for a build in the storage's `bases/`.
pub struct Keeper {
    written: PathBuf,
    kept: PathBuf,
    storage: PathBuf,
}

impl Keeper {
    /// Call once the build has checked every blob the disk was made from
    /// (the disk must not be mounted). A disk that cannot be kept is only
    /// written again by the next build.
    pub fn keep(&self) {
        let _ = std::fs::rename(&self.written, &self.kept);
        prune(&self.storage);
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

/// Writes the disk at `out`. The blobs are not checked against their
/// digests here (a second hash of every blob, a fifth of the disk's time):
/// the build's own flatten reads and checks each of them, and fails if one
/// is not what its digest says; the disk is kept for other builds only
/// after that (`Keeper`).
fn write(out: &Path, image: &Image, layers: Vec<BlobAt>, scratch: &Path) -> Result<()> {
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
            verified: true,
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
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut writer = Writer::new(
        file,
        Options {
            free: Free::Bytes(0),
            journal: false,
            implicit_owner: HOST_ID_BASE,
            ..Default::default()
        },
    )?;
    let flattened = builderd_flatten::flatten(&layers, &mut writer, &|_| {});
    drop(layers);
    flattened.context("writing the base image's disk for the steps")?;
    writer.finish()?;
    let id = beyond.load(Ordering::Relaxed);
    if id != 0 {
        anyhow::bail!(
            "the base image has an entry owned by id {id}: a step's user namespace maps only ids 0 to {}",
            HOST_ID_RANGE - 1
        );
    }
    Ok(())
}

/// Removes all but the `KEEP_BASES` most recently used disks. A disk
/// another build has mounted stays readable to it until that build
/// unmounts it.
pub fn prune(storage: &Path) {
    let bases = storage.join("bases");
    let mut disks: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&bases)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ext4"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
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
            .args(["-t", "ext4", "-o", "ro,nodev,loop,noload"])
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
        unmount(&self.0);
    }
}

/// Detaches whatever is mounted at `path` (the loop device goes with the
/// last user of the mount).
pub fn unmount(path: &Path) {
    if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: umount2 with a NUL-terminated path that lives across
        // the call.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Detaches every mount at or below `dir`, deepest first (what a killed
/// build left mounted in its work directory).
pub fn unmount_below(dir: &Path) {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        unmount(&p);
    }
}

/// A path as the mount table writes it (space, tab, newline and backslash
/// as octal escapes).
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_table_paths_are_unescaped() {
        assert_eq!(unescape(r"/a\040b/c\134d"), r"/a b/c\d");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/odd\9"), r"/odd\9");
    }

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
