//! The three init strategies and what each adds to the image.

use builderd_ext4::{Metadata, Target};
use builderd_init::{
    RunConfig, CUSTOM_INIT_PATH, INIT_PATH, RUN_CONFIG_PATH, SSH_HOST_KEYS_REMOVED,
};

use crate::lookup::{self, Kind};
use crate::{systemd, Error};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitStrategy {
    /// builderd-init as PID 1 runs the app.
    DirectExec,
    /// systemd as PID 1 runs a generated unit for the app.
    Systemd,
    /// The user's script as PID 1.
    Custom,
}

impl InitStrategy {
    /// The API's enum name.
    pub fn enum_name(self) -> &'static str {
        match self {
            InitStrategy::DirectExec => "INIT_STRATEGY_DIRECT_EXEC",
            InitStrategy::Systemd => "INIT_STRATEGY_SYSTEMD",
            InitStrategy::Custom => "INIT_STRATEGY_CUSTOM",
        }
    }
}

/// What to add.
pub struct Plan {
    pub strategy: InitStrategy,
    pub run: RunConfig,
    /// CUSTOM's script.
    pub custom_script: Option<Vec<u8>>,
    /// The build removed the image's SSH host keys: each VM makes its own
    /// at first boot (builderd-init, or a unit under systemd).
    pub regenerate_ssh_host_keys: bool,
}

/// What was added.
#[derive(Debug)]
pub struct Installed {
    /// The command line to boot the image as `/dev/vda`.
    pub kernel_cmdline: String,
    /// The init the kernel starts (in the image's tree).
    pub init: String,
    /// What the image will not do as it may be expected to.
    pub warnings: Vec<String>,
}

/// The command line that boots an image as `/dev/vda` with `init` as PID 1.
pub fn kernel_cmdline(init: &str) -> String {
    format!("console=ttyS0 reboot=k panic=1 root=/dev/vda rw init={init}")
}

fn add_file(
    w: &mut dyn Target,
    path: &str,
    mode: u16,
    data: &[u8],
    time: i64,
) -> Result<(), Error> {
    let mut f = w.file(path.as_bytes(), Metadata::root_owned(mode, time))?;
    f.write(data)?;
    f.finish()?;
    Ok(())
}

/// Adds the strategy's files to the image being written. With DIRECT_EXEC
/// everything added is under `/.builderd/`; the image's own files stay as
/// they are.
pub fn install(w: &mut dyn Target, plan: &Plan) -> Result<Installed, Error> {
    if w.entry(b".builderd")?.is_some() {
        return Err(Error::Invalid(
            "the image already has /.builderd, where builderd puts its init; rebuild the image without it".into(),
        ));
    }
    let time = w.content_time();
    let run_json = serde_json::to_vec_pretty(&plan.run).expect("a run config always serialises");
    w.mkdir(b".builderd", Metadata::root_owned(0o755, time))?;
    add_file(w, RUN_CONFIG_PATH, 0o644, &run_json, time)?;
    let mut warnings = Vec::new();
    let init = match plan.strategy {
        InitStrategy::DirectExec => {
            // A base image may have no command; it still converts, and the
            // init says so at boot.
            if plan.run.argv().is_empty() {
                warnings.push(
                    "the image has neither an entrypoint nor a cmd, so DIRECT_EXEC will have nothing to run at boot; give --cmd or --entrypoint".into(),
                );
            }
            add_file(w, INIT_PATH, 0o755, crate::INIT, time)?;
            if plan.regenerate_ssh_host_keys {
                add_file(w, SSH_HOST_KEYS_REMOVED, 0o644, b"", time)?;
            }
            INIT_PATH.to_string()
        }
        InitStrategy::Systemd => {
            // The init's report-exit helper tells the host the app's exit code.
            add_file(w, INIT_PATH, 0o755, crate::INIT, time)?;
            if plan.regenerate_ssh_host_keys {
                warnings.extend(systemd::install_ssh_keygen(w, time)?);
            }
            systemd::install(w, &plan.run, time)?
        }
        InitStrategy::Custom => {
            let Some(script) = &plan.custom_script else {
                return Err(Error::Invalid(
                    "the CUSTOM init strategy needs an init script (--init-script FILE)".into(),
                ));
            };
            check_interpreter(w, script)?;
            if plan.regenerate_ssh_host_keys {
                warnings.push("the image's SSH host keys were removed (hardening): the custom init must make new ones (ssh-keygen -A) before sshd starts".into());
            }
            add_file(w, CUSTOM_INIT_PATH, 0o755, script, time)?;
            CUSTOM_INIT_PATH.to_string()
        }
    };
    Ok(Installed {
        kernel_cmdline: kernel_cmdline(&init),
        init,
        warnings,
    })
}

/// A script's `#!` interpreter must be in the image, or the kernel cannot
/// start it as PID 1.
fn check_interpreter(w: &dyn Target, script: &[u8]) -> Result<(), Error> {
    if script.starts_with(b"\x7fELF") {
        return Ok(());
    }
    let Some(rest) = script.strip_prefix(b"#!") else {
        return Err(Error::Invalid(
            "the init script starts with neither #! nor an ELF header, so the kernel cannot run it"
                .into(),
        ));
    };
    let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let interpreter = line.split_whitespace().next().unwrap_or_default();
    match lookup::resolve(w, interpreter)? {
        Some((_, Kind::File)) => Ok(()),
        _ => Err(Error::Invalid(format!(
            "the init script's interpreter {interpreter:?} is not in the image"
        ))),
    }
}
