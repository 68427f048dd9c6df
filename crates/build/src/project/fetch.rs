//! A Git repository checked out at a ref, with the `git` binary: cloned
//! into the build's own directory (never built in place, so the build sees
//! the commit and nothing of the repository's working tree), the ref
//! resolved to the commit id the metadata names.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

/// A ref as a user writes it (a branch, a tag, a commit id, or a full ref
/// name), refused when it could be read as an option or is not a ref.
pub fn check_ref(reference: &str) -> Result<String> {
    let fine = !reference.is_empty()
        && reference.len() <= 255
        && !reference.starts_with(['-', '/'])
        && !reference.contains("..")
        && !reference.contains("@{")
        && !reference
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
    if !fine {
        anyhow::bail!("{reference:?} is not a Git ref (a branch, a tag or a commit id)");
    }
    Ok(reference.to_string())
}

/// Checks out `repo` at `reference` (None: its HEAD) into `dest`, which
/// must not exist; answers the commit's id.
pub fn checkout(repo: &Path, reference: Option<&str>, dest: &Path) -> Result<String> {
    git(None)
        .args(["clone", "--quiet", "--no-checkout", "--"])
        .arg(repo)
        .arg(dest)
        .run(&format!("clone {}", repo.display()))?;
    let commit = match reference {
        None => resolve(dest, "HEAD")?,
        Some(r) => ["", "refs/remotes/origin/", "refs/tags/"]
            .iter()
            .find_map(|prefix| resolve(dest, &format!("{prefix}{r}")).ok())
            .with_context(|| format!("{} has no branch, tag or commit {r:?}", repo.display()))?,
    };
    git(Some(dest))
        .args(["checkout", "--quiet", "--detach", &commit])
        .run(&format!("check out {commit}"))?;
    Ok(commit)
}

/// The commit `name` names in the repository at `dir`.
fn resolve(dir: &Path, name: &str) -> Result<String> {
    let id = git(Some(dir))
        .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
        .arg(format!("{name}^{{commit}}"))
        .run(&format!("resolve {name}"))?;
    if id.len() != 40 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!("git resolved {name} to {id:?}");
    }
    Ok(id)
}

/// `git`, in `dir` when given, never asking on a terminal nor reading the
/// machine's or the user's configuration.
fn git(dir: Option<&Path>) -> Git {
    let mut c = Command::new("git");
    if let Some(dir) = dir {
        c.arg("-C").arg(dir);
    }
    c.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::null());
    Git(c)
}

struct Git(Command);

impl Git {
    fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(mut self, args: I) -> Git {
        self.0.args(args);
        self
    }

    fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Git {
        self.0.arg(arg);
        self
    }

    /// Runs it to its end; answers its stdout, trimmed.
    fn run(mut self, what: &str) -> Result<String> {
        let out = self
            .0
            .output()
            .context("running git (Debian: apt-get install git)")?;
        if !out.status.success() {
            anyhow::bail!(
                "git could not {what}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_that_could_be_options_or_are_not_refs_are_refused() {
        for good in ["main", "v1.2.3", "refs/pull/7/head", "a1b2c3d", "feature/x"] {
            assert!(check_ref(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-x",
            "--upload-pack=sh",
            "/abs",
            "a..b",
            "a b",
            "HEAD@{1}",
            "x:y",
            "a\nb",
        ] {
            assert!(check_ref(bad).is_err(), "{bad:?}");
        }
    }
}
