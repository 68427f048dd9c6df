//! How a project source (`dir:PATH`, `git:PATH`, a Git address) is
//! fetched and built.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use builderd_build::{BuildSecret, BuildSystem, GitCredentials, GitOptions, ProjectOptions};

use crate::units::parse_bytes;

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
    /// An ARG of a project's Containerfile (repeat for more); the value may
    /// use {{.GitCommit}}, {{.GitShortCommit}}, {{.GitRef}}, {{.GitBranch}},
    /// {{.GitTag}} and {{.BuildID}}.
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    build_args: Vec<String>,
    /// A file `RUN --mount=type=secret,id=NAME` steps may read (repeat for
    /// more); it never reaches a layer, a log or the metadata.
    #[arg(long = "secret", value_name = "id=NAME,src=FILE", value_parser = BuildSecret::parse)]
    secrets: Vec<BuildSecret>,
    /// What builds a project: auto (its Containerfile, else its detected
    /// stack), docker (its Containerfile only), buildpack (its detected
    /// stack: Go, Python, Node, a static site) or script (its build.sh).
    #[arg(long, value_name = "SYSTEM", value_enum, default_value = "auto")]
    build_system: BuildSystemArg,
    /// The base images of detected stacks (JSON: {"node": {"18": "REF",
    /// "default": "REF"}, …}), over builderd's own table.
    #[arg(long, value_name = "FILE")]
    base_images: Option<PathBuf>,
    /// One base image for every stage of a generated Containerfile.
    #[arg(long, value_name = "REF")]
    base_image: Option<String>,
    /// Keep a detected stack's package downloads in cache mounts between
    /// builds (in the step engine's storage).
    #[arg(long)]
    cache_dependencies: bool,
    /// The Git server's user and password (HTTPS).
    #[arg(
        long,
        value_name = "USER:PASS",
        env = "BUILDERD_GIT_CREDS",
        hide_env_values = true,
        conflicts_with_all = ["git_token", "ssh_key"]
    )]
    git_creds: Option<String>,
    /// A token for the Git server (HTTPS; sent as x-access-token's
    /// password).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "BUILDERD_GIT_TOKEN",
        hide_env_values = true,
        conflicts_with = "ssh_key"
    )]
    git_token: Option<String>,
    /// A private key file for a git+ssh:// server.
    #[arg(long, value_name = "FILE", env = "BUILDERD_SSH_KEY_FILE")]
    ssh_key: Option<PathBuf>,
    /// The ssh servers' host keys (OpenSSH's known_hosts form); without
    /// it no ssh server is trusted unless --ssh-accept-new-host-keys.
    #[arg(long, value_name = "FILE")]
    ssh_known_hosts: Option<PathBuf>,
    /// Trust an ssh server's host key on first sight (for this build only).
    #[arg(long)]
    ssh_accept_new_host_keys: bool,
    /// Allow plain git+http:// and git:// to this host (loopback always
    /// may).
    #[arg(long, value_name = "HOST[:PORT]")]
    insecure_git_host: Vec<String>,
    /// The most time fetching the source (with its submodules) may take.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "10m")]
    git_timeout: Duration,
    /// The most bytes the source's files (with its submodules) may hold.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, default_value = "4G")]
    git_max_bytes: u64,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BuildSystemArg {
    Auto,
    Docker,
    Buildpack,
    Script,
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
            secrets: self.secrets.clone(),
            build_id: None,
            build_system: match self.build_system {
                BuildSystemArg::Auto => BuildSystem::Auto,
                BuildSystemArg::Docker => BuildSystem::Docker,
                BuildSystemArg::Buildpack => BuildSystem::Buildpack,
                BuildSystemArg::Script => BuildSystem::Script,
            },
            base_images: self.base_images.clone(),
            base_image: self.base_image.clone(),
            cache_dependencies: self.cache_dependencies,
            host_sources: true,
        })
    }

    /// How a Git source is fetched; `public_only` as for registries.
    pub fn git(&self, public_only: bool) -> GitOptions {
        GitOptions {
            insecure_hosts: self.insecure_git_host.clone(),
            public_only,
            known_hosts: self.ssh_known_hosts.clone(),
            accept_new_host_keys: self.ssh_accept_new_host_keys,
            timeout: self.git_timeout,
            max_bytes: self.git_max_bytes,
            ..GitOptions::default()
        }
    }

    /// The Git server's credentials, from the options or the environment.
    pub fn git_credentials(&self) -> Result<Option<GitCredentials>> {
        if let Some(c) = &self.git_creds {
            let (username, password) = c
                .split_once(':')
                .context("--git-creds (BUILDERD_GIT_CREDS) takes USER:PASS")?;
            return Ok(Some(GitCredentials::Basic {
                username: username.into(),
                password: password.into(),
            }));
        }
        if let Some(t) = &self.git_token {
            return Ok(Some(GitCredentials::Token(t.clone())));
        }
        if let Some(path) = &self.ssh_key {
            let key = std::fs::read_to_string(path)
                .with_context(|| format!("--ssh-key {}: cannot read it", path.display()))?;
            return Ok(Some(GitCredentials::SshKey(key)));
        }
        Ok(None)
    }
}
