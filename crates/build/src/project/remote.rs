//! Where a repository is fetched from: `git+https://`, `git+ssh://`,
//! `git+http://` and `git://` addresses parsed into their parts, checked
//! against what may be reached (plain `http` and `git` only on loopback or
//! on hosts the operator names; no addresses the outbound policy forbids),
//! and submodule URLs resolved against their superproject's, as `git`
//! resolves them. Credentials never live in an address: the build's
//! credentials are given to `git` through files (see `access`).

use std::net::{IpAddr, ToSocketAddrs};

use anyhow::Result;
use builderd_oci::Outbound;

use crate::error::SourceError;

/// How a repository is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Https,
    Http,
    Ssh,
    /// `git daemon`'s protocol: plain and without authentication.
    Git,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
            Scheme::Ssh => "ssh",
            Scheme::Git => "git",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Https => 443,
            Scheme::Http => 80,
            Scheme::Ssh => 22,
            Scheme::Git => 9418,
        }
    }

    /// Neither encrypted nor authenticated: only where the operator says.
    fn is_plain(self) -> bool {
        matches!(self, Scheme::Http | Scheme::Git)
    }
}

/// A repository on another machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    pub scheme: Scheme,
    /// The login name (ssh's `git@`); never a password.
    pub user: Option<String>,
    /// A name or an address (IPv6 without brackets).
    pub host: String,
    pub port: Option<u16>,
    /// From the first `/` on, as written.
    pub path: String,
}

