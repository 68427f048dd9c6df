//! Where things are in the data directory: each build's work directory,
//! each tenant's artifacts, the blob cache, and the artifact's file names.

use std::path::PathBuf;

/// The image file's name in the work and artifact directories.
pub const ARTIFACT: &str = "rootfs.ext4";

/// The files of an artifact, the image first.
pub fn artifact_files() -> [String; 4] {
    [
        ARTIFACT.to_string(),
        format!("{ARTIFACT}.json"),
        format!("{ARTIFACT}.gz"),
        format!("{ARTIFACT}.zst"),
    ]
}

/// The data directory.
#[derive(Clone, Debug)]
pub struct DataDir(pub PathBuf);

impl DataDir {
    /// A running build's scratch directory.
    pub fn work(&self, id: &str) -> PathBuf {
        self.0.join("work").join(id)
    }

    /// A build's artifact: `artifacts/TENANT/BUILD/`.
    pub fn artifacts(&self, tenant: &str, id: &str) -> PathBuf {
        self.0.join("artifacts").join(tenant).join(id)
    }

    /// The layer blob cache the builds share.
    pub fn blobs(&self) -> PathBuf {
        self.0.join("blobs")
    }
}
