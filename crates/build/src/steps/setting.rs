//! What a build's steps are given besides their commands.

use std::path::Path;

use anyhow::Result;

use crate::event::Reporter;
use crate::report::Report;
use crate::request::BuildRequest;

/// Where a build's steps run and who hears of them.
pub struct Setting<'a> {
    /// The step engine's storage.
    pub storage: &'a Path,
    /// Times in what the steps made are no later than this (else the
    /// image's `created`, else 0).
    pub epoch: Option<i64>,
    pub reporter: &'a dyn Reporter,
    /// Builds a rootfs (the microVM sandbox boots the base as one).
    pub build_rootfs: &'a dyn Fn(&BuildRequest) -> Result<Report>,
}
