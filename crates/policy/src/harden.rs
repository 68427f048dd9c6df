//! Hardening: what an image must not carry into many VMs at once (one set
//! of SSH host keys, one machine-id, someone's shell history and registry
//! credentials), and modes that let any user of the VM change what others
//! run. On by default; an operator's policy file can strip setuid and
//! setgid bits, remove more paths and set modes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use builderd_ext4::Metadata;
use builderd_flatten::Verdict;
use builderd_import::EntryKind;
use serde::Deserialize;

use crate::rules::*;

/// An operator's hardening policy (`--hardening-policy FILE`, JSON).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HardeningPolicy {
    /// Clear setuid and setgid bits on every file but those allowed.
    pub strip_setuid: bool,
    /// Absolute paths whose setuid or setgid bits stay.
    pub allow_setuid: Vec<String>,
    /// Absolute paths removed with everything below them.
    pub remove: Vec<String>,
    /// Absolute path to mode, in octal (`"0750"`).
    pub modes: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("the hardening policy {path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// A policy path as the flatten names entries: no leading `/`.
fn policy_path(file: &Path, path: &str) -> Result<Vec<u8>, PolicyError> {
    let invalid = |reason: String| PolicyError::Invalid {
        path: file.display().to_string(),
        reason,
    };
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| invalid(format!("{path:?} is not an absolute path")))?;
    if rest.is_empty()
        || rest
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(invalid(format!(
            "{path:?} must name an entry below / plainly (no empty, '.' or '..' components)"
        )));
    }
    Ok(rest.as_bytes().to_vec())
}

impl HardeningPolicy {
    /// Reads and checks a policy file.
    pub fn load(file: &Path) -> Result<Compiled, PolicyError> {
        let invalid = |reason: String| PolicyError::Invalid {
            path: file.display().to_string(),
            reason,
        };
        let text = std::fs::read(file).map_err(|e| invalid(e.to_string()))?;
        let policy: HardeningPolicy =
            serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
        policy.compile(file)
    }

    fn compile(&self, file: &Path) -> Result<Compiled, PolicyError> {
        let mut modes = BTreeMap::new();
        for (path, mode) in &self.modes {
            let bits = u16::from_str_radix(mode, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| PolicyError::Invalid {
                    path: file.display().to_string(),
                    reason: format!("the mode {mode:?} of {path} is not octal from 0 to 7777"),
                })?;
            modes.insert(policy_path(file, path)?, bits);
        }
        Ok(Compiled {
            strip_setuid: self.strip_setuid,
            allow_setuid: self
                .allow_setuid
                .iter()
                .map(|p| policy_path(file, p))
                .collect::<Result<_, _>>()?,
            remove: self
                .remove
                .iter()
                .map(|p| policy_path(file, p))
                .collect::<Result<_, _>>()?,
            modes,
        })
    }
}

/// A checked policy.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    strip_setuid: bool,
    allow_setuid: BTreeSet<Vec<u8>>,
    remove: Vec<Vec<u8>>,
    modes: BTreeMap<Vec<u8>, u16>,
}

const HISTORIES: &[&[u8]] = &[
    b".bash_history",
    b".ash_history",
    b".sh_history",
    b".zsh_history",
    b".python_history",
    b".node_repl_history",
    b".psql_history",
    b".mysql_history",
    b".sqlite_history",
    b".lesshst",
    b".viminfo",
];

fn name_of(path: &[u8]) -> &[u8] {
    path.rsplit(|&b| b == b'/').next().unwrap_or(path)
}

/// Is `path` an SSH host key, private or public (the public one is
/// regenerated with it)?
pub fn is_ssh_host_key(path: &[u8]) -> bool {
    let Some(name) = path.strip_prefix(b"etc/ssh/") else {
        return false;
    };
    !name.contains(&b'/')
        && name.starts_with(b"ssh_host_")
        && (name.ends_with(b"_key") || name.ends_with(b"_key.pub"))
}

