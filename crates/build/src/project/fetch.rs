//! A Git repository's commit, fetched and written out as a plain tree:
//! the ref resolved on the server (`ls-remote`), only that commit fetched
//! (shallow) into a source cache kept per namespace (the service's tenant)
//! and repository, so the next fetch of the repository is incremental; its
//! size checked from the tree before a file is written; the files written
//! without a `.git` (the build sees the commit, nothing else); submodules
//! the same way, recursively, from the addresses `.gitmodules` gives,
//! checked as the top one is.

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use builderd_oci::Outbound;
use sha2::{Digest, Sha256};

use super::access::Access;
use super::git::{failure_of, Failure, GitEnv};
use super::remote::Remote;
use crate::error::SourceError;
use crate::event::{self, Reporter};
use crate::request::{GitCredentials, GitOptions};

/// Most levels of submodules within submodules.
const MAX_DEPTH: usize = 8;
/// Most submodules in one checkout, all levels together.
const MAX_SUBMODULES: usize = 256;

/// Where a repository is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// On this machine (a person's own `git:PATH`).
    Local(PathBuf),
    Remote(Remote),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Local(p) => write!(f, "{}", p.display()),
            Origin::Remote(r) => write!(f, "{r}"),
        }
    }
}

/// The commit a checkout holds, and what named it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    pub commit: String,
    /// The full ref it was found by (`refs/heads/main`), if any.
    pub ref_name: Option<String>,
}

impl Fetched {
    /// The branch it was found by.
    pub fn branch(&self) -> Option<&str> {
        self.ref_name.as_deref()?.strip_prefix("refs/heads/")
    }

    /// The tag it was found by.
    pub fn tag(&self) -> Option<&str> {
        self.ref_name.as_deref()?.strip_prefix("refs/tags/")
    }
}

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
        return Err(SourceError(format!(
            "{reference:?} is not a Git ref (a branch, a tag or a commit id)"
        ))
        .into());
    }
    Ok(reference.to_string())
}

/// Fetches `origin` at `reference` (None: its HEAD) and writes its tree,
/// submodules included, to `dest` (which must not exist). `private` is a
/// directory of the build's own for credential files and scratch.
pub struct Checkout<'a> {
    pub origin: &'a Origin,
    pub reference: Option<&'a str>,
    pub dest: &'a Path,
    pub private: &'a Path,
    /// The source cache's directory.
    pub sources: &'a Path,
    pub opts: &'a GitOptions,
    pub credentials: Option<&'a GitCredentials>,
}

