//! Sources that are projects, not images: a local directory (`dir:PATH`)
//! or a local Git repository at a ref (`git:PATH[#REF]`), built into an
//! image by the step engine (`buildah build`, with the isolation build
//! steps have: docs/steps.md) from the project's Containerfile, and handed
//! to the flatten as an OCI layout like any local image. docs/projects.md
//! says what is detected and what is not done yet.

mod detect;
mod fetch;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::event::Reporter;
use crate::request::{BuildRequest, DEFAULT_STEPS_DIR};

/// A project source, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Project {
    /// A directory, built as it is.
    Dir(PathBuf),
    /// A Git repository on this machine, checked out at `reference` (None:
    /// its HEAD).
    Git {
        repo: PathBuf,
        reference: Option<String>,
    },
}

impl Project {
    /// `source` as a project, if it names one (`dir:` or `git:`).
    pub fn parse(source: &str) -> Option<Result<Project>> {
        if let Some(path) = source.strip_prefix("dir:") {
            return Some(non_empty(path, source).map(|p| Project::Dir(p.into())));
        }
        let rest = source.strip_prefix("git:")?;
        let (repo, reference) = match rest.split_once('#') {
            Some((repo, r)) => (repo, Some(r)),
            None => (rest, None),
        };
        Some(non_empty(repo, source).and_then(|repo| {
            let reference = reference.map(fetch::check_ref).transpose()?;
            Ok(Project::Git {
                repo: repo.into(),
                reference,
            })
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
    pub commit: Option<String>,
    _dir: tempfile::TempDir,
}

/// Builds `project` as `req` says into an OCI layout.
pub fn build(project: &Project, req: &BuildRequest, reporter: &dyn Reporter) -> Result<Built> {
    let storage = req
        .steps
        .storage
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STEPS_DIR));
    std::fs::create_dir_all(&storage).with_context(|| format!("creating {}", storage.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("project-")
        .tempdir_in(&storage)
        .context("a directory for the project's build")?;
    let (context, commit) = match project {
        Project::Dir(path) => (absolute(path)?, None),
        Project::Git { repo, reference } => {
            let checkout = dir.path().join("src");
            let commit = fetch::checkout(&absolute(repo)?, reference.as_deref(), &checkout)?;
            (checkout, Some(commit))
        }
    };
    let context = match &req.project.context {
        Some(sub) => detect::subdirectory(&context, sub)?,
        None => context,
    };
    let containerfile = detect::containerfile(&context, req.project.dockerfile.as_deref())?;
    let layout = dir.path().join("layout");
    let tag = "built".to_string();
    crate::steps::build_containerfile(
        &crate::steps::ContainerfileBuild {
            context: &context,
            containerfile: &containerfile,
            build_args: &req.project.build_args,
            layout: &layout,
            tag: &tag,
            insecure: &req.registry.insecure,
        },
        &req.steps,
        &storage,
        reporter,
    )?;
    Ok(Built {
        layout,
        tag,
        commit,
        _dir: dir,
    })
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
                repo: "/src/repo".into(),
                reference: Some("v1.2".into())
            }
        );
        assert_eq!(
            Project::parse("git:repo").unwrap().unwrap(),
            Project::Git {
                repo: "repo".into(),
                reference: None
            }
        );
        assert!(Project::parse("dir:").unwrap().is_err());
        assert!(Project::parse("git:repo#--upload-pack=x").unwrap().is_err());
        assert!(Project::parse("oci:/x").is_none());
        assert!(Project::parse("alpine:3").is_none());
    }
}