impl Compiled {
    /// Entries removed: decided before any other rule.
    pub fn remove(&self, path: &[u8], kind: &EntryKind) -> Option<Verdict> {
        let regular = matches!(kind, EntryKind::File | EntryKind::Hardlink(_));
        let name = name_of(path);
        if self.remove.iter().any(|r| {
            path == r.as_slice()
                || path
                    .strip_prefix(r.as_slice())
                    .is_some_and(|rest| rest.starts_with(b"/"))
        }) {
            return Some(Verdict::Drop(POLICY_REMOVE));
        }
        if is_ssh_host_key(path) && !matches!(kind, EntryKind::Dir) {
            return Some(Verdict::Drop(SSH_HOST_KEYS));
        }
        if !regular {
            return None;
        }
        if path == b"etc/machine-id" {
            return Some(Verdict::Empty(MACHINE_ID));
        }
        if path == b"var/lib/dbus/machine-id" {
            return Some(Verdict::Drop(MACHINE_ID));
        }
        if HISTORIES.contains(&name) {
            return Some(Verdict::Drop(SHELL_HISTORY));
        }
        if name == b".git-credentials"
            || name == b".netrc"
            || path.ends_with(b"/.docker/config.json")
            || path == b".docker/config.json"
        {
            return Some(Verdict::Drop(CREDENTIALS));
        }
        None
    }