pub fn checkout(c: &Checkout<'_>, reporter: &dyn Reporter) -> Result<Fetched> {
    let started = Instant::now();
    let top = match c.origin {
        Origin::Remote(r) => Some(r),
        Origin::Local(_) => None,
    };
    let access = Access::new(&c.private.join("access"), c.credentials, c.opts, top)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(c.sources)
        .with_context(|| format!("creating {}", c.sources.display()))?;
    let mut f = Fetcher {
        sources: c.sources,
        private: c.private,
        opts: c.opts,
        access,
        outbound: if c.opts.public_only {
            Outbound::public_only("--allow-private-git")
        } else {
            Outbound::any()
        },
        deadline: started + c.opts.timeout,
        bytes_left: c.opts.max_bytes,
        files_left: c.opts.max_files,
        submodules_left: MAX_SUBMODULES,
        reporter,
    };
    let fetched = f.fetch(c.origin, Want::Ref(c.reference), c.dest, 0)?;
    event::info(
        reporter,
        format!(
            "{}: commit {} checked out in {:.1}s",
            c.origin,
            fetched.commit,
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(fetched)
}

/// What to fetch: what a user named, or a submodule's commit.
enum Want<'a> {
    Ref(Option<&'a str>),
    Commit(&'a str),
}

struct Fetcher<'a> {
    sources: &'a Path,
    private: &'a Path,
    opts: &'a GitOptions,
    access: Access,
    outbound: Outbound,
    deadline: Instant,
    bytes_left: u64,
    files_left: u64,
    submodules_left: usize,
    reporter: &'a dyn Reporter,
}

impl Fetcher<'_> {
    fn fetch(
        &mut self,
        origin: &Origin,
        want: Want<'_>,
        dest: &Path,
        depth: usize,
    ) -> Result<Fetched> {
        let (env, url) = self.env_for(origin)?;
        let cache = self.cache_of(origin);
        let fetched = {
            let _lock = lock(&cache.with_extension("lock"), self.deadline)?;
            remove_stale_locks(&cache);
            if !cache.join("HEAD").is_file() {
                env.git(None)
                    .args(["init", "--quiet", "--bare"])
                    .arg(&cache)
                    .run("make the source cache")?;
            }
            let fetched = match want {
                Want::Ref(reference) => resolve(&env, &cache, &url, reference, origin)?,
                Want::Commit(id) => Fetched {
                    commit: id.to_string(),
                    ref_name: None,
                },
            };
            let fetched = if fetched.commit.len() < 40 {
                self.fetch_all(&env, &cache, &url)?;
                let commit = local_commit(&env, &cache, &fetched.commit).with_context(|| {
                    SourceError(format!(
                        "{origin} has no branch, tag or commit {:?}",
                        fetched.commit
                    ))
                })?;
                Fetched { commit, ..fetched }
            } else {
                self.fetch_commit(&env, &cache, &url, &fetched, origin)?;
                // An annotated tag's object is not its commit.
                Fetched {
                    commit: local_commit(&env, &cache, &fetched.commit)?,
                    ..fetched
                }
            };
            // What the next fetch tells the server it has (git offers its
            // refs' commits), so only what changed comes over.
            let kept = match &fetched.ref_name {
                Some(name) => format!("refs/builderd/{}", name.trim_start_matches("refs/")),
                None => "refs/builderd/by-id".to_string(),
            };
            env.git(Some(&cache))
                .args(["update-ref", "--no-deref", &kept, &fetched.commit])
                .run("keep the commit in the source cache")?;
            fetched
        };
        let links = self.write_tree(&env, &cache, &fetched.commit, dest)?;
        if !links.is_empty() {
            self.submodules(&env, &cache, origin, &fetched.commit, &links, dest, depth)?;
        }
        Ok(fetched)
    }

    /// git's settings for `origin`, and the address git is given.
    fn env_for(&self, origin: &Origin) -> Result<(GitEnv, String)> {
        let (config, env, url, allow_file) = match origin {
            Origin::Local(path) => (Vec::new(), Vec::new(), path.display().to_string(), true),
            Origin::Remote(r) => {
                let ip = r.reach(&self.opts.insecure_hosts, &self.outbound)?;
                let (config, env) = self.access.for_remote(r, ip);
                (config, env, r.url_for_git(Some(ip)), false)
            }
        };
        Ok((
            GitEnv {
                deadline: self.deadline,
                max_file_bytes: self.opts.max_bytes.max(1 << 20),
                config,
                env,
                allow_file,
            },
            url,
        ))
    }

    /// The cache of `origin`'s objects in this namespace.
    fn cache_of(&self, origin: &Origin) -> PathBuf {
        let name = match origin {
            Origin::Local(p) => format!("file://{}", p.display()),
            Origin::Remote(r) => r.cache_name(),
        };
        let mut h = Sha256::new();
        h.update(self.opts.cache_namespace.as_bytes());
        h.update([0]);
        h.update(name.as_bytes());
        let hex = format!("{:x}", h.finalize());
        self.sources.join(format!("{}.git", &hex[..32]))
    }

    /// Fetches `fetched.commit` alone (shallow); a server that will not
    /// give a commit by its id gives the ref's tip, or everything.
    fn fetch_commit(
        &mut self,
        env: &GitEnv,
        cache: &Path,
        url: &str,
        fetched: &Fetched,
        origin: &Origin,
    ) -> Result<()> {
        if has_commit(env, cache, &fetched.commit) {
            event::info(
                self.reporter,
                format!("{origin}: {} is in the source cache", fetched.commit),
            );
            return Ok(());
        }
        let by_id = shallow_fetch(env, cache, url, &fetched.commit);
        match by_id {
            Ok(()) => {}
            Err(e) if failure_of(&e) != Some(Failure::Other) => return Err(e),
            Err(_) => {
                // A server that does not serve unadvertised commits (the
                // first protocol, without allowReachableSHA1InWant).
                match &fetched.ref_name {
                    Some(name) => shallow_fetch(env, cache, url, name)?,
                    None => self.fetch_all(env, cache, url)?,
                }
            }
        }
        if !has_commit(env, cache, &fetched.commit) {
            return Err(SourceError(format!(
                "{origin} did not give commit {} (did the ref move while it was fetched?)",
                fetched.commit
            ))
            .into());
        }
        Ok(())
    }

    /// Every branch and tag, whole (a short commit id can only be found so).
    fn fetch_all(&mut self, env: &GitEnv, cache: &Path, url: &str) -> Result<()> {
        let mut git = env
            .git(Some(cache))
            .args(["fetch", "--quiet", "--no-write-fetch-head"]);
        if cache.join("shallow").exists() {
            git = git.arg("--unshallow");
        }
        git.args([
            "--",
            url,
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
        ])
        .run("fetch the branches and tags")?;
        Ok(())
    }

    /// Writes `commit`'s files to `dest` once its size is known to fit;
    /// answers its submodules (path, commit).
    fn write_tree(
        &mut self,
        env: &GitEnv,
        cache: &Path,
        commit: &str,
        dest: &Path,
    ) -> Result<Vec<(String, String)>> {
        let listing = env
            .git(Some(cache))
            .args(["ls-tree", "-r", "-l", "-z", "--full-tree", commit])
            .run("list the commit's files")?;
        let mut links = Vec::new();
        let (mut bytes, mut files) = (0u64, 0u64);
        for entry in listing.split('\0').filter(|e| !e.is_empty()) {
            let (meta, path) = entry.split_once('\t').context("git ls-tree's output")?;
            let fields: Vec<&str> = meta.split_whitespace().collect();
            match fields.as_slice() {
                ["160000", "commit", id, _] => links.push((path.to_string(), id.to_string())),
                [_, "blob", _, size] => {
                    bytes += size.parse::<u64>().context("git ls-tree's size")?;
                    files += 1;
                }
                _ => anyhow::bail!("git ls-tree wrote {meta:?}"),
            }
        }
        if bytes > self.bytes_left || files > self.files_left {
            return Err(SourceError(format!(
                "the source is too large: {bytes} bytes in {files} files, and the build allows \
                 {} bytes and {} files (with its submodules)",
                self.opts.max_bytes, self.opts.max_files
            ))
            .into());
        }
        self.bytes_left -= bytes;
        self.files_left -= files;
        std::fs::create_dir_all(dest)?;
        let index = self
            .private
            .join(format!("index-{}", &commit[..12.min(commit.len())]));
        let _ = std::fs::remove_file(&index);
        env.git(Some(cache))
            .env("GIT_INDEX_FILE", &index)
            .args(["read-tree", commit])
            .run("read the commit's tree")?;
        env.git(Some(cache))
            .env("GIT_INDEX_FILE", &index)
            .args(["-c", "core.bare=false", "--work-tree"])
            .arg(dest)
            .args(["checkout-index", "--all", "--force", "--quiet"])
            .run("write the commit's files")?;
        let _ = std::fs::remove_file(&index);
        Ok(links)
    }

    /// Each submodule of `commit`, fetched at its recorded commit into
    /// its path under `dest`.
    #[allow(clippy::too_many_arguments)]
    fn submodules(
        &mut self,
        env: &GitEnv,
        cache: &Path,
        origin: &Origin,
        commit: &str,
        links: &[(String, String)],
        dest: &Path,
        depth: usize,
    ) -> Result<()> {
        if depth + 1 > MAX_DEPTH {
            anyhow::bail!("submodules are nested more than {MAX_DEPTH} deep");
        }
        let urls = gitmodules(env, cache, commit)?;
        for (path, id) in links {
            if self.submodules_left == 0 {
                anyhow::bail!("more than {MAX_SUBMODULES} submodules");
            }
            self.submodules_left -= 1;
            let url = urls.get(path).ok_or_else(|| {
                SourceError(format!(
                    "the submodule at {path:?} has no URL in .gitmodules"
                ))
            })?;
            let parent = match origin {
                Origin::Remote(parent) => Some(parent),
                Origin::Local(_) => None,
            };
            let remote = Remote::submodule(url, parent)
                .with_context(|| format!("the submodule at {path:?}"))?;
            event::info(self.reporter, format!("submodule {path}: {remote} at {id}"));
            let sub = Origin::Remote(remote);
            self.fetch(&sub, Want::Commit(id), &dest.join(path), depth + 1)
                .with_context(|| format!("the submodule at {path:?}"))?;
        }
        Ok(())
    }
}

/// The commit `reference` names on the server, by the server's own list:
/// its HEAD; a branch, then a tag; a full ref name; else, if it looks like
/// one, a commit id (short ones are found once everything is fetched).
fn resolve(
    env: &GitEnv,
    cache: &Path,
    url: &str,
    reference: Option<&str>,
    origin: &Origin,
) -> Result<Fetched> {
    let patterns: Vec<String> = match reference {
        None => vec!["HEAD".into()],
        Some(r) if r.starts_with("refs/") => vec![r.into()],
        Some(r) => vec![format!("refs/heads/{r}"), format!("refs/tags/{r}")],
    };
    let peeled = patterns.iter().map(|p| format!("{p}^{{}}"));
    let listing = env
        .git(Some(cache))
        .args(["ls-remote", "--symref", "--", url])
        .args(&patterns)
        .args(peeled)
        .run("list the repository's refs")?;
    let mut tips: HashMap<&str, &str> = HashMap::new();
    let mut head_branch = None;
    for line in listing.lines() {
        if let Some(sym) = line.strip_prefix("ref: ") {
            if let Some((target, "HEAD")) = sym.split_once('\t') {
                head_branch = Some(target.to_string());
            }
        } else if let Some((id, name)) = line.split_once('\t') {
            tips.insert(name, id);
        }
    }
    for name in &patterns {
        // An annotated tag's commit is its peeled entry.
        let id = tips
            .get(format!("{name}^{{}}").as_str())
            .or_else(|| tips.get(name.as_str()));
        if let Some(id) = id {
            let ref_name = match name.as_str() {
                "HEAD" => head_branch.clone(),
                _ => Some(name.clone()),
            };
            return Ok(Fetched {
                commit: checked_id(id)?,
                ref_name,
            });
        }
    }
    match reference {
        Some(r) if (4..=40).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(Fetched {
                commit: r.to_ascii_lowercase(),
                ref_name: None,
            })
        }
        Some(r) => Err(SourceError(format!("{origin} has no branch, tag or ref {r:?}")).into()),
        None => Err(SourceError(format!("{origin} has no HEAD (an empty repository?)")).into()),
    }
}

