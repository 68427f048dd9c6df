//! The options of `builderd build` that make the rootfs boot: the init
//! strategy, the app's run config overrides, compression and a size limit.

use anyhow::{Context, Result};
use builderd_rootfs::{InitStrategy, Overrides, Plan, RunConfig};

use crate::units::parse_bytes;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Init {
    /// builderd-init as PID 1 runs the image's entrypoint.
    DirectExec,
    /// systemd as PID 1 runs a generated unit for the app.
    Systemd,
    /// Your own script (--init-script) as PID 1.
    Custom,
}

/// The compressed copy written beside the image.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CopyFormat {
    None,
    Gzip,
    Zstd,
}

impl CopyFormat {
    pub fn name(self) -> &'static str {
        match self {
            CopyFormat::None => "none",
            CopyFormat::Gzip => "gzip",
            CopyFormat::Zstd => "zstd",
        }
    }
}

#[derive(clap::Args)]
pub struct BootArgs {
    /// What runs as PID 1.
    #[arg(long, value_enum, default_value = "direct-exec")]
    init: Init,
    /// The CUSTOM strategy's init script, installed at /.builderd/init-custom.
    #[arg(long, value_name = "FILE")]
    init_script: Option<std::path::PathBuf>,
    /// Replace the image's entrypoint: a JSON array (["/bin/sh","-c","…"])
    /// or one word. As with docker run, this also drops the image's cmd.
    #[arg(long, value_name = "CMD")]
    entrypoint: Option<String>,
    /// Replace the image's cmd: a JSON array or one word.
    #[arg(long, value_name = "CMD")]
    cmd: Option<String>,
    /// Set an environment variable for the app (repeatable).
    #[arg(long, value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// The app's working directory.
    #[arg(long, value_name = "DIR")]
    workdir: Option<String>,
    /// The app's user: name, uid, name:group or uid:gid (from the image's
    /// /etc/passwd and /etc/group).
    #[arg(long)]
    user: Option<String>,
    /// The VM's hostname (default: builderd).
    #[arg(long)]
    hostname: Option<String>,
    /// Also write a compressed copy beside the image (OUT.gz or OUT.zst).
    #[arg(long, value_enum, default_value = "none")]
    pub compression: CopyFormat,
    /// Fail the build when the image is larger than this (e.g. 2G); checked
    /// as the content is written, so content past it never takes the disk.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub size_limit: Option<u64>,
    /// What the size limit is called where it was set (the service names
    /// its build config's field).
    #[arg(long, hide = true, default_value = "--size-limit")]
    pub size_limit_name: String,
    /// What is left of the tenant's storage quota (the service's bound).
    #[arg(long, hide = true, value_name = "BYTES")]
    pub storage_left: Option<u64>,
}

impl BootArgs {
    /// What to add to an image whose own run config is `image`.
    pub fn plan(&self, image: &builderd_oci::RunConfig) -> Result<Plan> {
        let parse = |o: &Option<String>| o.as_deref().map(Overrides::parse_command).transpose();
        let overrides = Overrides {
            entrypoint: parse(&self.entrypoint)?,
            cmd: parse(&self.cmd)?,
            env: self.env.clone(),
            working_dir: self.workdir.clone(),
            user: self.user.clone(),
            hostname: self.hostname.clone(),
        };
        let run = overrides.apply(RunConfig {
            entrypoint: image.entrypoint.clone(),
            cmd: image.cmd.clone(),
            env: image.env.clone(),
            working_dir: image.working_dir.clone(),
            user: image.user.clone(),
            // Written out, so the metadata says what the VM will be called.
            hostname: "builderd".into(),
        })?;
        let strategy = match self.init {
            Init::DirectExec => InitStrategy::DirectExec,
            Init::Systemd => InitStrategy::Systemd,
            Init::Custom => InitStrategy::Custom,
        };
        let custom_script = match (&self.init_script, strategy) {
            (Some(path), InitStrategy::Custom) => Some(
                std::fs::read(path).with_context(|| format!("--init-script {}", path.display()))?,
            ),
            (Some(_), _) => anyhow::bail!("--init-script is for --init custom"),
            (None, _) => None,
        };
        Ok(Plan {
            strategy,
            run,
            custom_script,
        })
    }
}
