//! How `git` gets the build's credentials and reaches only what was
//! checked: passwords and tokens through a credential file of mode 0600
//! (git's `store` helper reads it; no secret is ever an argument), an SSH
//! key in a file of mode 0600, host keys from the operator's known_hosts
//! (a copy of the build's own, so `accept-new` learns nothing lasting), and
//! the address `Remote::reach` checked pinned for curl and ssh. The files
//! live in the build's private directory and go with it. Credentials are
//! given to the top repository's origin only: a submodule elsewhere is
//! fetched without them.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::remote::{bracketed, Remote, Scheme};
use crate::request::{GitCredentials, GitOptions};

/// The files one fetch gives `git`.
pub struct Access {
    dir: PathBuf,
    /// The origin credentials are given to, and whether there are any.
    origin: Option<String>,
    has_key: bool,
    accept_new: bool,
}

impl Access {
    /// Writes what `creds` and `opts` give into `dir` (private to the
    /// build); `top` is the repository the credentials are for.
    pub fn new(
        dir: &Path,
        creds: Option<&GitCredentials>,
        opts: &GitOptions,
        top: Option<&Remote>,
    ) -> Result<Access> {
        std::fs::create_dir_all(dir)?;
        let mut has_key = false;
        match (creds, top) {
            (Some(GitCredentials::SshKey(key)), Some(r)) if r.scheme == Scheme::Ssh => {
                let mut key = key.clone();
                if !key.ends_with('\n') {
                    key.push('\n');
                }
                private_file(&dir.join("ssh-key"), key.as_bytes())?;
                has_key = true;
            }
            (Some(GitCredentials::SshKey(_)), Some(r)) => anyhow::bail!(
                "an SSH key was given, but {} is not an ssh:// address",
                r.origin()
            ),
            (Some(c), Some(r)) if r.scheme == Scheme::Ssh => anyhow::bail!(
                "{} is reached with an SSH key, not a {}",
                r.origin(),
                c.kind()
            ),
            (Some(c), Some(r)) => {
                let (user, password) = c.user_password().expect("not a key");
                let host = match r.port {
                    Some(p) => format!("{}:{p}", bracketed(&r.host)),
                    None => bracketed(&r.host),
                };
                let line = format!(
                    "{}://{}:{}@{host}\n",
                    if r.scheme == Scheme::Https {
                        "https"
                    } else {
                        "http"
                    },
                    encode(user),
                    encode(password)
                );
                private_file(&dir.join("credentials"), line.as_bytes())?;
            }
            // A repository on this machine needs none (they may come from
            // the environment for other builds).
            (Some(_), None) | (None, _) => {}
        }
        let known = match &opts.known_hosts {
            Some(path) => std::fs::read(path)
                .with_context(|| format!("the known_hosts file {}", path.display()))?,
            None => Vec::new(),
        };
        private_file(&dir.join("known_hosts"), &known)?;
        Ok(Access {
            dir: dir.to_path_buf(),
            origin: creds.and(top).map(Remote::origin),
            has_key,
            accept_new: opts.accept_new_host_keys,
        })
    }

    /// `git -c` settings and environment variables for fetching from
    /// `remote` at the checked address `ip`.
    pub fn for_remote(&self, remote: &Remote, ip: IpAddr) -> (Vec<String>, Vec<(String, String)>) {
        let ours = self.origin.as_deref() == Some(remote.origin().as_str());
        let mut config = Vec::new();
        let mut env = vec![("HOME".to_string(), self.dir.display().to_string())];
        match remote.scheme {
            Scheme::Https | Scheme::Http => {
                config.push(format!(
                    "http.curloptResolve={}:{}:{}",
                    remote.host,
                    remote.port(),
                    bracketed(&ip.to_string())
                ));
                if ours {
                    config.push(format!(
                        "credential.helper=store --file={}",
                        quoted(&self.dir.join("credentials"))
                    ));
                }
            }
            Scheme::Ssh => {
                let alias = match remote.port {
                    Some(p) if p != 22 => format!("[{}]:{p}", remote.host),
                    _ => remote.host.clone(),
                };
                let identity = if ours && self.has_key {
                    quoted(&self.dir.join("ssh-key"))
                } else {
                    "none".into()
                };
                let checking = if self.accept_new { "accept-new" } else { "yes" };
                let command = format!(
                    "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile={identity} \
                     -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null \
                     -o StrictHostKeyChecking={checking} -o HostKeyAlias={} -o HostName={ip} \
                     -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4 \
                     -o ProxyCommand=none -o ProxyJump=none -o PermitLocalCommand=no \
                     -o ControlMaster=no -o ControlPath=none -o UpdateHostKeys=no",
                    quoted(&self.dir.join("known_hosts")),
                    quoted(Path::new(&alias)),
                );
                env.push(("GIT_SSH_COMMAND".into(), command));
                env.push(("GIT_SSH_VARIANT".into(), "ssh".into()));
            }
            Scheme::Git => {}
        }
        (config, env)
    }
}

/// Writes `bytes` to a new file of mode 0600 (a secret's).
pub fn private_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// A path in single quotes for the shell git runs helpers and ssh with.
fn quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

/// Percent-encodes all but RFC 3986's unreserved characters, as the
/// credential file's URLs need.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_to_a_private_file_for_their_origin_only() {
        let dir = tempfile::tempdir().unwrap();
        let top = Remote::parse_source("git+http://127.0.0.1:8080/app.git")
            .unwrap()
            .unwrap();
        let creds = GitCredentials::Basic {
            username: "bob".into(),
            password: "p@ss:w/rd".into(),
        };
        let access =
            Access::new(dir.path(), Some(&creds), &GitOptions::default(), Some(&top)).unwrap();
        let file = dir.path().join("credentials");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "http://bob:p%40ss%3Aw%2Frd@127.0.0.1:8080\n"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let ip = "127.0.0.1".parse().unwrap();
        let (config, _) = access.for_remote(&top, ip);
        assert!(config
            .iter()
            .any(|c| c.starts_with("credential.helper=store")));
        assert!(config
            .iter()
            .all(|c| !c.contains("p%40ss") && !c.contains("p@ss")));
        let other = Remote::parse_source("git+http://127.0.0.1:9090/lib.git")
            .unwrap()
            .unwrap();
        let (config, _) = access.for_remote(&other, ip);
        assert!(config
            .iter()
            .all(|c| !c.starts_with("credential.helper=store")));
    }
}
