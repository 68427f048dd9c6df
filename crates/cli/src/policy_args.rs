//! The docker strategy's image options (docs/docker-strategy.md): what the
//! flatten leaves out of the image or changes in it.

use std::path::PathBuf;

use builderd_build::PolicyOptions;

#[derive(clap::Args)]
pub struct PolicyArgs {
    /// Leave out package caches and lists, language caches, /tmp and
    /// /var/tmp contents, docs (never licence files), man and info pages,
    /// locales of other languages than the image's environment names, and
    /// logs.
    #[arg(long)]
    optimize: bool,
    /// Remove development packages (headers, static libraries, debug
    /// symbols, compilers, build tools) that no kept package needs, by the
    /// image's dpkg or apk database, which is rewritten to match.
    #[arg(long)]
    remove_dev_packages: bool,
    /// Leave the image unhardened: keep its SSH host keys, machine-id,
    /// shell histories, credential files and world-writable modes.
    #[arg(long)]
    no_harden: bool,
    /// A hardening policy (JSON: strip_setuid, allow_setuid, remove,
    /// modes).
    #[arg(long, value_name = "FILE", conflicts_with = "no_harden")]
    hardening_policy: Option<PathBuf>,
}

impl PolicyArgs {
    pub fn options(&self) -> PolicyOptions {
        PolicyOptions {
            optimize_for_size: self.optimize,
            remove_dev_packages: self.remove_dev_packages,
            harden: !self.no_harden,
            hardening_policy: self.hardening_policy.clone(),
        }
    }
}
