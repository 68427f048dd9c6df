//! builderd-policy: what the docker strategy changes in an image as it is
//! flattened, without running anything in it. Size rules
//! (`optimize_for_size`) drop caches, documentation, other languages and
//! logs by path; `remove_dev_packages` drops development packages by the
//! image's own package database (read before the flatten) and rewrites the
//! database; hardening removes SSH host keys, the machine-id, histories
//! and credentials and fixes modes. Each is a [`builderd_flatten::Select`]
//! verdict, so content left out is never written, and each rule reports
//! what it did (for OUT.json).

mod harden;
mod packages;
mod rules;
mod size;

use std::collections::BTreeMap;
use std::sync::Mutex;

use builderd_ext4::{Metadata, Target};
use builderd_flatten::{Select, Verdict};
use builderd_import::EntryKind;
use serde::Serialize;

pub use harden::{Compiled as Hardening, HardeningPolicy, PolicyError};
pub use packages::{Found, KeptPackage, PackageBytes, PackagesReport};
pub use rules::{Group, RULES};

use packages::Removal;
use size::SizeRules;

/// Paths listed per rule at most; more are counted.
const LISTED_PATHS: usize = 200;

/// What to do to the image.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub optimize_for_size: bool,
    pub remove_dev_packages: bool,
    /// Hardening, with the operator's policy (the default one: nothing
    /// stripped, removed or set beyond the built-in rules).
    pub harden: Option<Hardening>,
}

impl Options {
    pub fn any(&self) -> bool {
        self.optimize_for_size || self.remove_dev_packages || self.harden.is_some()
    }
}

/// One rule's effect.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RuleReport {
    pub rule: &'static str,
    pub group: Option<Group>,
    /// Entries of the final tree it removed, changed, emptied or listed.
    pub entries: u64,
    /// Bytes of regular-file content it removed (apparent sizes).
    pub bytes: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(skip_serializing_if = "is_zero")]
    pub paths_not_listed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What the policy did, for OUT.json.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub optimize_for_size: bool,
    pub remove_dev_packages: bool,
    pub harden: bool,
    /// Rules that did something, in the order of docs/docker-strategy.md.
    pub rules: Vec<RuleReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packages: Option<PackagesReport>,
    /// Entries removed and bytes of content not written, all rules together.
    pub entries_removed: u64,
    pub bytes_removed: u64,
    /// SSH host keys were removed: the image makes new ones at first boot.
    pub ssh_host_keys_regenerated_at_boot: bool,
}

#[derive(Default)]
struct Tally {
    rules: Vec<RuleReport>,
    /// Metadata of database files rewritten, as the image had them.
    replaced: BTreeMap<Vec<u8>, Metadata>,
}

/// The policy of one build.
pub struct Policy {
    opts: Options,
    size: Option<SizeRules>,
    removal: Option<Removal>,
    tally: Mutex<Tally>,
}

impl Policy {
    /// `env` is the image's environment (its languages stay).
    pub fn new(opts: Options, env: &[String]) -> Policy {
        let size = opts.optimize_for_size.then(|| SizeRules::new(env));
        Policy {
            opts,
            size,
            removal: None,
            tally: Mutex::new(Tally {
                rules: RULES
                    .iter()
                    .map(|r| RuleReport {
                        rule: r.name,
                        group: Some(r.group),
                        ..Default::default()
                    })
                    .collect(),
                replaced: BTreeMap::new(),
            }),
        }
    }

    /// Does the policy need files of the final tree before the flatten
    /// ([`Policy::wanted`], then [`Policy::read`])?
    pub fn needs_files(&self) -> bool {
        self.opts.remove_dev_packages
    }

    /// The entries to read before the flatten.
    pub fn wanted(path: &[u8]) -> bool {
        packages::wanted(path)
    }

    /// The directories that hold them (see `builderd_flatten::read_files`).
    pub fn within(path: &[u8]) -> bool {
        packages::within(path)
    }

