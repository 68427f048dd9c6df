//! builderd-rootfs: what a build adds to a root filesystem so that it boots
//! as a microVM, by init strategy: DIRECT_EXEC (builderd-init, embedded in
//! this crate, and its run config under `/.builderd/`), SYSTEMD (a unit for
//! the app, systemd as PID 1), CUSTOM (the user's init script). It works on
//! the image writer's tree before the image is finished, and knows nothing
//! of registries or layers.

mod lookup;
mod run;
mod strategy;
mod systemd;

pub use builderd_init::RunConfig;
pub use run::{Overrides, ParseError};
pub use strategy::{install, kernel_cmdline, InitStrategy, Installed, Plan};

/// builderd-init, built static by this crate's build script.
pub static INIT: &[u8] = include_bytes!(env!("BUILDERD_INIT_PATH"));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Image(#[from] builderd_ext4::Error),
    #[error("{0}")]
    Invalid(String),
}
