//! OCI image layouts on disk (`oci:DIR[:TAG]`).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::manifest::{resolve, Image};
use crate::{Digest, Error, Platform};

pub struct OciLayout {
    dir: PathBuf,
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Manifests, indexes and configs are small; refuse to read absurd ones.
const MAX_DOC: u64 = 16 << 20;

impl OciLayout {
    pub fn open(dir: &Path) -> Result<OciLayout, Error> {
        let marker = dir.join("oci-layout");
        let text = std::fs::read_to_string(&marker).map_err(|e| Error::Io {
            what: format!("{}: not an OCI image layout", dir.display()),
            source: e,
        })?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Manifest(format!("{}: {e}", marker.display())))?;
        if v.get("imageLayoutVersion").and_then(Value::as_str) != Some("1.0.0") {
            return Err(Error::Manifest(format!(
                "{}: unsupported imageLayoutVersion",
                marker.display()
            )));
        }
        Ok(OciLayout {
            dir: dir.to_path_buf(),
        })
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(digest.hex())
    }

    /// Opens a blob for streaming (the caller verifies as it reads).
    pub fn open_blob(&self, digest: &Digest) -> Result<File, Error> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| Error::Io {
            what: format!("blob {digest} ({})", path.display()),
            source: e,
        })
    }

    /// Reads a small blob whole and checks it.
    fn read_blob(&self, digest: &Digest, size: u64) -> Result<Vec<u8>, Error> {
        if size > MAX_DOC {
            return Err(Error::Manifest(format!(
                "blob {digest} claims {size} bytes, too large for a manifest or config"
            )));
        }
        let mut data = Vec::new();
        self.open_blob(digest)?
            .take(MAX_DOC + 1)
            .read_to_end(&mut data)
            .map_err(|e| Error::Io {
                what: format!("blob {digest}"),
                source: e,
            })?;
        digest.verify(&data, size)?;
        Ok(data)
    }

    /// The image tagged `tag` (or the only one) for `platform`.
    pub fn resolve(&self, tag: Option<&str>, platform: &Platform) -> Result<Image, Error> {
        let index_path = self.dir.join("index.json");
        let index_bytes = std::fs::read(&index_path).map_err(|e| Error::Io {
            what: index_path.display().to_string(),
            source: e,
        })?;
        let index: Value = serde_json::from_slice(&index_bytes)
            .map_err(|e| Error::Manifest(format!("{}: {e}", index_path.display())))?;
        let manifests = index
            .get("manifests")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let tag_of = |m: &Value| {
            m.pointer(&format!("/annotations/{}", REF_NAME.replace('/', "~1")))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let chosen: Vec<&Value> = match tag {
            Some(t) => manifests
                .iter()
                .filter(|m| tag_of(m).as_deref() == Some(t))
                .collect(),
            None => manifests.iter().collect(),
        };
        let entry = match chosen.as_slice() {
            [one] => *one,
            [] => {
                let tags: Vec<String> = manifests.iter().filter_map(tag_of).collect();
                return Err(Error::NotFound(format!(
                    "{}: no image tagged {:?} (tags: {})",
                    self.dir.display(),
                    tag.unwrap_or(""),
                    tags.join(", ")
                )));
            }
            _ => {
                let tags: Vec<String> = manifests.iter().filter_map(tag_of).collect();
                return Err(Error::NotFound(format!(
                    "{}: holds several images; name one with oci:DIR:TAG (tags: {})",
                    self.dir.display(),
                    tags.join(", ")
                )));
            }
        };
        let digest = Digest::parse(
            entry
                .get("digest")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        )?;
        let size = entry.get("size").and_then(Value::as_u64).ok_or_else(|| {
            Error::Manifest(format!("{}: an entry has no size", index_path.display()))
        })?;
        let top = self.read_blob(&digest, size)?;
        resolve(top, digest, platform, &mut |d, size, _| {
            self.read_blob(d, size)
        })
    }
}

impl crate::BlobStore for OciLayout {
    fn open_blob(&self, digest: &Digest) -> Result<File, Error> {
        OciLayout::open_blob(self, digest)
    }
}
