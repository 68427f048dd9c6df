//! Sources that are projects, not images: a local directory (`dir:PATH`)
//! or a Git repository at a ref (`git+https://`, `git+ssh://`,
//! `git+http://`, `git://` addresses, or `git:PATH` on this machine, each
//! with `#REF`), built into an image by the step engine (`buildah build`, with the isolation build
//! steps have: docs/steps.md) from the project's Containerfile, and handed
//! to the flatten as an OCI layout like any local image. docs/projects.md
//! says what is detected and what is not done yet.

mod access;
pub mod archive;
mod archive_fetch;
mod archive_plan;
mod base_images;
mod detect;
mod fetch;
mod git;
mod remote;
mod stack;
mod templates;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::event::{Event, Reporter, Stage};
use crate::request::{BuildRequest, DEFAULT_STEPS_DIR};
pub use access::private_file;
pub use fetch::{Fetched, Origin};
pub use remote::redact as redact_url;
use remote::Remote;

/// A project source, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Project {
    /// A directory, built as it is.
    Dir(PathBuf),
    /// A Git repository, checked out at `reference` (None: its HEAD).
    Git {
        origin: Origin,
        reference: Option<String>,
    },
}

impl Project {
    /// `source` as a project, if it names one (`dir:`, `git:` or a Git
    /// address).
    pub fn parse(source: &str) -> Option<Result<Project>> {
        if let Some(path) = source.strip_prefix("dir:") {
            return Some(non_empty(path, source).map(|p| Project::Dir(p.into())));
        }
        let (address, reference) = match source.split_once('#') {
            Some((a, r)) => (a, Some(r)),
            None => (source, None),
        };
        let origin = match Remote::parse_source(address) {
            Some(remote) => remote.map(Origin::Remote),
            None => {
                let path = address.strip_prefix("git:")?;
                non_empty(path, source).map(|p| Origin::Local(p.into()))
            }
        };
        Some(origin.and_then(|origin| {
            let reference = reference.map(fetch::check_ref).transpose()?;
            Ok(Project::Git { origin, reference })
        }))
    }
}

fn non_empty<'a>(path: &'a str, source: &str) -> Result<&'a str> {
    if path.is_empty() {
        anyhow::bail!("{source:?} names no path");
    }
    Ok(path)
}

/// An image built from a project: an OCI layout in a directory of its own
/// (removed when this is dropped), and the commit it was built from.
pub struct Built {
    pub layout: PathBuf,
    pub tag: String,
    pub fetched: Option<Fetched>,
    pub generated: Option<crate::report::Generated>,
    /// How many of the image's top layers the build made.
    pub built_layers: usize,
    _dir: tempfile::TempDir,
}

/// Builds `project` as `req` says into an OCI layout.
pub fn build(project: &Project, req: &BuildRequest, reporter: &dyn Reporter) -> Result<Built> {
    let (storage, dir) = build_dir(req)?;
    let (context, fetched) = match project {
        Project::Dir(path) => (absolute(path)?, None),
        Project::Git { origin, reference } => {
            reporter.report(Event::Stage(Stage::Downloading));
            let origin = match origin {
                Origin::Local(path) => Origin::Local(absolute(path)?),
                remote => remote.clone(),
            };
            let src = dir.path().join("src");
            let fetched = fetch::checkout(
                &fetch::Checkout {
                    origin: &origin,
                    reference: reference.as_deref(),
                    dest: &src,
                    private: &dir.path().join("git"),
                    sources: &storage.join("sources"),
                    opts: &req.git,
                    credentials: req.git_credentials.as_ref(),
                },
                reporter,
            )?;
            (src.canonicalize()?, Some(fetched))
        }
    };
    reporter.report(Event::Stage(Stage::Building));
    let context = match &req.project.context {
        Some(sub) => detect::subdirectory(&context, sub)?,
        None => context,
    };
    let (containerfile, generated) = what_builds(&context, &req.project, dir.path(), reporter)?;
    let layer_cache = cache_key(&project_name(project), &req.project);
    let building = Building {
        context: &context,
        containerfile: &containerfile,
        fetched: fetched.as_ref(),
        layer_cache: &layer_cache,
    };
    let built_layers = build_in(&building, &storage, dir.path(), req, reporter)?;
    Ok(Built {
        layout: dir.path().join("layout"),
        tag: BUILT_TAG.to_string(),
        built_layers,
        fetched,
        generated,
        _dir: dir,
    })
}

