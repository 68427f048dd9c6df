//! Where a build's image comes from: a registry (resolved with the build's
//! own credentials, under the outbound policy; its layers downloading into
//! the blob cache in the background from then on), an OCI layout or an
//! archive (read in place), or a project built into a layout (`project`). The one place a source is resolved, for the
//! command line and the service's build processes alike.

use std::path::Path;
use std::sync::Arc;
use std::thread::Scope;

use anyhow::{Context, Result};
use builderd_oci::{
    docker_config_credentials, BlobCache, BlobStore, DockerArchive, Image, OciLayout, Outbound,
    Platform, Registry, Source,
};

use crate::event::{Event, Reporter, Resolved, ResolvedLayer, Stage};
use crate::project::{archive, Project};
use crate::pull::Downloads;
use crate::request::{BlobCacheChoice, BuildRequest};
use crate::tree_layer::TreeLayer;
use crate::SourceError;

/// Where the layer blobs come from.
pub enum Blobs<'scope> {
    /// An OCI layout or an archive, read in place.
    Local(Box<dyn BlobStore>),
    /// A registry, into the blob cache: downloading.
    Pull(Downloads<'scope>),
}

/// A source opened: its image, resolved, and where its blobs are.
pub struct Opened<'scope> {
    pub image: Image,
    pub blobs: Blobs<'scope>,
    /// The cache a registry build reads from, to drop a blob that fails
    /// its check.
    pub cache: Option<Arc<BlobCache>>,
    /// A `--no-cache` build's private blob directory, kept to the end.
    _scratch: Option<tempfile::TempDir>,
    /// A project's image, built for this build, kept to the end.
    _project: Option<crate::project::Built>,
    /// An archive's files with nothing to build: one more layer over the
    /// image.
    pub tree: Option<TreeLayer>,
    /// An archive source, as extracted.
    pub archive: Option<crate::report::ArchiveInfo>,
}

impl Opened<'_> {
    /// How many of the image's top layers the step engine built (a
    /// project's, over its last stage's base).
    pub fn built_layers(&self) -> usize {
        match &self._project {
            Some(p) => p.built_layers.min(self.image.layers.len()),
            None => 0,
        }
    }

    /// The Containerfile generated for a project without one.
    pub fn generated(&self) -> Option<crate::report::Generated> {
        self._project.as_ref().and_then(|p| p.generated.clone())
    }

    /// The commit a Git project was built from.
    pub fn commit(&self) -> Option<String> {
        self._project
            .as_ref()
            .and_then(|p| Some(p.fetched.as_ref()?.commit.clone()))
    }
}

/// Parses the request's source: a path given as one is refused with the
/// transport to write (a bare name that is a file or directory here was
/// meant as one, not as an image on Docker Hub).
pub fn parse(source: &str) -> Result<Source> {
    let parsed = Source::parse(source)?;
    if matches!(parsed, Source::Registry(_)) && Path::new(source).exists() {
        return Err(SourceError(builderd_oci::path_hint(source)).into());
    }
    Ok(parsed)
}

/// Resolves the source for `platform`; a registry's layers start
/// downloading on a thread of `scope`.
pub fn open<'scope, 'env>(
    scope: &'scope Scope<'scope, 'env>,
    req: &'env BuildRequest,
    platform: &Platform,
    reporter: &'env dyn Reporter,
) -> Result<Opened<'scope>> {
    if let Some(file) = archive::source_file(&req.source) {
        let unpacked = archive::unpack(file, req, reporter)?;
        let mut info = unpacked.info.clone();
        if !unpacked.runs(req) {
            crate::event::info(
                reporter,
                format!(
                    "nothing to build: no dependencies to install and no build script; the \
                     files go over {} at {} as one more layer",
                    unpacked.image, unpacked.plan.output_path
                ),
            );
            let mut opened = open_image(scope, req, &unpacked.image, platform, reporter)?;
            unpacked.configure(&mut opened.image.run);
            opened.tree = Some(TreeLayer::new(unpacked));
            opened.archive = Some(info);
            return Ok(opened);
        }
        let built = crate::project::build_archive(&unpacked, req, reporter)?;
        info.built = true;
        let mut opened = open_built(built, platform)?;
        opened.archive = Some(info);
        return Ok(opened);
    }
    if let Some(project) = Project::parse(&req.source) {
        return open_built(crate::project::build(&project?, req, reporter)?, platform);
    }
    open_image(scope, req, &req.source, platform, reporter)
}

