//! An image in a registry, resolved to the manifest for one platform (the
//! tag as it is now), its config blob brought into the blob cache.

use crate::{BlobCache, Digest, Doc, Error, Image, ImageRef, Platform, Registry};

/// Resolves `r` for `platform`: manifests from the registry, every time;
/// the config through the cache.
pub fn resolve_remote(
    registry: &Registry<'_>,
    cache: &BlobCache,
    r: &ImageRef,
    platform: &Platform,
) -> Result<Image, Error> {
    let reference = r
        .digest
        .clone()
        .or_else(|| r.tag.clone())
        .unwrap_or_else(|| "latest".into());
    let (top, digest) = registry.manifest(&reference)?;
    crate::resolve(top, digest, platform, &mut |d, size, doc| match doc {
        Doc::Manifest => {
            let (bytes, _) = registry.manifest(d.as_str())?;
            d.verify(&bytes, size)?;
            Ok(bytes)
        }
        Doc::Config => {
            fetch_small(registry, cache, d, size, &r.origin())?;
            let bytes = std::fs::read(cache.path(d)).map_err(|e| Error::Io {
                what: format!("cache: blob {d}"),
                source: e,
            })?;
            d.verify(&bytes, size)?;
            Ok(bytes)
        }
    })
}

fn fetch_small(
    registry: &Registry<'_>,
    cache: &BlobCache,
    digest: &Digest,
    size: u64,
    origin: &str,
) -> Result<bool, Error> {
    cache.fetch(digest, size, origin, |partial| {
        registry.download(digest, size, partial, &|_| {})
    })
}
