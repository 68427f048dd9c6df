//! The docker strategy's image policy in a build (docs/docker-strategy.md):
//! made from the request, given the files of the final tree it asks for
//! before the flatten, told back what it did after.

use anyhow::{Context, Result};
use builderd_flatten::{read_files, Found, Layer};
use builderd_policy::{HardeningPolicy, Options, Policy, Report};
use sha2::{Digest as _, Sha256};

use crate::event::{self, Reporter};
use crate::request::PolicyOptions;
use crate::units::{count, human};

/// A database file read before the flatten is at most this large (dpkg's
/// status of a large image is a few MB).
const MAX_DATABASE_FILE: u64 = 64 << 20;
/// And all of them together.
const MAX_DATABASE_BYTES: u64 = 256 << 20;

/// Checks an operator's hardening policy file (`builderd serve` does at
/// start, so that a mistake shows then, not in every build).
pub fn check_hardening_policy(file: &std::path::Path) -> Result<()> {
    HardeningPolicy::load(file)?;
    Ok(())
}

/// The policy of a build, or None when it leaves the image as it is.
/// `env` is the app's environment (its languages stay).
pub fn new(opts: &PolicyOptions, env: &[String]) -> Result<Option<Policy>> {
    let harden = match (&opts.hardening_policy, opts.harden) {
        (Some(file), true) => Some(HardeningPolicy::load(file)?),
        (Some(_), false) => {
            anyhow::bail!("--hardening-policy is for hardening; it is off (--no-harden)")
        }
        (None, true) => Some(Default::default()),
        (None, false) => None,
    };
    let options = Options {
        optimize_for_size: opts.optimize_for_size,
        remove_dev_packages: opts.remove_dev_packages,
        harden,
    };
    Ok(options.any().then(|| Policy::new(options, env)))
}

/// What decides the policy's verdicts besides the files it reads: its
/// options, the operator's policy file as it is now, and the environment
/// (languages). A kept layer's disk is stored under it.
pub fn identity(opts: &PolicyOptions, env: &[String]) -> Result<String> {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&(
        opts.optimize_for_size,
        opts.remove_dev_packages,
        opts.harden,
        env,
    ))?);
    if let (Some(file), true) = (&opts.hardening_policy, opts.harden) {
        h.update(std::fs::read(file).with_context(|| format!("{}", file.display()))?);
    }
    Ok(crate::layer_store::hex(&h.finalize()))
}

/// Reads what the policy needs of the final tree (a package database),
/// before the flatten: the layers are read once more for it. Answers a
/// digest of what it read (empty when it read nothing).
pub fn read(
    policy: &mut Option<Policy>,
    layers: &[Layer<'_>],
    reporter: &dyn Reporter,
) -> Result<String, builderd_flatten::Error> {
    let Some(policy) = policy.as_mut().filter(|p| p.needs_files()) else {
        return Ok(String::new());
    };
    let found = read_files(
        layers,
        &Policy::wanted,
        &Policy::within,
        MAX_DATABASE_FILE,
        MAX_DATABASE_BYTES,
    )?;
    let mut h = Sha256::new();
    for (path, found) in &found {
        let (tag, bytes): (&[u8], &[u8]) = match found {
            Found::File(data) => (b"f", data),
            Found::LargeFile => (b"l", b""),
            Found::Symlink(target) => (b"s", target),
            Found::Other => (b"o", b""),
        };
        for part in [path.as_slice(), tag, bytes] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    let warnings = policy
        .read(&found)
        .map_err(|reason| builderd_flatten::Error::Invalid {
            layer: "the image's package database".into(),
            path: String::new(),
            reason,
        })?;
    for warning in warnings {
        event::warn(reporter, warning);
    }
    Ok(crate::layer_store::hex(&h.finalize()))
}

/// Writes what the policy rewrote and tells what it did.
pub fn finish(
    policy: Policy,
    writer: &mut dyn builderd_ext4::Target,
    reporter: &dyn Reporter,
) -> Result<Report> {
    let report = policy
        .finish(writer)
        .context("writing the rewritten package database")?;
    for rule in &report.rules {
        event::info(
            reporter,
            format!(
                "{}: {}{}",
                rule.rule,
                count(rule.entries, "entry"),
                if rule.bytes > 0 {
                    format!(", {} of content left out", human(rule.bytes))
                } else {
                    String::new()
                }
            ),
        );
    }
    if let Some(packages) = &report.packages {
        for p in &packages.kept_because_needed {
            event::info(
                reporter,
                format!(
                    "kept development package {}: {} depends on it ({})",
                    p.name, p.needed_by, p.dependency
                ),
            );
        }
        if !packages.removed.is_empty() {
            event::info(
                reporter,
                format!(
                    "removed {}: {}",
                    count(packages.removed.len() as u64, "development package"),
                    packages
                        .removed
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            );
        }
    }
    Ok(report)
}
