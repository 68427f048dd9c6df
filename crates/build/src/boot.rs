//! What makes the rootfs boot: the init strategy and the app's run config,
//! the image's own with the request's overrides (as `docker run` applies
//! them).

use anyhow::{Context, Result};
use builderd_rootfs::{InitStrategy, Overrides, Plan, RunConfig};

use crate::request::{BootOptions, Init};

/// The plan for an image whose own run config is `image`.
pub fn plan(opts: &BootOptions, image: &builderd_oci::RunConfig) -> Result<Plan> {
    let overrides = Overrides {
        entrypoint: opts.entrypoint.clone(),
        cmd: opts.cmd.clone(),
        env: opts.env.clone(),
        working_dir: opts.working_dir.clone(),
        user: opts.user.clone(),
        hostname: opts.hostname.clone(),
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
    let strategy = match opts.init {
        Init::DirectExec => InitStrategy::DirectExec,
        Init::Systemd => InitStrategy::Systemd,
        Init::Custom => InitStrategy::Custom,
    };
    let custom_script = match (&opts.init_script, strategy) {
        (Some(path), InitStrategy::Custom) => {
            Some(std::fs::read(path).with_context(|| format!("--init-script {}", path.display()))?)
        }
        (Some(_), _) => anyhow::bail!("--init-script is for --init custom"),
        (None, _) => None,
    };
    Ok(Plan {
        strategy,
        run,
        custom_script,
        // Known after the flatten.
        regenerate_ssh_host_keys: false,
    })
}
