//! The docker strategy's image options (docs/docker-strategy.md): what the
//! flatten leaves out of the image or changes in it, and whether the
//! image's layers are kept.

use std::path::PathBuf;

use builderd_build::{LayerOptions, PolicyOptions};

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
    /// Keep the image's layers: each layer a read-only disk of its own
    /// (OUT.layer-N.ext4, shared through the layer store by every build
    /// that uses it), and OUT a small top disk the init mounts them under
    /// as an overlay.
    #[arg(long)]
    preserve_layers: bool,
    /// Where kept layers' disks are stored [default: layers/ in the cache
    /// directory].
    #[arg(long, value_name = "DIR", requires = "preserve_layers")]
    layer_store: Option<PathBuf>,
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

    /// `cache_dir` holds the store unless one is given.
    pub fn layers(&self, cache_dir: Option<&std::path::Path>) -> LayerOptions {
        LayerOptions {
            preserve: self.preserve_layers,
            store: self
                .layer_store
                .clone()
                .or_else(|| cache_dir.map(|d| d.join("layers"))),
        }
    }
}