    /// Mode changes and listings, for entries that stay.
    pub fn modes(&self, path: &[u8], kind: &EntryKind, meta: &mut Metadata) -> Verdict {
        if let Some(&mode) = self.modes.get(path) {
            if !matches!(kind, EntryKind::Symlink(_) | EntryKind::Hardlink(_)) {
                meta.mode = mode;
                return Verdict::Change(POLICY_MODE);
            }
        }
        match kind {
            EntryKind::Dir if meta.mode & 0o002 != 0 && meta.mode & 0o1000 == 0 => {
                // Anyone may still create files there; nobody may remove
                // or rename another's.
                meta.mode |= 0o1000;
                Verdict::Change(WORLD_WRITABLE)
            }
            EntryKind::File if meta.mode & 0o6000 != 0 => {
                // A setuid file others may write is both: its write bit
                // goes, and it is listed (or stripped) as setuid.
                meta.mode &= !0o002;
                if self.strip_setuid && !self.allow_setuid.contains(path) {
                    meta.mode &= !0o6000;
                    Verdict::Change(SETUID)
                } else {
                    Verdict::Note(SETUID)
                }
            }
            EntryKind::File if meta.mode & 0o002 != 0 => {
                meta.mode &= !0o002;
                Verdict::Change(WORLD_WRITABLE)
            }
            _ => Verdict::Keep,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(mode: u16) -> Metadata {
        Metadata {
            mode,
            ..Default::default()
        }
    }

    #[test]
    fn secrets_and_identities_go_and_modes_are_fixed() {
        let c = Compiled::default();
        let f = || EntryKind::File;
        let rule = |v: Option<Verdict>| v.and_then(Verdict::rule).map(|r| RULES[r as usize].name);
        assert_eq!(
            rule(c.remove(b"etc/ssh/ssh_host_ed25519_key", &f())),
            Some("ssh-host-keys")
        );
        assert_eq!(
            rule(c.remove(b"etc/ssh/ssh_host_rsa_key.pub", &f())),
            Some("ssh-host-keys")
        );
        assert_eq!(rule(c.remove(b"etc/ssh/sshd_config", &f())), None);
        assert_eq!(
            c.remove(b"etc/machine-id", &f()),
            Some(Verdict::Empty(MACHINE_ID))
        );
        assert_eq!(
            rule(c.remove(b"root/.bash_history", &f())),
            Some("shell-history")
        );
        assert_eq!(
            rule(c.remove(b"home/a/.docker/config.json", &f())),
            Some("credentials")
        );
        assert_eq!(
            rule(c.remove(b"root/.git-credentials", &f())),
            Some("credentials")
        );
        assert_eq!(rule(c.remove(b"srv/app/config.json", &f())), None);

        let mut m = meta(0o777);
        assert_eq!(
            c.modes(b"srv/x", &EntryKind::Dir, &mut m),
            Verdict::Change(WORLD_WRITABLE)
        );
        assert_eq!(m.mode, 0o1777);
        let mut m = meta(0o1777);
        assert_eq!(c.modes(b"tmp", &EntryKind::Dir, &mut m), Verdict::Keep);
        let mut m = meta(0o666);
        assert_eq!(
            c.modes(b"srv/f", &f(), &mut m),
            Verdict::Change(WORLD_WRITABLE)
        );
        assert_eq!(m.mode, 0o664);
        let mut m = meta(0o666);
        let dev = EntryKind::Device(builderd_ext4::DeviceKind::Char, 1, 3);
        assert_eq!(
            c.modes(b"dev/null", &dev, &mut m),
            Verdict::Keep,
            "devices keep their modes"
        );
        let mut m = meta(0o4755);
        assert_eq!(c.modes(b"usr/bin/su", &f(), &mut m), Verdict::Note(SETUID));
        assert_eq!(m.mode, 0o4755, "listed, not changed, without a policy");
        let mut m = meta(0o4777);
        assert_eq!(c.modes(b"usr/bin/x", &f(), &mut m), Verdict::Note(SETUID));
        assert_eq!(
            m.mode, 0o4775,
            "listed as setuid, and others' write bit taken"
        );
    }

    #[test]
    fn a_policy_strips_setuid_but_its_allow_list_and_removes_and_sets_modes() {
        let file = Path::new("policy.json");
        let policy: HardeningPolicy = serde_json::from_str(
            r#"{"strip_setuid": true, "allow_setuid": ["/usr/bin/sudo"], "remove": ["/opt/debug"],
                "modes": {"/srv/data": "0750"}}"#,
        )
        .unwrap();
        let c = policy.compile(file).unwrap();
        let mut m = meta(0o4755);
        assert_eq!(
            c.modes(b"usr/bin/su", &EntryKind::File, &mut m),
            Verdict::Change(SETUID)
        );
        assert_eq!(m.mode, 0o755);
        let mut m = meta(0o4777);
        assert_eq!(
            c.modes(b"usr/bin/x", &EntryKind::File, &mut m),
            Verdict::Change(SETUID)
        );
        assert_eq!(
            m.mode, 0o775,
            "a world-writable setuid file is stripped too"
        );
        let mut m = meta(0o4755);
        assert_eq!(
            c.modes(b"usr/bin/sudo", &EntryKind::File, &mut m),
            Verdict::Note(SETUID)
        );
        assert_eq!(
            c.remove(b"opt/debug/x", &EntryKind::File),
            Some(Verdict::Drop(POLICY_REMOVE))
        );
        assert_eq!(c.remove(b"opt/debugger", &EntryKind::File), None);
        let mut m = meta(0o777);
        assert_eq!(
            c.modes(b"srv/data", &EntryKind::Dir, &mut m),
            Verdict::Change(POLICY_MODE)
        );
        assert_eq!(m.mode, 0o750);

        for bad in [
            r#"{"remove": ["relative"]}"#,
            r#"{"remove": ["/a/../etc"]}"#,
            r#"{"modes": {"/x": "999"}}"#,
            r#"{"strip": true}"#,
        ] {
            let parsed: Result<HardeningPolicy, _> = serde_json::from_str(bad);
            let compiled = parsed
                .map_err(|e| e.to_string())
                .and_then(|p| p.compile(file).map_err(|e| e.to_string()));
            assert!(compiled.is_err(), "{bad} is refused");
        }
    }
}
