//! The base image's blobs as the steps get them, what its config says of
//! them, and, for the microVM sandbox's inner build, an OCI layout of our
//! own whose blobs are links to the files we already have (the blob cache,
//! a local layout), copied only from sources that are not files (archives).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use builderd_oci::{Compression, Digest, Image};
use serde_json::{json, Value};

/// Where one of the base image's blobs is.
pub enum BlobAt {
    /// A file of its own: linked to.
    File(PathBuf),
    /// Only a stream: copied.
    Stream(Box<dyn Read + Send>),
}

/// The tag the layout's one image has.
pub const TAG: &str = "base";

/// When the image was made (seconds since the epoch), as its config says,
/// if it does; the config is checked against its digest.
pub fn created(image: &Image, config: BlobAt) -> Result<Option<i64>> {
    let bytes = match config {
        BlobAt::File(path) => read_small(&path)?,
        BlobAt::Stream(reader) => {
            let mut bytes = Vec::new();
            reader
                .take(builderd_oci::MAX_DOC + 1)
                .read_to_end(&mut bytes)
                .context("reading the base image's config")?;
            bytes
        }
    };
    created_of(image, &bytes)
}

fn created_of(image: &Image, config: &[u8]) -> Result<Option<i64>> {
    image
        .config_digest
        .verify(config, image.config_size)
        .context("the base image's config")?;
    let config: Value =
        serde_json::from_slice(config).context("the base image's config is not JSON")?;
    Ok(config["created"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64))
}

/// Writes an OCI layout of `image` at `dir`; answers when the image was
/// made, as its config says.
pub fn write(
    dir: &Path,
    image: &Image,
    config: BlobAt,
    layers: Vec<BlobAt>,
) -> Result<Option<i64>> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let put = |digest: &Digest, at: BlobAt| -> Result<()> {
        let path = blobs.join(digest.hex());
        match at {
            BlobAt::File(file) => std::os::unix::fs::symlink(&file, &path)
                .with_context(|| format!("linking {} into the base layout", file.display())),
            BlobAt::Stream(mut reader) => {
                let mut out = std::fs::File::create(&path)?;
                std::io::copy(&mut reader, &mut out)
                    .map(drop)
                    .with_context(|| format!("copying blob {digest} into the base layout"))
            }
        }
    };
    put(&image.config_digest, config)?;
    for (layer, at) in image.layers.iter().zip(layers) {
        put(&layer.digest, at)?;
    }
    let config_bytes = read_small(&blobs.join(image.config_digest.hex()))?;
    let created = created_of(image, &config_bytes)?;

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": image.config_digest.as_str(),
            "size": image.config_size,
        },
        "layers": image.layers.iter().map(|l| json!({
            "mediaType": layer_media_type(l.compression),
            "digest": l.digest.as_str(),
            "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_digest = Digest::of(&manifest);
    std::fs::write(blobs.join(manifest_digest.hex()), &manifest)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest.as_str(),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": TAG},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;

    Ok(created)
}

fn layer_media_type(c: Compression) -> &'static str {
    match c {
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
    }
}

/// A config is small; one that is not is refused before it is read.
fn read_small(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(builderd_oci::MAX_DOC + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes)
}
