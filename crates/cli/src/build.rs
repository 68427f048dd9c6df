//! `builderd build SOURCE -o OUT.ext4`: the arguments become a
//! `builderd_build::BuildRequest` (or `--request FILE` is one, as the service
//! writes it), the build runs in the library, and its events are drawn as
//! bars and lines for a person or printed as JSON lines for a program.

use std::path::PathBuf;

use anyhow::{Context, Result};
use builderd_build::{BlobCacheChoice, BuildRequest, Event, RegistryOptions};
use builderd_oci::Credentials;

use crate::archive_args::ArchiveArgs;
use crate::boot_args::BootArgs;
use crate::ext4_args::Ext4Args;
use crate::policy_args::PolicyArgs;
use crate::project_args::ProjectArgs;
use crate::reporters::{JsonLines, Terminal};
use crate::retry_args::RetryArgs;
use crate::steps_args::StepsArgs;
use crate::units::{count, human};

#[derive(clap::Args)]
pub struct Args {
    /// The image: docker://REF or a bare REF (alpine means
    /// docker.io/library/alpine:latest; tags and @sha256: digests),
    /// oci:DIR[:TAG] (an OCI image layout), oci-archive:FILE[:TAG] (a tar of
    /// one) or docker-archive:FILE (`docker save` output); or a project
    /// built by its Containerfile: dir:PATH (a directory), or a Git
    /// repository at #REF (a branch, tag, commit or full ref; default its
    /// HEAD): git+https://HOST/PATH, git+ssh://[USER@]HOST/PATH,
    /// git+http:// and git:// (loopback or --insecure-git-host), git:PATH
    /// (on this machine); or an archive built on a runtime's image:
    /// archive:FILE (zip, tar, tar.gz, tar.xz, tar.zst) or
    /// archive:https://HOST/PATH[#sha256=HEX].
    #[arg(required_unless_present = "request")]
    source: Option<String>,
    /// The image file to write; its metadata goes to OUT.json.
    #[arg(short, long, required_unless_present = "request")]
    output: Option<PathBuf>,
    /// Run the build a JSON BuildRequest describes (what the service writes
    /// for each build; the other options do not apply).
    #[arg(long, value_name = "FILE", conflicts_with = "source")]
    request: Option<PathBuf>,
    /// The platform to pick from a multi-platform image (os/arch[/variant]);
    /// default: this machine's.
    #[arg(long)]
    platform: Option<String>,
    /// Registry credentials (otherwise ~/.docker/config.json's, if any).
    #[arg(
        long,
        value_name = "USER:PASS",
        env = "BUILDERD_CREDS",
        hide_env_values = true
    )]
    creds: Option<String>,
    /// Never read ~/.docker/config.json.
    #[arg(long)]
    no_docker_config: bool,
    /// How to report: text for a person, json lines on stderr for a program.
    #[arg(long, value_enum, default_value = "text")]
    events: EventsFormat,
    /// Allow plain HTTP to this registry (loopback registries always may).
    #[arg(long, value_name = "HOST[:PORT]")]
    insecure_registry: Vec<String>,
    /// Connect to public addresses only: no loopback, private, link-local or
    /// other special-purpose address, for the registry, its token realm and
    /// every redirect, and for a Git source and its submodules (the
    /// service's builds run so, unless its operator allows private ones).
    #[arg(long)]
    public_only: bool,
    /// The blob cache, shared by all builds.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Neither read nor write the blob cache.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
    #[command(flatten)]
    retry: RetryArgs,
    #[command(flatten)]
    ext4: Ext4Args,
    #[command(flatten)]
    boot: BootArgs,
    #[command(flatten)]
    steps: StepsArgs,
    #[command(flatten)]
    project: ProjectArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    archive: ArchiveArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventsFormat {
    Text,
    Json,
}

impl Args {
    /// The request these arguments describe.
    fn request(&self) -> Result<BuildRequest> {
        let credentials = self
            .creds
            .as_deref()
            .map(|c| {
                let (username, password) = c.split_once(':').context("--creds takes USER:PASS")?;
                Ok::<_, anyhow::Error>(Credentials {
                    username: username.into(),
                    password: password.into(),
                })
            })
            .transpose()?;
        if let Some(path) = &self.request {
            let text = std::fs::read(path)
                .with_context(|| format!("--request {}: cannot read it", path.display()))?;
            let mut req: BuildRequest = serde_json::from_slice(&text)
                .with_context(|| format!("--request {}: not a build request", path.display()))?;
            req.credentials = credentials;
            req.git_credentials = self.project.git_credentials()?;
            return Ok(req);
        }
        Ok(BuildRequest {
            source: self.source.clone().expect("clap requires it"),
            output: self.output.clone().expect("clap requires it"),
            platform: self.platform.clone(),
            registry: RegistryOptions {
                insecure: self.insecure_registry.clone(),
                public_only: self.public_only,
                docker_config: !self.no_docker_config,
                retry: self.retry.policy()?,
                stall_timeout: self.retry.stall_timeout(),
            },
            cache: match (&self.cache_dir, self.no_cache) {
                (_, true) => BlobCacheChoice::None,
                (Some(d), false) => BlobCacheChoice::Dir(d.clone()),
                (None, false) => BlobCacheChoice::Default,
            },
            ext4: self.ext4.request()?,
            boot: self.boot.options()?,
            hold_after_resolve: false,
            steps: self.steps.steps().map_err(anyhow::Error::msg)?,
            project: self.project.options()?,
            git: self.project.git(self.public_only),
            policy: self.policy.options(),
            layers: self.policy.layers(self.cache_dir.as_deref()),
            archive: self.archive.options(self.public_only),
            credentials,
            git_credentials: self.project.git_credentials()?,
        })
    }
}

pub fn run(args: Args) -> Result<std::process::ExitCode> {
    match args.events {
        EventsFormat::Text => {
            let req = args.request()?;
            let report = builderd_build::build(&req, &Terminal::new())?;
            println!(
                "wrote {}: {}, {} ({} masked by upper layers), {} of file data; image {} ({} allocated); {:.2} s",
                req.output.display(),
                count(report.layers.len() as u64, "layer"),
                count(report.flatten.entries_written, "entry"),
                report.flatten.entries_masked,
                human(report.image.file_data_bytes),
                human(report.image.size_bytes),
                human(report.image.allocated_bytes),
                report.timings_ms.total as f64 / 1000.0
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        // For a program (the service): every outcome is an event, the
        // failure last; the process's own usage just before it.
        EventsFormat::Json => {
            let reporter = JsonLines::new();
            let result = args
                .request()
                .map_err(|e| builderd_build::Error::of(&e))
                .and_then(|req| builderd_build::build(&req, &reporter));
            reporter.report_usage();
            match result {
                Ok(_) => Ok(std::process::ExitCode::SUCCESS),
                Err(e) => {
                    builderd_build::Reporter::report(
                        &reporter,
                        Event::Error(builderd_build::Failure {
                            message: builderd_build::bounded(&e.message).into_owned(),
                            category: e.category,
                            temporary: e.temporary,
                            network: e.network,
                        }),
                    );
                    Ok(std::process::ExitCode::FAILURE)
                }
            }
        }
    }
}
