//! builderd-oci: where images come from. References in skopeo's transport
//! syntax, digests, platforms, manifests and indexes (OCI and Docker
//! schema2), OCI image layouts on disk, a registry client and the blob
//! cache; every blob is checked against its size and digest before it is
//! trusted.

mod archive;
mod cache;
mod digest;
mod docker_archive;
mod layout;
mod manifest;
mod platform;
mod reference;
mod registry;
mod remote;
mod retry;

pub use builderd_net::Outbound;
pub use cache::BlobCache;
pub use digest::{Digest, VerifyingReader};
pub use docker_archive::DockerArchive;
pub use layout::OciLayout;
pub use manifest::{resolve, Compression, Doc, FetchBlob, Image, LayerInfo, RunConfig};
pub use platform::Platform;
pub use reference::{path_hint, ImageRef, Source};
pub use registry::{docker_config_credentials, http_client, Credentials, Registry};
pub use remote::resolve_remote;
pub use retry::{Backoff, RetryCause, RetryNotice, RetryPolicy};

/// The largest manifest, index or config read: they are small documents,
/// and anything bigger is refused rather than read into memory.
pub const MAX_DOC: u64 = 16 << 20;

/// Somewhere layer blobs can be read from.
pub trait BlobStore: Sync {
    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn std::io::Read + Send>, Error>;
    /// The blob as a file of its own, where it is one (to link to instead
    /// of copying); None: only `open_blob` reaches it.
    fn blob_path(&self, _digest: &Digest) -> Option<std::path::PathBuf> {
        None
    }
}

/// What can go wrong finding an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Reference(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("blob with digest {digest}: {reason}")]
    Digest { digest: String, reason: String },
    #[error("{0}")]
    Manifest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    Registry(String),
    /// An address the outbound policy does not let the build reach.
    #[error("{0}")]
    NotAllowed(String),
}