/// Builds an extracted archive that has something to run, by the
/// Containerfile its plan makes, on its runtime's image.
pub fn build_archive(
    unpacked: &archive::Unpacked,
    req: &BuildRequest,
    reporter: &dyn Reporter,
) -> Result<Built> {
    // Only an archive with nothing to run is left unextracted.
    let archive::Files::Extracted(context) = &unpacked.files else {
        anyhow::bail!("an archive that was not extracted has nothing to build");
    };
    let (storage, dir) = build_dir(req)?;
    reporter.report(Event::Stage(Stage::Building));
    let generated = unpacked.generated();
    crate::event::info(
        reporter,
        format!(
            "building on {} ({}): builderd generated this Containerfile:",
            unpacked.image, unpacked.plan.runtime
        ),
    );
    for line in generated.containerfile.lines() {
        crate::event::info(reporter, format!("  {line}"));
    }
    let containerfile = dir.path().join("Containerfile.generated");
    std::fs::write(&containerfile, &generated.containerfile)
        .with_context(|| format!("writing {}", containerfile.display()))?;
    // One layer cache for the archives of a namespace built the same way.
    let name = format!(
        "archive:{}:{}",
        unpacked.plan.runtime, unpacked.plan.output_path
    );
    let building = Building {
        context,
        containerfile: &containerfile,
        fetched: None,
        layer_cache: &cache_key(&name, &req.project),
    };
    let built_layers = build_in(&building, &storage, dir.path(), req, reporter)?;
    Ok(Built {
        layout: dir.path().join("layout"),
        tag: BUILT_TAG.to_string(),
        built_layers,
        fetched: None,
        generated: Some(generated),
        _dir: dir,
    })
}

/// The tag a project's image is built under in its layout.
const BUILT_TAG: &str = "built";

/// The step engine's storage, and a directory of this build's own in it.
fn build_dir(req: &BuildRequest) -> Result<(PathBuf, tempfile::TempDir)> {
    let storage = req
        .steps
        .storage
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STEPS_DIR));
    templates::check(&req.project.build_args)?;
    std::fs::create_dir_all(&storage).with_context(|| format!("creating {}", storage.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("project-")
        .tempdir_in(&storage)
        .context("a directory for the project's build")?;
    Ok((storage, dir))
}

/// What a project build needs besides the request.
struct Building<'a> {
    context: &'a Path,
    containerfile: &'a Path,
    fetched: Option<&'a Fetched>,
    /// The project's name in its namespace's layer cache.
    layer_cache: &'a str,
}

/// Runs the step engine's build of `b` into `private/layout`; answers how
/// many of the image's top layers it made.
fn build_in(
    b: &Building<'_>,
    storage: &Path,
    private: &Path,
    req: &BuildRequest,
    reporter: &dyn Reporter,
) -> Result<usize> {
    let build_args = templates::expand(
        &req.project.build_args,
        b.fetched,
        req.project.build_id.as_deref().unwrap_or("local"),
    )?;
    let layer_cache = req.project.cache_dependencies.then_some(b.layer_cache);
    // A Git build the service may answer from its cache: of this commit,
    // with these expanded args, this much of the request.
    let identity = match (b.fetched, req.hold_after_resolve) {
        (Some(fetched), true) => Some(
            serde_json::json!({
                "source": b.layer_cache,
                "commit": fetched.commit,
                "build_args": build_args,
                "build_system": format!("{:?}", req.project.build_system),
                "network": format!("{:?}", req.steps.network),
            })
            .to_string(),
        ),
        _ => None,
    };
    crate::steps::build_containerfile(
        &crate::steps::ContainerfileBuild {
            context: b.context,
            containerfile: b.containerfile,
            build_args: &build_args,
            layout: &private.join("layout"),
            tag: BUILT_TAG,
            insecure: &req.registry.insecure,
            secrets: &req.project.secrets,
            layer_cache,
            namespace: &req.git.cache_namespace,
            host_sources: req.project.host_sources,
            hold: identity.as_deref(),
            public_only: req.registry.public_only,
        },
        &req.steps,
        storage,
        reporter,
    )
}