impl Remote {
    /// A build's source address: `git+https://…`, `git+http://…`,
    /// `git+ssh://…` or `git://…`.
    pub fn parse_source(source: &str) -> Option<Result<Remote>> {
        let (scheme, rest) = if let Some(rest) = source.strip_prefix("git+https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = source.strip_prefix("git+http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = source.strip_prefix("git+ssh://") {
            (Scheme::Ssh, rest)
        } else if let Some(rest) = source.strip_prefix("git://") {
            (Scheme::Git, rest)
        } else {
            return None;
        };
        Some(Remote::parts(scheme, rest, source))
    }

    /// A submodule's URL as `.gitmodules` gives it, relative ones (`../x`)
    /// taken from `parent`'s (a repository on this machine has none to
    /// give); local paths and `file://` are refused.
    pub fn submodule(url: &str, parent: Option<&Remote>) -> Result<Remote> {
        if url.starts_with("./") || url.starts_with("../") {
            return match parent {
                Some(parent) => Ok(parent.join_relative(url)),
                None => Err(SourceError(format!(
                    "the submodule URL {url:?} is relative to a repository on this machine: \
                     local paths are refused"
                ))
                .into()),
            };
        }
        for (prefix, scheme) in [
            ("https://", Scheme::Https),
            ("http://", Scheme::Http),
            ("ssh://", Scheme::Ssh),
            ("git+ssh://", Scheme::Ssh),
            ("git://", Scheme::Git),
        ] {
            if let Some(rest) = url.strip_prefix(prefix) {
                return Remote::parts(scheme, rest, url);
            }
        }
        // scp's form, `user@host:path`, is ssh.
        if let Some((login, path)) = url.split_once(':') {
            if !login.contains('/') && !path.starts_with("//") && !login.is_empty() {
                let (user, host) = match login.rsplit_once('@') {
                    Some((u, h)) => (Some(u.to_string()), h),
                    None => (None, login),
                };
                let path = if path.starts_with('/') {
                    path.to_string()
                } else {
                    format!("/{path}")
                };
                return Remote::checked(Scheme::Ssh, user, host.to_string(), None, path, url);
            }
        }
        Err(SourceError(format!(
            "the submodule URL {url:?} is not a network address (https, ssh, http or git): \
             local paths and file:// are refused"
        ))
        .into())
    }

    fn parts(scheme: Scheme, rest: &str, whole: &str) -> Result<Remote> {
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hp)) => {
                if userinfo.contains(':') {
                    return Err(SourceError(format!(
                        "{}: a password in the address would be seen in logs and process \
                         lists; give it with --git-creds or --git-token (or BUILDERD_GIT_CREDS, \
                         BUILDERD_GIT_TOKEN), or the build's auth",
                        redact(whole)
                    ))
                    .into());
                }
                (Some(userinfo.to_string()), hp)
            }
            None => (None, authority),
        };
        let (host, port) = split_port(hostport)
            .ok_or_else(|| SourceError(format!("{whole:?}: the host or port is not valid")))?;
        Remote::checked(scheme, user, host, port, path.to_string(), whole)
    }

    fn checked(
        scheme: Scheme,
        user: Option<String>,
        host: String,
        port: Option<u16>,
        path: String,
        whole: &str,
    ) -> Result<Remote> {
        let plain = |s: &str| {
            !s.is_empty()
                && s.len() <= 1024
                && !s
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace() || "'\"\\`$;&|<>".contains(c))
        };
        let host_ok = host.parse::<IpAddr>().is_ok()
            || (!host.is_empty()
                && host.len() <= 253
                && !host.starts_with(['-', '.'])
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
        let user_ok = user
            .as_deref()
            .is_none_or(|u| plain(u) && !u.starts_with('-') && !u.contains('@'));
        if !host_ok || !user_ok || path.len() < 2 || !plain(&path) || path.starts_with("/-") {
            return Err(SourceError(format!(
                "{whole:?} is not a repository address: give SCHEME://HOST[:PORT]/PATH"
            ))
            .into());
        }
        Ok(Remote {
            scheme,
            user,
            host,
            port,
            path,
        })
    }

    pub fn port(&self) -> u16 {
        self.port.unwrap_or(self.scheme.default_port())
    }

    /// `scheme://host:port`: what credentials are given to.
    pub fn origin(&self) -> String {
        format!(
            "{}://{}:{}",
            self.scheme.name(),
            bracketed(&self.host),
            self.port()
        )
    }

    /// The address as `git` takes it, with `host` in place of the name
    /// where given (git's own protocol has no name to keep).
    pub fn url_for_git(&self, address: Option<IpAddr>) -> String {
        let host = match (self.scheme, address) {
            (Scheme::Git, Some(ip)) => bracketed(&ip.to_string()),
            _ => bracketed(&self.host),
        };
        let user = match &self.user {
            Some(u) => format!("{u}@"),
            None => String::new(),
        };
        let port = match self.port {
            Some(p) => format!(":{p}"),
            None => String::new(),
        };
        format!("{}://{user}{host}{port}{}", self.scheme.name(), self.path)
    }

    /// The key a source cache is kept under: the same repository whatever
    /// login reached it.
    pub fn cache_name(&self) -> String {
        format!("{}{}", self.origin(), self.path.trim_end_matches('/'))
    }

    fn join_relative(&self, relative: &str) -> Remote {
        let mut base = self.path.trim_end_matches('/').to_string();
        let mut rest = relative;
        loop {
            if let Some(r) = rest.strip_prefix("./") {
                rest = r;
            } else if let Some(r) = rest.strip_prefix("../") {
                rest = r;
                match base.rfind('/') {
                    Some(i) => base.truncate(i),
                    None => base.clear(),
                }
            } else {
                break;
            }
        }
        Remote {
            path: format!("{base}/{rest}"),
            ..self.clone()
        }
    }

    /// The address to connect to: plain schemes only on loopback or the
    /// operator's `insecure` hosts; the host's addresses as `outbound`
    /// allows. Checked here, and the address handed to `git`, so a name
    /// that answers differently later is not asked again.
    pub fn reach(&self, insecure: &[String], outbound: &Outbound) -> Result<IpAddr> {
        let addresses: Vec<IpAddr> = match self.host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => (self.host.as_str(), self.port())
                .to_socket_addrs()
                .map_err(|e| {
                    SourceError(format!(
                        "{}: cannot resolve {}: {e}",
                        self.origin(),
                        self.host
                    ))
                })?
                .map(|a| a.ip())
                .collect(),
        };
        if self.scheme.is_plain() {
            let named = insecure
                .iter()
                .any(|h| *h == self.host || *h == format!("{}:{}", self.host, self.port()));
            let loopback = !addresses.is_empty() && addresses.iter().all(|ip| ip.is_loopback());
            if !named && !loopback {
                return Err(SourceError(format!(
                    "{}: {} is neither encrypted nor authenticated; it is used on loopback \
                     only, or for hosts named with --insecure-git-host",
                    self.origin(),
                    self.scheme.name()
                ))
                .into());
            }
        }
        let mut refused = None;
        for ip in addresses {
            match outbound.check_ip(&self.host, ip) {
                Ok(()) => return Ok(ip),
                Err(e) => refused = Some(e),
            }
        }
        Err(match refused {
            Some(e) => SourceError(format!("{}: {e}", self.origin())).into(),
            None => SourceError(format!("{}: {} has no address", self.origin(), self.host)).into(),
        })
    }
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url_for_git(None))
    }
}

