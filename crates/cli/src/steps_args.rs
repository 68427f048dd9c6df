//! The build-step options of `builderd build`: commands to run in the image
//! before it is written, and what they may use.

use std::path::PathBuf;
use std::time::Duration;

use builderd_build::{Sandbox, StepLimits, StepNetwork, Steps};

use crate::units::parse_bytes;

#[derive(clap::Args)]
pub struct StepsArgs {
    /// Run CMD in the image with /bin/sh -c before it is written (repeat
    /// for more, run in order; the first that fails ends the build). Each
    /// runs isolated: its own namespaces, root only inside a user namespace,
    /// no network unless --network egress. Needs buildah and runc.
    #[arg(long = "run", value_name = "CMD")]
    commands: Vec<String>,
    /// USER[:GROUP] the commands run as (default: the image's USER).
    #[arg(long, value_name = "USER", requires = "commands")]
    run_as: Option<String>,
    /// Memory for all the commands, or a project's build (default 2G).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    memory: Option<u64>,
    /// CPUs' worth of time for them (default 1).
    #[arg(long, value_name = "N")]
    cpus: Option<f64>,
    /// Processes and threads at once (default 1024).
    #[arg(long, value_name = "N")]
    pids: Option<u64>,
    /// Wall time for all of them (default 30m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    steps_timeout: Option<Duration>,
    /// Keep DIR of the image (absolute) from build to build in the step
    /// engine's storage, outside the image: a package manager's download
    /// cache, say (repeat for more).
    #[arg(long = "cache-mount", value_name = "DIR", requires = "commands")]
    cache_dirs: Vec<String>,
    /// What isolates the commands: oci (containers: buildah and runc, a
    /// user namespace; the default) or microvm (the image booted in a QEMU
    /// microVM, KVM when it works, else TCG; no network).
    #[arg(long, value_name = "SANDBOX", value_enum, requires = "commands")]
    sandbox: Option<SandboxArg>,
    /// What the commands' network reaches: none (the default), or egress:
    /// public addresses through NAT, never loopback, private, link-local
    /// or the host's own addresses. Needs nftables.
    #[arg(long, value_name = "NETWORK", value_enum)]
    network: Option<NetworkArg>,
    /// Where the step engine keeps its storage (default:
    /// /var/lib/builderd/steps); others must be able to search each
    /// directory above it (o+x), as the steps' root is another user.
    #[arg(long, value_name = "DIR")]
    steps_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SandboxArg {
    Oci,
    Microvm,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum NetworkArg {
    None,
    Egress,
}

impl StepsArgs {
    pub fn steps(&self) -> Result<Steps, String> {
        let defaults = StepLimits::default();
        let cpus = self.cpus.unwrap_or(defaults.cpus);
        if !(cpus > 0.0 && cpus <= 1024.0) {
            return Err(format!("--cpus {cpus}: give a number above 0"));
        }
        Ok(Steps {
            commands: self.commands.clone(),
            run_as: self.run_as.clone(),
            cache_dirs: self.cache_dirs.clone(),
            limits: StepLimits {
                memory_bytes: self.memory.unwrap_or(defaults.memory_bytes),
                cpus,
                pids: self.pids.unwrap_or(defaults.pids),
                timeout: self.steps_timeout.unwrap_or(defaults.timeout),
            },
            network: match self.network {
                None | Some(NetworkArg::None) => StepNetwork::None,
                Some(NetworkArg::Egress) => StepNetwork::Egress,
            },
            sandbox: match self.sandbox {
                None | Some(SandboxArg::Oci) => Sandbox::Oci,
                Some(SandboxArg::Microvm) => Sandbox::Microvm,
            },
            storage: self.steps_dir.clone(),
        })
    }
}
