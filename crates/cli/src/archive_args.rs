//! How an archive source (`archive:FILE`) is read and built: what it is
//! said to be, its limits, and the seed's `archive_strategy`.

use builderd_build::{ArchiveLimits, ArchiveOptions};

use crate::units::parse_bytes;

#[derive(clap::Args)]
pub struct ArchiveArgs {
    /// What the archive is (zip, tar, tar.gz, tar.xz, tar.zst); it must
    /// agree with its first bytes, which decide.
    #[arg(long, value_name = "TYPE")]
    archive_type: Option<String>,
    /// The base-image table's stack the archive's files run on (node,
    /// python, go, static, script, or one of the operator's table); default:
    /// found from its files.
    #[arg(long, value_name = "NAME")]
    runtime: Option<String>,
    /// The runtime's version (default: what the files ask for, else the
    /// table's default).
    #[arg(long = "version", value_name = "VERSION")]
    runtime_version: Option<String>,
    /// A file of the archive run with sh, or a shell command, to build it
    /// (default: its build.sh, package.json's build script or Makefile).
    #[arg(long, value_name = "SCRIPT")]
    build_script: Option<String>,
    /// A dependency file installed before the sources are copied (repeat
    /// for more; default: package.json, requirements.txt and go.mod when
    /// found).
    #[arg(long = "dependency", value_name = "FILE")]
    dependencies: Vec<String>,
    /// Where the archive's files go in the image, its working directory.
    #[arg(long, value_name = "DIR")]
    output_path: Option<String>,
    /// The most bytes of file data the archive may hold, uncompressed.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, default_value = "4G")]
    archive_max_bytes: u64,
    /// The most entries it may hold.
    #[arg(long, value_name = "N", default_value_t = 500_000)]
    archive_max_entries: u64,
    /// The most bytes one of its files may hold.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, default_value = "2G")]
    archive_max_entry_bytes: u64,
    /// The most directories deep a name may go.
    #[arg(long, value_name = "N", default_value_t = 64)]
    archive_max_depth: usize,
    /// The most times its own size the archive may unpack to (past 16 MiB).
    #[arg(long, value_name = "N", default_value_t = 200)]
    archive_max_ratio: u64,
}

impl ArchiveArgs {
    /// `public_only`: an archive named by URL comes from public addresses.
    pub fn options(&self, public_only: bool) -> ArchiveOptions {
        ArchiveOptions {
            format: self.archive_type.clone(),
            limits: ArchiveLimits {
                max_bytes: self.archive_max_bytes,
                max_entries: self.archive_max_entries,
                max_entry_bytes: self.archive_max_entry_bytes,
                max_depth: self.archive_max_depth,
                max_ratio: self.archive_max_ratio,
            },
            runtime: self.runtime.clone(),
            version: self.runtime_version.clone(),
            build_script: self.build_script.clone(),
            dependencies: self.dependencies.clone(),
            output_path: self.output_path.clone(),
            public_only,
        }
    }
}
