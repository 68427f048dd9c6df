//! `docker save` output (`docker-archive:FILE`): `manifest.json` names the
//! config and the layer tars, which are read in place from the archive. The
//! layers are uncompressed, so each is checked against its `diff_id`.

use std::collections::HashMap;
use std::io::Read;

use serde_json::Value;

use crate::archive::ArchiveIndex;
use crate::manifest::{platform_of, run_config, Compression, Image, LayerInfo};
use crate::{Digest, Error};

pub struct DockerArchive {
    index: ArchiveIndex,
    layers: HashMap<Digest, String>,
}

impl DockerArchive {
    /// The archive's one image (an error if it holds several).
    pub fn open(path: &std::path::Path) -> Result<(DockerArchive, Image), Error> {
        let index = ArchiveIndex::open(path)?;
        let what = path.display().to_string();
        let manifest: Value = serde_json::from_slice(&index.read_member("manifest.json")?)
            .map_err(|e| Error::Manifest(format!("{what}: manifest.json: {e}")))?;
        let entry = match manifest.as_array().map(Vec::as_slice) {
            Some([one]) => one,
            Some([]) | None => {
                return Err(Error::Manifest(format!(
                    "{what}: manifest.json lists no image"
                )))
            }
            Some(_) => {
                return Err(Error::Manifest(format!(
                    "{what}: holds several images; builderd takes archives of one"
                )))
            }
        };
        let config_name = entry
            .get("Config")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Manifest(format!("{what}: manifest.json has no Config")))?;
        let config_bytes = index.read_member(config_name)?;
        let config_digest = Digest::of(&config_bytes);
        // Configs are named by their digest; a different content is corrupt.
        let named_hex = config_name
            .rsplit('/')
            .next()
            .unwrap_or("")
            .trim_end_matches(".json");
        if named_hex.len() == 64 && named_hex != config_digest.hex() {
            return Err(Error::Digest {
                digest: format!("sha256:{named_hex}"),
                reason: format!("{config_name} has the digest {config_digest}"),
            });
        }
        let config: Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| Error::Manifest(format!("{what}: {config_name}: {e}")))?;
        let diff_ids: Vec<&str> = config
            .pointer("/rootfs/diff_ids")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let names: Vec<&str> = entry
            .get("Layers")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if names.len() != diff_ids.len() {
            return Err(Error::Manifest(format!(
                "{what}: {} layers but {} diff_ids in the config",
                names.len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        let mut by_digest = HashMap::new();
        for (name, diff_id) in names.iter().zip(&diff_ids) {
            let digest = Digest::parse(diff_id)?;
            let size = index
                .size(name)
                .ok_or_else(|| Error::NotFound(format!("{what}: has no layer {name}")))?;
            layers.push(LayerInfo {
                digest: digest.clone(),
                size,
                media_type: "application/vnd.docker.image.rootfs.diff.tar".into(),
                compression: Compression::None,
            });
            by_digest.insert(digest, name.to_string());
        }
        let image = Image {
            manifest_digest: Digest::of(&serde_json::to_vec(entry).unwrap_or_default()),
            manifest_media_type: "application/vnd.docker.distribution.manifest.v2+json".into(),
            config_digest,
            config_size: config_bytes.len() as u64,
            platform: platform_of(&config),
            layers,
            run: run_config(&config),
        };
        Ok((
            DockerArchive {
                index,
                layers: by_digest,
            },
            image,
        ))
    }
}

impl crate::BlobStore for DockerArchive {
    fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, Error> {
        let name = self.layers.get(digest).ok_or_else(|| {
            Error::NotFound(format!(
                "{}: no layer {digest}",
                self.index.path().display()
            ))
        })?;
        Ok(Box::new(self.index.open_member(name)?))
    }
}
