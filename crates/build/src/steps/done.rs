//! What a build's steps made (their layers, for the flatten, and how each
//! ran), and the work directory that holds those layers until the flatten
//! has read them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use builderd_flatten::Adjust;
use builderd_oci::{Compression, Digest, LayerInfo};

use super::disk::Keeper;
use super::owner;
use crate::event::StepResult;
use crate::report::StepsInfo;
use crate::request::{Sandbox, StepNetwork};

/// What the steps made: their layer, for the flatten, and how each ran.
pub struct Done {
    pub layers: Vec<PathBuf>,
    pub adjust: Arc<Adjust>,
    pub results: Vec<StepResult>,
    pub(super) sandbox: Sandbox,
    /// The base's disk written for this build, kept for the next once the
    /// blobs it came from passed their checks.
    pub(super) base: Option<Keeper>,
    /// Holds the layer's files until the flatten has read them.
    pub(super) _work: WorkDir,
}

/// A build's own directory in the engine's storage, removed when dropped.
pub(super) struct WorkDir(PathBuf);

const WORK_PREFIX: &str = "work-";

impl WorkDir {
    pub(super) fn new(storage: &Path) -> Result<WorkDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir = storage.join(format!("{WORK_PREFIX}{}-{nanos}", std::process::id()));
        // Those of builderd processes now gone.
        for entry in std::fs::read_dir(storage).into_iter().flatten().flatten() {
            if owner::gone(&entry.file_name().to_string_lossy(), WORK_PREFIX) {
                // Its base disk may still be mounted in it.
                super::mounts::unmount_below(&entry.path());
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        // Only root enters it: it holds the tenant's base, mounted.
        std::fs::create_dir_all(storage)
            .and_then(|()| {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new().mode(0o700).create(&dir)
            })
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(WorkDir(dir))
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Done {
    /// The build is done with the base's disk (and checked every blob of
    /// its own): the disk may serve later builds of the same image.
    pub fn keep_base(&mut self) {
        if let Some(keeper) = self.base.take() {
            keeper.keep();
        }
    }

    /// The steps' layers are the whole image (the microVM writes its tree
    /// as it is), not layers over the image's own.
    pub fn replaces_base(&self) -> bool {
        self.sandbox == Sandbox::Microvm
    }

    /// The steps' layers as the flatten lists them: uncompressed tars,
    /// named by the digest the engine gave them.
    pub fn layer_infos(&self) -> Result<Vec<LayerInfo>> {
        self.layers
            .iter()
            .map(|path| {
                let hex = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                Ok(LayerInfo {
                    digest: Digest::parse(&format!("sha256:{hex}"))?,
                    size: std::fs::metadata(path)
                        .with_context(|| format!("the steps' layer {}", path.display()))?
                        .len(),
                    media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                    compression: Compression::None,
                })
            })
            .collect()
    }

    /// What OUT.json says of the steps, which ran with `network`.
    pub fn info(self, network: StepNetwork) -> StepsInfo {
        let infos = self.layer_infos().unwrap_or_default();
        StepsInfo {
            sandbox: self.sandbox.name(),
            network: network.name(),
            commands: self.results,
            layer_digest: infos
                .iter()
                .map(|l| l.digest.to_string())
                .collect::<Vec<_>>()
                .join(","),
            layer_bytes: infos.iter().map(|l| l.size).sum(),
        }
    }
}