    /// Decides the package removal from what the final tree has; answers
    /// the warnings for the build's log.
    pub fn read(&mut self, found: &BTreeMap<Vec<u8>, Found>) -> Result<Vec<String>, String> {
        let removal = packages::plan(found)?;
        let warnings = removal.warnings.clone();
        self.removal = Some(removal);
        Ok(warnings)
    }

    /// Writes the rewritten database files (after the flatten, with the
    /// writer's cursor back) and answers the report.
    pub fn finish(&self, w: &mut dyn Target) -> Result<Report, builderd_ext4::Error> {
        let tally = std::mem::take(&mut *self.tally.lock().unwrap());
        if let Some(removal) = &self.removal {
            for (path, meta) in &tally.replaced {
                let mut f = w.file(path, meta.clone())?;
                f.write(&removal.replace[path])?;
                f.finish()?;
            }
        }
        let rules: Vec<RuleReport> = tally.rules.into_iter().filter(|r| r.entries > 0).collect();
        let removed = |r: &&RuleReport| {
            matches!(
                RULES.iter().find(|i| i.name == r.rule).map(|i| i.group),
                Some(Group::Size | Group::DevPackages)
            ) || [
                rules::SSH_HOST_KEYS,
                rules::SHELL_HISTORY,
                rules::CREDENTIALS,
                rules::POLICY_REMOVE,
            ]
            .iter()
            .any(|&id| RULES[id as usize].name == r.rule)
        };
        Ok(Report {
            optimize_for_size: self.opts.optimize_for_size,
            remove_dev_packages: self.opts.remove_dev_packages,
            harden: self.opts.harden.is_some(),
            entries_removed: rules.iter().filter(removed).map(|r| r.entries).sum(),
            bytes_removed: rules.iter().filter(removed).map(|r| r.bytes).sum(),
            ssh_host_keys_regenerated_at_boot: rules.iter().any(|r| {
                r.rule == RULES[rules::SSH_HOST_KEYS as usize].name
                    && r.paths.iter().any(|p| p.ends_with("_key"))
            }),
            rules,
            packages: self.removal.as_ref().map(|r| r.report.clone()),
        })
    }
}

impl Select for Policy {
    fn select(&self, path: &[u8], kind: &EntryKind, _size: u64, meta: &mut Metadata) -> Verdict {
        if let Some(v) = self.opts.harden.as_ref().and_then(|h| h.remove(path, kind)) {
            return v;
        }
        if let Some(r) = &self.removal {
            if r.replace.contains_key(path) || r.drops_database(path) {
                return Verdict::Drop(rules::DEV_PACKAGE_DATABASE);
            }
            if r.drops(path) {
                return Verdict::Drop(rules::DEV_PACKAGE_FILES);
            }
        }
        if let Some(v) = self.size.as_ref().and_then(|s| s.select(path, kind)) {
            return v;
        }
        match &self.opts.harden {
            Some(h) => h.modes(path, kind, meta),
            None => Verdict::Keep,
        }
    }

    fn applied(&self, verdict: Verdict, path: &[u8], size: u64, meta: &Metadata) {
        let Some(rule) = verdict.rule() else {
            return;
        };
        let mut tally = self.tally.lock().unwrap();
        if verdict == Verdict::Drop(rules::DEV_PACKAGE_DATABASE)
            && self
                .removal
                .as_ref()
                .is_some_and(|r| r.replace.contains_key(path))
        {
            tally.replaced.insert(path.to_vec(), meta.clone());
            return;
        }
        let r = &mut tally.rules[rule as usize];
        r.entries += 1;
        if matches!(verdict, Verdict::Drop(_) | Verdict::Empty(_)) {
            r.bytes = r.bytes.saturating_add(size);
        }
        if RULES[rule as usize].listed {
            if r.paths.len() < LISTED_PATHS {
                r.paths.push(format!("/{}", String::from_utf8_lossy(path)));
            } else {
                r.paths_not_listed += 1;
            }
        }
    }
}
