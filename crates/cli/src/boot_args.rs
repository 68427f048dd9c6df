//! The options of `builderd build` that make the rootfs boot: the init
//! strategy, the app's run config overrides, compression and a size limit.

use anyhow::{Context, Result};
use builderd_build::BootOptions;
use builderd_rootfs::Overrides;

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
    /// The request's boot options (a command given as JSON or one word).
    pub fn options(&self) -> Result<BootOptions> {
        let parse = |o: &Option<String>| o.as_deref().map(Overrides::parse_command).transpose();
        Ok(BootOptions {
            init: match self.init {
                Init::DirectExec => builderd_build::Init::DirectExec,
                Init::Systemd => builderd_build::Init::Systemd,
                Init::Custom => builderd_build::Init::Custom,
            },
            init_script: self.init_script.clone(),
            entrypoint: parse(&self.entrypoint).context("--entrypoint")?,
            cmd: parse(&self.cmd).context("--cmd")?,
            env: self.env.clone(),
            working_dir: self.workdir.clone(),
            user: self.user.clone(),
            hostname: self.hostname.clone(),
            compression: match self.compression {
                CopyFormat::None => builderd_build::CopyFormat::None,
                CopyFormat::Gzip => builderd_build::CopyFormat::Gzip,
                CopyFormat::Zstd => builderd_build::CopyFormat::Zstd,
            },
            size_limit: self.size_limit,
            size_limit_name: self.size_limit_name.clone(),
            storage_left: self.storage_left,
        })
    }
}
