//! From a manifest or an index to one image: platform picked, config read,
//! layers listed with their compression. OCI and Docker schema2 alike.

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde_json::Value;

use crate::{Digest, Error, Platform};

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn of(media_type: &str) -> Option<Compression> {
        Some(match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerInfo {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub compression: Compression,
}

/// What the image runs, from its config.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub exposed_ports: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// One resolved image.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub config_digest: Digest,
    pub config_size: u64,
    pub platform: Platform,
    pub layers: Vec<LayerInfo>,
    pub run: RunConfig,
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

fn descriptor_digest(d: &Descriptor) -> Result<Digest, Error> {
    Digest::parse(d.digest().as_ref())
}

/// The media type of a manifest-ish document: its own field, else what its
/// shape says.
fn kind_of(doc: &Value) -> String {
    if let Some(t) = doc.get("mediaType").and_then(Value::as_str) {
        return t.to_string();
    }
    if doc.get("manifests").is_some() {
        INDEX_TYPES[0].to_string()
    } else {
        MANIFEST_TYPES[0].to_string()
    }
}

/// Which document `resolve` asks for: registries serve manifests and
/// configs from different endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Doc {
    Manifest,
    Config,
}

/// Returns a small document (manifest, index, config), checked against its
/// digest and size.
pub type FetchBlob<'a> = dyn FnMut(&Digest, u64, Doc) -> Result<Vec<u8>, Error> + 'a;

/// Resolves `top` (the bytes of a manifest or index whose digest is
/// `top_digest`) to one image for `platform`. `fetch` returns a small blob,
/// already checked against its digest and size.
pub fn resolve(
    top: Vec<u8>,
    top_digest: Digest,
    platform: &Platform,
    fetch: &mut FetchBlob<'_>,
) -> Result<Image, Error> {
    let mut bytes = top;
    let mut digest = top_digest;
    for _ in 0..4 {
        let doc: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Manifest(format!("manifest {digest} is not JSON: {e}")))?;
        let kind = kind_of(&doc);
        if INDEX_TYPES.contains(&kind.as_str()) {
            let index: ImageIndex = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Manifest(format!("index {digest}: {e}")))?;
            let chosen = index
                .manifests()
                .iter()
                .find(|d| {
                    d.platform().as_ref().is_some_and(|p| platform.matches(&p.os().to_string(), &p.architecture().to_string(), p.variant().as_deref()))
                })
                .ok_or_else(|| {
                    let offered: Vec<String> = index
                        .manifests()
                        .iter()
                        .filter_map(|d| d.platform().as_ref())
                        .map(|p| match p.variant() {
                            Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
                            None => format!("{}/{}", p.os(), p.architecture()),
                        })
                        .collect();
                    Error::NotFound(format!("the image has no {platform} variant (it has: {}); choose one with --platform", offered.join(", ")))
                })?;
            digest = descriptor_digest(chosen)?;
            check_doc_size("manifest", &digest, chosen.size())?;
            bytes = fetch(&digest, chosen.size(), Doc::Manifest)?;
            continue;
        }
        if !MANIFEST_TYPES.contains(&kind.as_str()) {
            return Err(Error::Manifest(format!(
                "manifest {digest} has the unknown media type {kind:?}"
            )));
        }
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Manifest(format!("manifest {digest}: {e}")))?;
        let config_desc = manifest.config();
        let config_type = config_desc.media_type().to_string();
        if !CONFIG_TYPES.contains(&config_type.as_str()) {
            return Err(Error::Manifest(format!("manifest {digest}: the config has the unknown media type {config_type:?} (not a container image?)")));
        }
        let config_digest = descriptor_digest(config_desc)?;
        check_doc_size("config", &config_digest, config_desc.size())?;
        let config_bytes = fetch(&config_digest, config_desc.size(), Doc::Config)?;
        let config: Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| Error::Manifest(format!("config {config_digest} is not JSON: {e}")))?;
        let mut layers = Vec::new();
        for l in manifest.layers() {
            let media_type = l.media_type().to_string();
            let compression = Compression::of(&media_type).ok_or_else(|| {
                Error::Manifest(format!(
                    "layer {} has the unknown media type {media_type:?}",
                    l.digest()
                ))
            })?;
            layers.push(LayerInfo {
                digest: descriptor_digest(l)?,
                size: l.size(),
                media_type,
                compression,
            });
        }
        let run = run_config(&config);
        let platform = platform_of(&config);
        return Ok(Image {
            manifest_digest: digest,
            manifest_media_type: kind,
            config_digest,
            config_size: config_desc.size(),
            platform,
            layers,
            run,
        });
    }
    Err(Error::Manifest("indexes nest deeper than 4 levels".into()))
}

/// A manifest or config is read whole into memory: one that says it is
/// larger than any real one is refused before a byte of it is fetched.
fn check_doc_size(what: &str, digest: &Digest, size: u64) -> Result<(), Error> {
    if size > crate::MAX_DOC {
        return Err(Error::Manifest(format!(
            "the {what} {digest} is {size} bytes, more than the {} bytes builderd reads of one",
            crate::MAX_DOC
        )));
    }
    Ok(())
}

fn text(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).unwrap_or_default().to_string()
}

/// What the image runs, from an image config.
pub(crate) fn run_config(config: &Value) -> RunConfig {
    let list = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let cfg = config.get("config");
    let field = |name: &str| cfg.and_then(|c| c.get(name));
    RunConfig {
        entrypoint: list(field("Entrypoint")),
        cmd: list(field("Cmd")),
        env: list(field("Env")),
        working_dir: text(field("WorkingDir")),
        user: text(field("User")),
        exposed_ports: field("ExposedPorts")
            .and_then(Value::as_object)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default(),
        labels: field("Labels")
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The platform an image config says it is for.
pub(crate) fn platform_of(config: &Value) -> Platform {
    Platform {
        os: text(config.get("os")),
        architecture: text(config.get("architecture")),
        variant: config
            .get("variant")
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}
