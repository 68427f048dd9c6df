//! What a build made, as the library answers it and as `OUT.json` holds it
//! beside the image: the source and its digests, the platform, the layers,
//! the image's and the boot's config, the image's sha256 and sizes, the
//! flatten's counts and each stage's time.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub builderd_version: &'static str,
    pub source: String,
    /// The commit a Git project source was built from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_commit: Option<String>,
    /// The Containerfile builderd wrote for a project without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated: Option<Generated>,
    /// An archive source: what it held and what it was built on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveInfo>,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub config_digest: String,
    pub platform: String,
    pub layers: Vec<builderd_oci::LayerInfo>,
    pub config: builderd_oci::RunConfig,
    pub init_strategy: &'static str,
    pub kernel_cmdline: String,
    pub run_config: builderd_rootfs::RunConfig,
    pub image: ImageInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compressed: Option<CompressedInfo>,
    pub flatten: FlattenInfo,
    /// The build steps, when there were any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<StepsInfo>,
    /// What the flatten left out or changed (size rules, development
    /// packages, hardening).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<builderd_policy::Report>,
    /// The image's layers kept as disks (`preserve_layers`), the image's
    /// first layer first: boot the image with them attached read-only in
    /// this order after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_disks: Option<Vec<LayerDiskInfo>>,
    pub timings_ms: Timings,
}

/// One kept layer's disk.
#[derive(Clone, Debug, Serialize)]
pub struct LayerDiskInfo {
    pub file: String,
    #[serde(flatten)]
    pub disk: LayerDisk,
    /// Written by this build; false: taken from the layer store.
    pub converted: bool,
}

/// What a layer's disk is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDisk {
    /// The layer's blob digest.
    pub digest: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
}

/// An archive source, as extracted (or read into the image).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ArchiveInfo {
    /// zip, tar, tar.gz, tar.xz or tar.zst, by its first bytes.
    pub format: String,
    pub sha256: String,
    pub archive_bytes: u64,
    pub entries: u64,
    pub files: u64,
    /// Bytes of file data.
    pub bytes: u64,
    /// Devices, fifos and sockets left out.
    pub left_out: u64,
    /// Entries whose setuid, setgid or sticky bit was cleared.
    pub bits_cleared: u64,
    /// The base-image table's stack, and its image.
    pub runtime: String,
    pub runtime_image: String,
    pub output_path: String,
    /// Whether anything ran (else the files went over the runtime's
    /// image as one more layer).
    pub built: bool,
    #[serde(skip)]
    pub newest_mtime: i64,
}

impl ArchiveInfo {
    /// The counts of what was read.
    pub fn counted(&mut self, x: &builderd_archive::Extracted) {
        self.archive_bytes = x.archive_bytes;
        self.entries = x.entries;
        self.files = x.files;
        self.bytes = x.bytes;
        self.left_out = x.dropped;
        self.bits_cleared = x.bits_cleared;
        self.newest_mtime = x.newest_mtime;
    }
}

/// A detected stack and the Containerfile generated for it: what a user
/// can read, and take over as their own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Generated {
    pub stack: String,
    /// The runtime version the project's files ask for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub containerfile: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepsInfo {
    /// What isolated them: "oci" (buildah with runc, a user namespace).
    pub sandbox: &'static str,
    pub network: &'static str,
    pub commands: Vec<crate::event::StepResult>,
    /// The layer they made, as the step engine committed it.
    pub layer_digest: String,
    pub layer_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImageInfo {
    pub file: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub allocated_bytes: u64,
    pub inodes: u64,
    pub file_data_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompressedInfo {
    pub file: String,
    pub format: &'static str,
    pub sha256: String,
    pub size_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FlattenInfo {
    pub entries_written: u64,
    pub entries_masked: u64,
    pub whiteouts: u64,
    pub hardlinks_fixed: u64,
}

/// Milliseconds each stage took.
#[derive(Clone, Debug, Serialize)]
pub struct Timings {
    pub resolve: u128,
    pub flatten: u128,
    pub finish: u128,
    pub checksum: u128,
    pub compress: u128,
    /// The build steps, from the base image's blobs to their layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<u128>,
    pub total: u128,
}
