//! OCI image layouts: a directory (`oci:DIR[:TAG]`) or a tar of one
//! (`oci-archive:FILE[:TAG]`, read in place).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::archive::ArchiveIndex;
use crate::manifest::{resolve, Image};
use crate::{Digest, Error, Platform, MAX_DOC};

pub struct OciLayout {
    files: Files,
}

/// Where a layout's files are.
enum Files {
    Dir(PathBuf),
    Archive(ArchiveIndex),
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

impl Files {
    fn describe(&self) -> String {
        match self {
            Files::Dir(d) => d.display().to_string(),
            Files::Archive(a) => a.path().display().to_string(),
        }
    }

    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, Error> {
        match self {
            Files::Dir(d) => {
                let path = d.join(name);
                let file = File::open(&path).map_err(|e| Error::Io {
                    what: path.display().to_string(),
                    source: e,
                })?;
                Ok(Box::new(file))
            }
            Files::Archive(a) => Ok(Box::new(a.open_member(name)?)),
        }
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, Error> {
        let mut data = Vec::new();
        self.open(name)?
            .take(MAX_DOC + 1)
            .read_to_end(&mut data)
            .map_err(|e| Error::Io {
                what: format!("{}: {name}", self.describe()),
                source: e,
            })?;
        if data.len() as u64 > MAX_DOC {
            return Err(Error::Manifest(format!(
                "{}: {name} is too large for a manifest or config",
                self.describe()
            )));
        }
        Ok(data)
    }
}

impl OciLayout {
    pub fn open(dir: &Path) -> Result<OciLayout, Error> {
        OciLayout::check(Files::Dir(dir.to_path_buf()))
    }

    /// A layout inside a tar archive.
    pub fn open_archive(file: &Path) -> Result<OciLayout, Error> {
        OciLayout::check(Files::Archive(ArchiveIndex::open(file)?))
    }

    fn check(files: Files) -> Result<OciLayout, Error> {
        let text = files.read("oci-layout").map_err(|e| {
            Error::Manifest(format!(
                "{}: not an OCI image layout ({e})",
                files.describe()
            ))
        })?;
        let v: Value = serde_json::from_slice(&text)
            .map_err(|e| Error::Manifest(format!("{}: oci-layout: {e}", files.describe())))?;
        if v.get("imageLayoutVersion").and_then(Value::as_str) != Some("1.0.0") {
            return Err(Error::Manifest(format!(
                "{}: unsupported imageLayoutVersion",
                files.describe()
            )));
        }
        Ok(OciLayout { files })
    }

    fn blob_name(digest: &Digest) -> String {
        format!("blobs/sha256/{}", digest.hex())
    }

    /// Opens a blob for streaming (the caller verifies as it reads).
    pub fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, Error> {
        self.files.open(&OciLayout::blob_name(digest))
    }

    /// Reads a small blob whole and checks it.
    fn read_blob(&self, digest: &Digest, size: u64) -> Result<Vec<u8>, Error> {
        if size > MAX_DOC {
            return Err(Error::Manifest(format!(
                "blob {digest} claims {size} bytes, too large for a manifest or config"
            )));
        }
        let data = self.files.read(&OciLayout::blob_name(digest))?;
        digest.verify(&data, size)?;
        Ok(data)
    }

    /// The image tagged `tag` (or the only one) for `platform`.
    pub fn resolve(&self, tag: Option<&str>, platform: &Platform) -> Result<Image, Error> {
        let here = self.files.describe();
        let index: Value = serde_json::from_slice(&self.files.read("index.json")?)
            .map_err(|e| Error::Manifest(format!("{here}: index.json: {e}")))?;
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
        let tags = || {
            manifests
                .iter()
                .filter_map(tag_of)
                .collect::<Vec<_>>()
                .join(", ")
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
                return Err(Error::NotFound(format!(
                    "{here}: no image tagged {:?} (tags: {})",
                    tag.unwrap_or(""),
                    tags()
                )))
            }
            _ => {
                return Err(Error::NotFound(format!(
                    "{here}: holds several images; name one with :TAG (tags: {})",
                    tags()
                )))
            }
        };
        let digest = Digest::parse(
            entry
                .get("digest")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        )?;
        let size = entry
            .get("size")
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::Manifest(format!("{here}: index.json: an entry has no size")))?;
        let top = self.read_blob(&digest, size)?;
        resolve(top, digest, platform, &mut |d, size, _| {
            self.read_blob(d, size)
        })
    }
}

impl crate::BlobStore for OciLayout {
    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, Error> {
        OciLayout::open_blob(self, digest)
    }

    fn blob_path(&self, digest: &Digest) -> Option<PathBuf> {
        match &self.files {
            Files::Dir(dir) => Some(dir.join(OciLayout::blob_name(digest))),
            Files::Archive(_) => None,
        }
    }
}
