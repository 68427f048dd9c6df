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

/// The disk of a kept layer (preserve_layers), the image's first layer 0.
pub fn layer_file(n: usize) -> String {
    let stem = ARTIFACT.strip_suffix(".ext4").unwrap_or(ARTIFACT);
    format!("{stem}.layer-{n}.ext4")
}

/// The kept layers' disks in `dir`, by name.
pub fn layer_files(dir: &std::path::Path) -> Vec<String> {
    let mut names = Vec::new();
    while dir.join(layer_file(names.len())).exists() {
        names.push(layer_file(names.len()));
    }
    names
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

    /// Uploaded archives: `uploads/TENANT/ID`.
    pub fn uploads(&self) -> PathBuf {
        self.0.join("uploads")
    }

    /// A tenant's step engine storage (its builds' steps only).
    pub fn steps(&self, tenant: &str) -> PathBuf {
        self.0.join("steps").join(tenant)
    }

    /// Only the steps' part is for others to pass through: builds' steps
    /// run as another user (their user namespace's root), which the step
    /// engine needs to reach its storage. So the data directory lets
    /// others search it (not list it), `steps/` too; all else is the
    /// server's alone (directories 0700, files 0600).
    pub fn set_modes(&self) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let mode = |path: &std::path::Path, mode: u32| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        };
        for private in ["work", "artifacts", "blobs", "cache"] {
            mode(&self.0.join(private), 0o700)?;
        }
        mode(&self.0.join("steps"), 0o711)?;
        mode(&self.0, 0o711)
    }

    /// The layer blob cache the builds share.
    pub fn blobs(&self) -> PathBuf {
        self.0.join("blobs")
    }

    /// The store of kept layers' disks (preserve_layers).
    pub fn layers(&self) -> PathBuf {
        self.0.join("layers")
    }
}
