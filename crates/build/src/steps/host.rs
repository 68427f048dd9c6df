//! What the host must have for build steps: each tool found before it is
//! needed, or an error that says what to install.

use std::process::{Command, Stdio};

use anyhow::Result;

/// `tool version_arg` runs; else an error naming the first of `packages`,
/// `what` it is for, and all the packages to install.
pub fn require(tool: &str, version_arg: &str, packages: &str, what: &str) -> Result<()> {
    let found = Command::new(tool)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !found.is_ok_and(|s| s.success()) {
        let first = packages.split_whitespace().next().unwrap_or(tool);
        anyhow::bail!("install {first} to {what} (Debian: apt-get install {packages})");
    }
    Ok(())
}