/// A project's name for its layer cache: its repository or directory.
fn project_name(project: &Project) -> String {
    match project {
        Project::Dir(path) => format!("dir:{}", path.display()),
        Project::Git {
            origin: Origin::Local(path),
            ..
        } => format!("git:{}", path.display()),
        Project::Git {
            origin: Origin::Remote(remote),
            ..
        } => remote.cache_name(),
    }
}

/// The name a project's layer cache is kept under in its namespace: its
/// name (repository, directory or archive kind), subdirectory and
/// Containerfile, whatever the ref.
fn cache_key(name: &str, opts: &crate::request::ProjectOptions) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        name,
        opts.context.as_deref().unwrap_or(""),
        opts.dockerfile.as_deref().unwrap_or(""),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    format!("{:x}", h.finalize())[..32].to_string()
}

/// The Containerfile that builds the project at `context`: its own, or
/// one generated for its stack (written to `private`, outside the
/// context, told to `reporter` line by line and kept for the metadata).
fn what_builds(
    context: &Path,
    opts: &crate::request::ProjectOptions,
    private: &Path,
    reporter: &dyn Reporter,
) -> Result<(PathBuf, Option<crate::report::Generated>)> {
    use crate::request::BuildSystem;
    let own = match opts.build_system {
        BuildSystem::Auto | BuildSystem::Docker => {
            detect::containerfile(context, opts.dockerfile.as_deref())
        }
        BuildSystem::Buildpack | BuildSystem::Script => Err(anyhow::anyhow!("not looked for")),
    };
    match (own, opts.build_system) {
        (Ok(path), _) => return Ok((path, None)),
        (Err(e), BuildSystem::Docker) => return Err(e),
        (Err(e), _) if opts.dockerfile.is_some() => return Err(e),
        _ => {}
    }
    let want = match opts.build_system {
        BuildSystem::Script => stack::Want::Script,
        _ => stack::Want::Auto,
    };
    let found = stack::detect(context, want)?;
    let bases =
        base_images::BaseImages::load(opts.base_images.as_deref(), opts.base_image.as_deref())?;
    let text = stack::containerfile(&found, &bases, opts.cache_dependencies)?;
    crate::event::info(
        reporter,
        format!(
            "no Containerfile: a {} project{}; builderd generated this one:",
            found.name(),
            found
                .version()
                .map(|v| format!(" ({v})"))
                .unwrap_or_default()
        ),
    );
    for line in text.lines() {
        crate::event::info(reporter, format!("  {line}"));
    }
    let path = private.join("Containerfile.generated");
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    Ok((
        path,
        Some(crate::report::Generated {
            stack: found.name().to_string(),
            version: found.version().map(str::to_string),
            containerfile: text,
        }),
    ))
}

/// Refuses build args that name something no build fills in (before
/// anything runs).
pub fn check_build_args(args: &[(String, String)]) -> Result<()> {
    templates::check(args)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    path.canonicalize()
        .with_context(|| format!("the project {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_sources_are_told_from_images() {
        assert_eq!(
            Project::parse("dir:/src/app").unwrap().unwrap(),
            Project::Dir("/src/app".into())
        );
        assert_eq!(
            Project::parse("git:/src/repo#v1.2").unwrap().unwrap(),
            Project::Git {
                origin: Origin::Local("/src/repo".into()),
                reference: Some("v1.2".into())
            }
        );
        assert_eq!(
            Project::parse("git:repo").unwrap().unwrap(),
            Project::Git {
                origin: Origin::Local("repo".into()),
                reference: None
            }
        );
        match Project::parse("git+https://h/org/app.git#refs/pull/7/head") {
            Some(Ok(Project::Git {
                origin: Origin::Remote(r),
                reference: Some(reference),
            })) => {
                assert_eq!(r.to_string(), "https://h/org/app.git");
                assert_eq!(reference, "refs/pull/7/head");
            }
            other => panic!("{other:?}"),
        }
        assert!(Project::parse("git://127.0.0.1/r.git").unwrap().is_ok());
        assert!(Project::parse("dir:").unwrap().is_err());
        assert!(Project::parse("git:repo#--upload-pack=x").unwrap().is_err());
        assert!(Project::parse("oci:/x").is_none());
        assert!(Project::parse("alpine:3").is_none());
    }
}
