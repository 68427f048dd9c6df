//! The layer the steps made, as the flatten reads it over the image's own:
//! the engine's commit of a container made from nothing, read back with
//! its owners shifted out of the user namespace, the runtime's placeholders
//! dropped and its times clamped (same input, same image).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use builderd_flatten::Adjust;
use serde_json::Value;

use super::engine::{HOST_ID_BASE, HOST_ID_RANGE, MOUNT_POINTS};

/// Files the runtime bind-mounts over (what a step writes to them goes to
/// the mount, never to the image): what the layer has of them is a
/// placeholder.
const BIND_MOUNTED: [&[u8]; 4] = [
    b"etc/hostname",
    b"etc/hosts",
    b"etc/resolv.conf",
    b"run/.containerenv",
];

/// An empty OCI layout for the commit.
pub fn commit_layout(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("blobs/sha256"))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    std::fs::write(
        dir.join("index.json"),
        br#"{"schemaVersion":2,"manifests":[]}"#,
    )?;
    Ok(())
}

/// The layer files of the manifest tagged `tag` in the layout at `dir`:
/// the container is made from nothing, so all it has is what the steps
/// changed.
pub fn committed_layers(dir: &Path, tag: &str) -> Result<Vec<PathBuf>> {
    let read = |path: PathBuf| -> Result<Value> {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))
    };
    let blob = |digest: &str| -> Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .with_context(|| format!("the step engine's commit names a blob {digest:?}"))?;
        Ok(dir.join("blobs/sha256").join(hex))
    };
    let index = read(dir.join("index.json"))?;
    let manifest = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter().find(|d| {
                d["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag)
            })
        })
        .and_then(|d| d["digest"].as_str())
        .context("the step engine's commit has no manifest")?;
    let manifest = read(blob(manifest)?)?;
    manifest["layers"]
        .as_array()
        .context("the step engine's manifest has no layers")?
        .iter()
        .map(|l| blob(l["digest"].as_str().unwrap_or_default()))
        .collect()
}

/// How the flatten reads the steps' layer: owners from the host's view
/// back to the image's, placeholders dropped, times no later than `epoch`.
pub fn adjust(epoch: i64) -> Arc<Adjust> {
    Arc::new(move |path, meta| {
        if BIND_MOUNTED.contains(&path) || MOUNT_POINTS.iter().any(|m| m.as_bytes() == path) {
            return false;
        }
        let shift = |id: &mut u32| {
            if (HOST_ID_BASE..HOST_ID_BASE + HOST_ID_RANGE).contains(id) {
                *id -= HOST_ID_BASE;
            }
        };
        shift(&mut meta.uid);
        shift(&mut meta.gid);
        clamp_times(meta, epoch);
        true
    })
}

/// How the flatten reads a tree the steps wrote as it is (the microVM's):
/// times no later than `epoch`, nothing else changed.
pub fn clamp(epoch: i64) -> Arc<Adjust> {
    Arc::new(move |_, meta| {
        clamp_times(meta, epoch);
        true
    })
}

fn clamp_times(meta: &mut builderd_ext4::Metadata, epoch: i64) {
    for t in [&mut meta.atime, &mut meta.mtime, &mut meta.ctime] {
        if t.secs > epoch {
            t.secs = epoch;
            t.nanos = 0;
        }
    }
}
