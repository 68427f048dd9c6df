//! How a project source (`dir:PATH`, `git:PATH[#REF]`) is built.

use anyhow::Result;
use builderd_build::ProjectOptions;

#[derive(clap::Args)]
pub struct ProjectArgs {
    /// A project's Containerfile, relative to its context (default:
    /// Dockerfile, else Containerfile).
    #[arg(long, value_name = "PATH")]
    dockerfile: Option<String>,
    /// The directory of the project to build in (a monorepo's app;
    /// default: its root).
    #[arg(long, value_name = "DIR")]
    context: Option<String>,
    /// An ARG of a project's Containerfile (repeat for more).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    build_args: Vec<String>,
}

impl ProjectArgs {
    pub fn options(&self) -> Result<ProjectOptions> {
        let build_args = self
            .build_args
            .iter()
            .map(|a| match a.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => Err(anyhow::anyhow!("--build-arg {a:?}: give KEY=VALUE")),
            })
            .collect::<Result<_>>()?;
        Ok(ProjectOptions {
            dockerfile: self.dockerfile.clone(),
            context: self.context.clone(),
            build_args,
        })
    }
}