/// A project's image, built into a layout.
fn open_built<'scope>(built: crate::project::Built, platform: &Platform) -> Result<Opened<'scope>> {
    let layout = OciLayout::open(&built.layout)?;
    let image = layout.resolve(Some(&built.tag), platform)?;
    Ok(Opened {
        _project: Some(built),
        ..local(Box::new(layout), image)
    })
}

fn local<'scope>(store: Box<dyn BlobStore>, image: Image) -> Opened<'scope> {
    Opened {
        image,
        blobs: Blobs::Local(store),
        cache: None,
        _scratch: None,
        _project: None,
        tree: None,
        archive: None,
    }
}

/// Resolves the image `source` names.
fn open_image<'scope, 'env>(
    scope: &'scope Scope<'scope, 'env>,
    req: &'env BuildRequest,
    source: &str,
    platform: &Platform,
    reporter: &'env dyn Reporter,
) -> Result<Opened<'scope>> {
    Ok(match parse(source)? {
        Source::OciLayout { dir, tag } => {
            let layout = OciLayout::open(&dir)?;
            let image = layout.resolve(tag.as_deref(), platform)?;
            local(Box::new(layout), image)
        }
        Source::OciArchive { file, tag } => {
            let layout = OciLayout::open_archive(&file)?;
            let image = layout.resolve(tag.as_deref(), platform)?;
            local(Box::new(layout), image)
        }
        Source::DockerArchive { file } => {
            let (archive, image) = DockerArchive::open(&file)?;
            local(Box::new(archive), image)
        }
        Source::Registry(r) => {
            let (cache, scratch) = blob_cache(&req.cache)?;
            let creds = match &req.credentials {
                Some(c) => Some(c.clone()),
                None if req.registry.docker_config => docker_config_credentials(&r.registry),
                None => None,
            };
            let outbound = if req.registry.public_only {
                Outbound::public_only("--allow-private-registries")
            } else {
                Outbound::any()
            };
            req.registry
                .retry
                .check()
                .map_err(|e| anyhow::anyhow!("the retry policy: {e}"))?;
            let registry = Registry::new(
                &r,
                creds,
                &req.registry.insecure,
                req.registry.retry.clone(),
                req.registry.stall_timeout,
                &outbound,
                Box::new(move |n| reporter.report(Event::Retry(crate::event::Retry::of(n)))),
            )?;
            let image = builderd_oci::resolve_remote(&registry, &cache, &r, platform)?;
            // Only the request's own image: an archive's runtime is not
            // what the service's artifact cache knows the build by.
            if req.hold_after_resolve && source == req.source {
                reporter.report(Event::Resolved(resolved(&image)));
                if !reporter.go_on() {
                    return Err(crate::error::Stopped.into());
                }
            }
            reporter.report(Event::Stage(Stage::Downloading));
            let cache = Arc::new(cache);
            // The layers download in the background from now on; the
            // flatten reads each one as it comes.
            let downloads = Downloads::start(
                scope,
                Arc::new(registry),
                cache.clone(),
                r.origin(),
                image.layers.clone(),
                reporter,
            );
            Opened {
                image,
                blobs: Blobs::Pull(downloads),
                cache: Some(cache),
                _scratch: scratch,
                _project: None,
                tree: None,
                archive: None,
            }
        }
    })
}

fn blob_cache(choice: &BlobCacheChoice) -> Result<(BlobCache, Option<tempfile::TempDir>)> {
    Ok(match choice {
        BlobCacheChoice::None => {
            let dir = tempfile::Builder::new()
                .prefix("builderd-blobs-")
                .tempdir()
                .context("a scratch blob directory")?;
            (BlobCache::open(dir.path())?, Some(dir))
        }
        BlobCacheChoice::Dir(d) => (BlobCache::open(d)?, None),
        BlobCacheChoice::Default => (BlobCache::open(&BlobCache::default_dir())?, None),
    })
}

fn resolved(image: &Image) -> Resolved {
    Resolved {
        manifest_digest: image.manifest_digest.to_string(),
        config_digest: image.config_digest.to_string(),
        config_size: image.config_size,
        layers: image
            .layers
            .iter()
            .map(|l| ResolvedLayer {
                digest: l.digest.to_string(),
                size: l.size,
            })
            .collect(),
    }
}
