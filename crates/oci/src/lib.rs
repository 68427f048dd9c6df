//! builderd-oci: where images come from. References in skopeo's transport
//! syntax, digests, platforms, manifests and indexes (OCI and Docker
//! schema2), and OCI image layouts on disk; every blob is checked against
//! its size and digest before it is trusted.

mod digest;
mod layout;
mod manifest;
mod platform;
mod reference;

pub use digest::{Digest, VerifyingReader};
pub use layout::OciLayout;
pub use manifest::{Compression, Image, LayerInfo, RunConfig};
pub use platform::Platform;
pub use reference::{ImageRef, Source};

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
}