fn checked_id(id: &str) -> Result<String> {
    if id.len() != 40 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!("git named a commit {id:?}");
    }
    Ok(id.to_ascii_lowercase())
}

/// Fetches what `what` (a commit id or a ref) names, and no history.
fn shallow_fetch(env: &GitEnv, cache: &Path, url: &str, what: &str) -> Result<()> {
    env.git(Some(cache))
        .args([
            "fetch",
            "--quiet",
            "--depth=1",
            "--no-tags",
            "--no-write-fetch-head",
        ])
        .args(["--", url, what])
        .run(&format!("fetch {what}"))
        .map(drop)
}

fn has_commit(env: &GitEnv, cache: &Path, id: &str) -> bool {
    env.git(Some(cache))
        .args(["cat-file", "-e", &format!("{id}^{{commit}}")])
        .run("look in the cache")
        .is_ok()
}

/// The commit `short` names among what the cache holds.
fn local_commit(env: &GitEnv, cache: &Path, short: &str) -> Result<String> {
    let id = env
        .git(Some(cache))
        .args([
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &format!("{short}^{{commit}}"),
        ])
        .run(&format!("find commit {short}"))?;
    checked_id(id.trim())
}

/// `.gitmodules` of `commit`: each submodule's path and URL.
fn gitmodules(env: &GitEnv, cache: &Path, commit: &str) -> Result<HashMap<String, String>> {
    let listing = env
        .git(Some(cache))
        .args([
            "config",
            "-z",
            "--blob",
            &format!("{commit}:.gitmodules"),
            "--get-regexp",
        ])
        .arg(r"^submodule\..*\.(path|url)$")
        .run("read .gitmodules")
        .map_err(|e| {
            SourceError(format!(
                "the commit has submodules but no readable .gitmodules: {e:#}"
            ))
        })?;
    let (mut paths, mut urls) = (HashMap::new(), HashMap::new());
    for item in listing.split('\0').filter(|e| !e.is_empty()) {
        let (key, value) = item.split_once('\n').unwrap_or((item, ""));
        if let Some(name) = key
            .strip_prefix("submodule.")
            .and_then(|k| k.strip_suffix(".path"))
        {
            paths.insert(name.to_string(), value.to_string());
        } else if let Some(name) = key
            .strip_prefix("submodule.")
            .and_then(|k| k.strip_suffix(".url"))
        {
            urls.insert(name.to_string(), value.to_string());
        }
    }
    Ok(paths
        .into_iter()
        .filter_map(|(name, path)| Some((path, urls.remove(&name)?)))
        .collect())
}

/// git's own lock files that a fetch killed at its deadline left behind:
/// with the cache's lock held no other git works in it, so they are stale
/// (and would fail every later fetch).
fn remove_stale_locks(cache: &Path) {
    for name in [
        "shallow.lock",
        "packed-refs.lock",
        "config.lock",
        "HEAD.lock",
        "index.lock",
    ] {
        let _ = std::fs::remove_file(cache.join(name));
    }
}

/// Holds `path`'s lock (one fetch into a cache at a time) until dropped.
fn lock(path: &Path, deadline: Instant) -> Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    loop {
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("the source cache stayed busy with another build's fetch past the time for fetching");
        }
        std::thread::sleep(Duration::from_millis(100));
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