/// A host as a URL writes it (IPv6 in brackets).
pub fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// `host[:port]` or `[v6][:port]`.
fn split_port(hostport: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => None,
    };
    Some((host.to_string(), port))
}

/// `url` with whatever stands before an `@` in its authority hidden.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(s: &str) -> Remote {
        Remote::parse_source(s).unwrap().unwrap()
    }

    #[test]
    fn addresses_are_parsed_and_passwords_refused_without_echoing_them() {
        let r = remote("git+https://git.example.com/org/app.git");
        assert_eq!(r.scheme, Scheme::Https);
        assert_eq!(r.host, "git.example.com");
        assert_eq!(r.path, "/org/app.git");
        assert_eq!(r.origin(), "https://git.example.com:443");
        let s = remote("git+ssh://git@[::1]:2222/srv/app.git");
        assert_eq!(
            (s.user.as_deref(), s.host.as_str(), s.port()),
            (Some("git"), "::1", 2222)
        );
        assert_eq!(s.to_string(), "ssh://git@[::1]:2222/srv/app.git");
        let err = Remote::parse_source("git+https://bob:hunter2@h/x.git")
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--git-creds") && !err.contains("hunter2"),
            "{err}"
        );
        for bad in [
            "git+https://h",
            "git+https://h/",
            "git+https://-oProxyCommand=x/r",
            "git+ssh://-oProxyCommand=x@h/r",
            "git+https://h:99999/r",
            "git+https://h/a b",
            "git+https://h/a;rm",
            "git+ssh://h/-x",
        ] {
            assert!(Remote::parse_source(bad).unwrap().is_err(), "{bad}");
        }
        assert!(Remote::parse_source("git:/local/path").is_none());
    }

    #[test]
    fn submodule_urls_resolve_as_git_resolves_them() {
        let parent = remote("git+https://h:8443/org/app.git");
        let sub = |u: &str| Remote::submodule(u, Some(&parent)).map(|r| r.to_string());
        assert_eq!(sub("../lib.git").unwrap(), "https://h:8443/org/lib.git");
        assert_eq!(sub("../../x/lib").unwrap(), "https://h:8443/x/lib");
        assert_eq!(
            sub("./vendor").unwrap(),
            "https://h:8443/org/app.git/vendor"
        );
        assert_eq!(
            sub("git@other:team/lib.git").unwrap(),
            "ssh://git@other/team/lib.git"
        );
        assert_eq!(sub("git://h2/lib").unwrap(), "git://h2/lib");
        for bad in ["file:///etc", "/srv/lib.git", "lib", "ext::sh -c x"] {
            assert!(sub(bad).is_err(), "{bad}");
        }
        assert!(Remote::submodule("../lib.git", None).is_err());
        assert!(Remote::submodule("https://h/lib.git", None).is_ok());
    }

    #[test]
    fn plain_schemes_reach_loopback_or_named_hosts_only() {
        let any = Outbound::any();
        let public = Outbound::public_only("--allow-private-git");
        let local = remote("git+http://127.0.0.1:8080/r.git");
        assert!(local.reach(&[], &any).is_ok());
        assert!(local.reach(&[], &public).is_err());
        let far = remote("git://192.0.2.7/r.git");
        let err = far.reach(&[], &any).unwrap_err().to_string();
        assert!(err.contains("--insecure-git-host"), "{err}");
        assert!(far.reach(&["192.0.2.7".into()], &any).is_ok());
        let private = remote("git+https://10.1.2.3/r.git");
        let err = private.reach(&[], &public).unwrap_err().to_string();
        assert!(err.contains("--allow-private-git"), "{err}");
    }
}
