//! The steps' seccomp profile: the engine's default (containers-common's
//! `seccomp.json`), except that a step may not make a user namespace.
//! The default allows `unshare` and `clone` with any flags, so a step could
//! map ids of its own in a nested namespace; here those calls with
//! CLONE_NEWUSER fail with EPERM, and `clone3` (whose flags a filter cannot
//! read) fails with ENOSYS, which makes the C library fall back to `clone`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// Where Debian's containers-common puts the engine's default profile.
const DEFAULT_PROFILE: &str = "/usr/share/containers/seccomp.json";

const CLONE_NEWUSER: u64 = 0x1000_0000;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// Writes the profile into `dir`; answers its path.
pub fn write_profile(dir: &Path) -> Result<PathBuf> {
    let text = std::fs::read(DEFAULT_PROFILE).with_context(|| {
        format!("reading the engine's seccomp profile {DEFAULT_PROFILE} (Debian: apt-get install golang-github-containers-common)")
    })?;
    let default: Value =
        serde_json::from_slice(&text).with_context(|| format!("{DEFAULT_PROFILE} is not JSON"))?;
    let profile = without_user_namespaces(default)?;
    let path = dir.join("seccomp.json");
    let tmp = dir.join(format!("seccomp.json.{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(&profile)?)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `profile` with `clone`, `clone3` and `unshare` taken out of its rules
/// and given back under the conditions above.
fn without_user_namespaces(mut profile: Value) -> Result<Value> {
    const TAKEN: [&str; 3] = ["clone", "clone3", "unshare"];
    let rules = profile["syscalls"]
        .as_array_mut()
        .context("the seccomp profile has no syscall rules")?;
    for rule in rules.iter_mut() {
        if let Some(names) = rule["names"].as_array_mut() {
            names.retain(|n| !n.as_str().is_some_and(|n| TAKEN.contains(&n)));
        }
    }
    rules.retain(|r| r["names"].as_array().is_none_or(|n| !n.is_empty()));
    let flags = |op: &str, want: u64| json!([{"index": 0, "value": CLONE_NEWUSER, "valueTwo": want, "op": op}]);
    rules.extend([
        json!({"names": ["clone", "unshare"], "action": "SCMP_ACT_ALLOW",
               "args": flags("SCMP_CMP_MASKED_EQ", 0)}),
        json!({"names": ["clone", "unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
               "args": flags("SCMP_CMP_MASKED_EQ", CLONE_NEWUSER)}),
        json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}),
    ]);
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_namespaces_are_refused_and_the_rest_of_the_profile_stays() {
        let default = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read", "clone", "unshare", "clone3"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["unshare"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        ]});
        let p = without_user_namespaces(default).unwrap();
        let rules = p["syscalls"].as_array().unwrap();
        assert_eq!(rules[0]["names"], json!(["read"]));
        // The rule left empty is gone; nothing allows the calls unconditionally.
        assert_eq!(rules.len(), 4);
        let unconditional_allow = rules.iter().any(|r| {
            r["action"] == "SCMP_ACT_ALLOW"
                && r["args"].as_array().is_none_or(|a| a.is_empty())
                && r["names"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| ["clone", "unshare", "clone3"].contains(&n.as_str().unwrap()))
        });
        assert!(!unconditional_allow, "{p:#}");
        assert_eq!(rules[2]["errnoRet"], EPERM);
        assert_eq!(rules[2]["args"][0]["valueTwo"], CLONE_NEWUSER);
        assert_eq!(rules[3]["errnoRet"], ENOSYS);
    }
}
