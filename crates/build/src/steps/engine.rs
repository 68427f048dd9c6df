//! The step engine: buildah, run as a subprocess with storage of our own
//! (never the host's default). Each container is made from nothing and
//! given the base as a disk of ours under its overlay
//! (`Container::attach_base`: the engine's own import of a large image was
//! most of a build's time). It runs in a user namespace whose root is
//! `HOST_ID_BASE` on the host, with runc (`--isolation oci`: own PID,
//! mount, IPC, UTS and network namespaces; buildah's capability set and
//! seccomp profile, less user namespaces), no network unless egress, and
//! the steps' cgroup as its parent.
//! `--isolation chroot` would share the host's network and PIDs: never used.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use builderd_oci::RunConfig;

use super::output::{read_lines, Tail};
use super::run_mounts::CacheDir;
use crate::error::SourceError;
use crate::event::OutputStream;

/// The host uid and gid a step's root (0) is; the namespace maps
/// `HOST_ID_RANGE` ids from there.
pub const HOST_ID_BASE: u32 = 100_000;
pub const HOST_ID_RANGE: u32 = 65_536;

pub struct Engine {
    root: PathBuf,
    runroot: PathBuf,
    /// buildah's own temporary files (each run's bundle) go here.
    tmp: PathBuf,
    /// The steps' seccomp profile.
    seccomp: PathBuf,
    /// Whether image layers are copied, never ID-mapped (`for_builds`).
    copied_layers: bool,
}

impl Engine {
    /// The engine with its storage in `dir` (nothing run yet: see
    /// `ready`).
    pub fn new(dir: &Path) -> Result<Engine> {
        let (root, runroot, tmp) = (dir.join("storage"), dir.join("run"), dir.join("tmp"));
        for d in [&root, &runroot, &tmp] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        searchable(dir)?;
        let engine = Engine {
            seccomp: super::seccomp::write_profile(dir)?,
            root,
            runroot,
            tmp,
            copied_layers: false,
        };
        Ok(engine)
    }

    /// The engine for Containerfile builds, with its storage in `dir`: as
    /// `new`, and its overlay never mounts the image's layers ID-mapped.
    /// With ID-mapped lower layers, buildah 1.28 commits what a `RUN`
    /// wrote with the host's ids (100000 and up) and maps them again when
    /// the next instruction runs over that layer, so a layer cache would
    /// hand steps files they cannot write. Without, the storage keeps
    /// shifted copies and each commit is read back in the image's ids.
    /// (c/storage reads the kernel check's recorded answer from its run
    /// root; later versions also take the variable.)
    pub fn for_builds(dir: &Path) -> Result<Engine> {
        let mut engine = Engine::new(dir)?;
        engine.copied_layers = true;
        let records = engine.runroot.join("overlay");
        std::fs::create_dir_all(&records)
            .with_context(|| format!("creating {}", records.display()))?;
        let _ = std::fs::remove_file(records.join("idmapped-lower-dir-true"));
        let off = records.join("idmapped-lower-dir-false");
        std::fs::write(&off, "builderd: layers are copied, never ID-mapped")
            .with_context(|| format!("writing {}", off.display()))?;
        Ok(engine)
    }

    /// Makes the engine ready for a build: a clear error if buildah is not
    /// installed or its storage would not do, and what builds now gone left
    /// behind removed.
    pub fn ready(&self) -> Result<()> {
        super::host::require(
            "buildah",
            "--version",
            "buildah runc uidmap",
            "run build steps",
        )?;
        self.sweep();
        self.require_native_diff()
    }

    /// The engine's commit of a container made from nothing reads what
    /// changed from the overlay's upper directory only where its storage
    /// diffs natively; where it would compare trees instead (metacopy, a
    /// mount program, a kernel redirecting directories), the steps'
    /// deletions would not reach the image: refused.
    fn require_native_diff(&self) -> Result<()> {
        let native = self.output(
            &[
                "info",
                "--format",
                r#"{{index .store.GraphStatus "Native Overlay Diff"}}"#,
            ],
            "describe its storage",
        )?;
        if native != "true" {
            anyhow::bail!(
                "build steps need buildah's overlay storage to diff natively (no metacopy, no mount program); its \"Native Overlay Diff\" is {native:?}"
            );
        }
        Ok(())
    }

    /// Removes the containers that builderd processes now gone left
    /// behind (a build killed before it could remove its own).
    fn sweep(&self) {
        let Ok(names) = self.output(
            &[
                "containers",
                "--noheading",
                "--format",
                "{{.ContainerName}}",
            ],
            "list its containers",
        ) else {
            return;
        };
        for name in names.lines() {
            if super::owner::gone(name, "builderd-") {
                let _ = self.output(&["rm", name], "remove a stale container");
            }
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--storage-driver", "overlay"])
            .env("TMPDIR", &self.tmp)
            // The host's registry logins play no part.
            .env_remove("REGISTRY_AUTH_FILE")
            .stdin(Stdio::null());
        if self.copied_layers {
            c.env("_CONTAINERS_OVERLAY_DISABLE_IDMAP", "yes");
        }
        c
    }

    /// Runs a buildah command to its end; answers its stdout.
    fn output(&self, args: &[&str], what: &str) -> Result<String> {
        let out = self
            .command()
            .args(args)
            .output()
            .with_context(|| format!("running buildah to {what}"))?;
        if !out.status.success() {
            anyhow::bail!(
                "buildah could not {what}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// A working container of nothing (the base comes as a disk of ours,
    /// see `Container::attach_base`) that runs steps as `run` says.
    pub fn empty_container(&self, run: &RunConfig, cgroup_parent: &str) -> Result<Container<'_>> {
        let name = format!(
            "builderd-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let map = format!("0:{HOST_ID_BASE}:{HOST_ID_RANGE}");
        let seccomp = format!("seccomp={}", self.seccomp.display());
        self.output(
            &[
                "from",
                "--quiet",
                "--name",
                &name,
                "--isolation",
                "oci",
                "--network",
                "none",
                "--userns-uid-map",
                &map,
                "--userns-gid-map",
                &map,
                "--cgroup-parent",
                cgroup_parent,
                "--security-opt",
                &seccomp,
                "scratch",
            ],
            "start a container",
        )?;
        let container = Container { engine: self, name };
        // What the image's config says of how it runs: the steps run so.
        let mut config: Vec<String> = vec!["config".into()];
        for var in &run.env {
            config.extend(["--env".into(), var.clone()]);
        }
        if !run.working_dir.is_empty() {
            config.extend(["--workingdir".into(), run.working_dir.clone()]);
        }
        if !run.user.is_empty() {
            config.extend(["--user".into(), run.user.clone()]);
        }
        if config.len() > 1 {
            config.push(container.name.clone());
            let args: Vec<&str> = config.iter().map(String::as_str).collect();
            self.output(&args, "give the container the image's settings")?;
        }
        Ok(container)
    }
}

/// The runtime reaches a container's root through the storage's path as
/// the step's root (`HOST_ID_BASE`, an other user to every directory on
/// the way): each must let others search it (o+x; reading is not needed).
fn searchable(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    for d in dir.ancestors() {
        let mode = std::fs::metadata(d)
            .with_context(|| format!("reading {}", d.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            anyhow::bail!(
                "build steps cannot use {}: {} is mode {:o}, and the steps' root (uid {HOST_ID_BASE} on this host) must pass through it; allow others to search it (chmod o+x) or choose a steps directory elsewhere",
                dir.display(),
                d.display(),
                mode & 0o7777
            );
        }
    }
    Ok(())
}

/// How a step runs.
pub struct RunOptions<'a> {
    /// USER[:GROUP]; None: the image's.
    pub user: Option<&'a str>,
    /// The network namespace to join; None: a new one, loopback only.
    pub network: Option<&'a Path>,
    /// Directories of the image whose contents persist from build to
    /// build of the same storage, outside the image.
    pub caches: &'a [String],
}

/// A working container; removed when dropped.
pub struct Container<'e> {
    engine: &'e Engine,
    name: String,
}

/// Directories the runtime mounts over: made beforehand when the image
/// lacks them (the runtime, as the namespace's root, may not make them in
/// a root directory the host owns).
pub const MOUNT_POINTS: [&str; 4] = ["proc", "sys", "dev", "run"];

impl Container<'_> {
    /// Puts the base under the container: the engine's own overlay of the
    /// container (an empty lower layer, as it is made from scratch) is
    /// mounted again with `lower`, a directory of the base's tree, as its
    /// lower layer, on the same upper and work directories, so what the
    /// steps change lands where the engine's commit reads it. The root
    /// directory takes the base root's owner and mode, and the runtime's
    /// mount points are made where the base lacks them (the runtime, as the
    /// namespace's root, may not make them in a directory of another
    /// owner). The container stays mounted from here to its removal: the
    /// engine's runs reuse a mounted container as it is.
    pub fn attach_base(&self, lower: &Path) -> Result<()> {
        let merged = self
            .engine
            .output(&["mount", &self.name], "mount the container")?;
        let merged = PathBuf::from(merged);
        let options = super::mounts::overlay_options(&merged)?;
        let option = |key: &str| {
            options
                .split(',')
                .find_map(|o| o.strip_prefix(key))
                .map(|v| PathBuf::from(super::mounts::unescape(v)))
                .with_context(|| format!("the container's overlay has no {key}"))
        };
        let (upper, work) = (option("upperdir=")?, option("workdir=")?);
        let lower_text = lower.to_string_lossy();
        if lower_text.contains([',', ':', '\\']) || lower_text.contains(char::is_whitespace) {
            anyhow::bail!(
                "the steps' storage path {} cannot go into mount options (no commas, colons, backslashes or spaces)",
                lower.display()
            );
        }
        super::mounts::unmount(&merged);
        // A volatile overlay leaves a mark in its work directory that
        // refuses the next mount on it; nothing else is kept there.
        let marks = work.join("work");
        if marks.exists() {
            std::fs::remove_dir_all(&marks)
                .with_context(|| format!("clearing {}", marks.display()))?;
        }
        // The root directory is the upper directory itself, and the overlay
        // takes its attributes when mounted.
        let root = std::fs::metadata(lower)
            .with_context(|| format!("reading the base's root {}", lower.display()))?;
        {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            std::os::unix::fs::chown(&upper, Some(root.uid()), Some(root.gid()))
                .and_then(|()| {
                    std::fs::set_permissions(
                        &upper,
                        std::fs::Permissions::from_mode(root.mode() & 0o7777),
                    )
                })
                .with_context(|| format!("giving {} the base root's owner", upper.display()))?;
        }
        let data: Vec<String> = options
            .split(',')
            .filter(|o| !o.starts_with("lowerdir=") && !matches!(*o, "rw" | "ro"))
            .map(str::to_string)
            .chain([format!("lowerdir={lower_text}")])
            .collect();
        super::mounts::mount_overlay(&merged, &data.join(","))?;
        let chown = |path: &Path| {
            std::os::unix::fs::chown(path, Some(HOST_ID_BASE), Some(HOST_ID_BASE))
                .with_context(|| format!("giving {} to the step's root", path.display()))
        };
        for dir in MOUNT_POINTS {
            let path = merged.join(dir);
            if std::fs::symlink_metadata(&path).is_err() {
                std::fs::create_dir(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                chown(&path)?;
            }
        }
        Ok(())
    }

    /// Runs `/bin/sh -c command` in the container as `how` says; each line
    /// of output goes to `line` as it comes. Answers the exit code and the
    /// last lines of output.
    pub fn run(
        &self,
        command: &str,
        how: &RunOptions<'_>,
        line: &(dyn Fn(OutputStream, String) + Sync),
    ) -> Result<(i32, Vec<String>)> {
        let mut c = self.engine.command();
        c.args(["run", "--isolation", "oci"]);
        match how.network {
            None => c.args(["--network", "none"]),
            // A network namespace the step's user namespace does not own:
            // sysfs cannot be mounted there (and the host's is not lent).
            Some(ns) => c
                .arg("--network")
                .arg(format!("ns:{}", ns.display()))
                .args(["--mount", "type=tmpfs,destination=/sys"]),
        };
        for dir in how.caches {
            // Kept in the engine's storage (its TMPDIR), owned by the
            // step's root.
            c.arg("--mount").arg(format!(
                "type=cache,target={dir},uid={HOST_ID_BASE},gid={HOST_ID_BASE}"
            ));
        }
        if let Some(user) = how.user {
            c.args(["--user", user]);
        }
        c.args([&self.name, "--", "/bin/sh", "-c", command]);
        streamed(c, line)
    }

    /// Commits what the steps changed into the OCI layout `out`, tagged
    /// `tag`.
    pub fn commit(&self, out: &Path, tag: &str) -> Result<()> {
        let dest = format!("oci:{}:{tag}", out.display());
        self.engine.output(
            &[
                "commit",
                "--quiet",
                "--disable-compression",
                "--format",
                "oci",
                &self.name,
                &dest,
            ],
            "commit what the steps changed",
        )?;
        Ok(())
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .engine
            .command()
            .args(["rm", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `c` to its end, each line of its output to `line` as it comes;
/// answers its exit code and last lines.
fn streamed(
    mut c: Command,
    line: &(dyn Fn(OutputStream, String) + Sync),
) -> Result<(i32, Vec<String>)> {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().context("running buildah")?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let tail = std::sync::Mutex::new(Tail::default());
    std::thread::scope(|s| {
        let read = |from: Box<dyn Read + Send>, stream: OutputStream| {
            let tail = &tail;
            s.spawn(move || {
                let each = |text: String| {
                    tail.lock().unwrap().push(&text);
                    line(stream, text);
                };
                // The engine's own last word on a step that failed
                // ("Error: while running runtime: exit status 3") says
                // nothing the exit code does not: held back, and dropped
                // when it is the last line.
                let mut held: Option<String> = None;
                read_lines(from, |text| {
                    if let Some(h) = held.take() {
                        each(h);
                    }
                    if stream == OutputStream::Stderr && text.starts_with(ENGINE_EXIT) {
                        held = Some(text);
                    } else {
                        each(text);
                    }
                })
            })
        };
        read(Box::new(stdout), OutputStream::Stdout);
        read(Box::new(stderr), OutputStream::Stderr);
    });
    let status = child.wait().context("waiting for buildah")?;
    let code = status.code().unwrap_or(128 + 9);
    Ok((code, tail.into_inner().unwrap().lines))
}

/// A Containerfile to build into an OCI layout.
pub struct ContainerfileBuild<'a> {
    pub context: &'a Path,
    pub containerfile: &'a Path,
    pub build_args: &'a [(String, String)],
    /// Where the image goes, as an OCI layout, tagged `tag`.
    pub layout: &'a Path,
    pub tag: &'a str,
    /// Registries reached over plain HTTP for its `FROM` images (besides
    /// those on loopback).
    pub insecure: &'a [String],
    pub secrets: &'a [crate::request::BuildSecret],
    /// With a layer cache (`--layers`): the name its layers are kept
    /// under, one per project in the namespace (the next build of the
    /// project replaces what this one kept and no later build reuses).
    pub layer_cache: Option<&'a str>,
    /// What the build host reaches may be taken (`ProjectOptions`).
    pub host_sources: bool,
    /// With `BuildRequest::hold_after_resolve`: what the build is of (a
    /// commit and everything else that shapes it but the Containerfile),
    /// told with the pinned Containerfile as `Event::Resolved` before
    /// anything runs, so that the service may answer from its cache.
    pub hold: Option<&'a str>,
    /// `FROM` registries only at public addresses.
    pub public_only: bool,
    /// Whose build it is: builds of one namespace share an engine storage
    /// (their base images, layer cache and cache mounts), never another's.
    pub namespace: &'a str,
}

/// How a Containerfile is built.
pub struct BuildOptions<'a> {
    pub build: &'a ContainerfileBuild<'a>,
    /// The name the image gets in the engine's storage.
    pub image: &'a str,
    pub cgroup_parent: &'a str,
    /// The network namespace its `RUN`s join; None: none.
    pub network: Option<&'a Path>,
    /// Whether each instruction is committed and reused when it and what
    /// it reads are unchanged (buildah's `--layers`).
    pub layers: bool,
    /// The Containerfile as built: `build.containerfile` with its `FROM`
    /// images pinned.
    pub containerfile: &'a Path,
}

impl Engine {
    /// Builds a Containerfile into the image `how.image`, each `RUN` in a
    /// container isolated as a step's is.
    pub fn build(
        &self,
        how: &BuildOptions<'_>,
        line: &(dyn Fn(OutputStream, String) + Sync),
    ) -> Result<(i32, Vec<String>)> {
        let map = format!("0:{HOST_ID_BASE}:{HOST_ID_RANGE}");
        let mut c = self.command();
        c.args(["build", "--isolation", "oci"])
            .arg(format!("--layers={}", how.layers))
            .args(["--userns-uid-map", &map, "--userns-gid-map", &map])
            .args(["--cgroup-parent", how.cgroup_parent])
            .arg("--security-opt")
            .arg(format!("seccomp={}", self.seccomp.display()))
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.registries(how.build.insecure)?,
            );
        match how.network {
            None => c.args(["--network", "none"]),
            // As for a step: sysfs cannot be mounted in a network namespace
            // the build's user namespace does not own, so an empty
            // directory stands at /sys (`build` takes no tmpfs mounts), with
            // the mount point the runtime mounts the cgroups on.
            Some(ns) => {
                let empty = self.tmp.join("empty-sys");
                std::fs::create_dir_all(empty.join("fs/cgroup"))
                    .with_context(|| format!("creating {}", empty.display()))?;
                c.arg("--network")
                    .arg(format!("ns:{}", ns.display()))
                    .arg("--volume")
                    .arg(format!("{}:/sys:ro", empty.display()))
            }
        };
        for (key, value) in how.build.build_args {
            c.arg("--build-arg").arg(format!("{key}={value}"));
        }
        for secret in how.build.secrets {
            c.arg("--secret")
                .arg(format!("id={},src={}", secret.id, secret.src.display()));
        }
        c.arg("--file")
            .arg(how.containerfile)
            .args(["--tag", how.image])
            .arg(how.build.context);
        streamed(c, line)
    }

    /// The engine's registry settings for one build: loopback registries
    /// and `insecure` ones over plain HTTP, no search registries (a short
    /// name is refused, not looked up on some registry).
    fn registries(&self, insecure: &[String]) -> Result<PathBuf> {
        let mut text = String::from("unqualified-search-registries = []\n");
        let loopback = ["localhost", "127.0.0.1", "[::1]"];
        for host in loopback
            .iter()
            .map(|h| h.to_string())
            .chain(insecure.iter().cloned())
        {
            if host.contains(['"', '\\', '\n']) {
                anyhow::bail!("the registry {host:?} cannot go into the engine's settings");
            }
            text.push_str(&format!(
                "[[registry]]\nprefix = \"{host}\"\nlocation = \"{host}\"\ninsecure = true\n"
            ));
        }
        let path = self
            .tmp
            .join(format!("registries-{}.conf", std::process::id()));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Where buildah's own temporary files go.
    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// Pulls `image` into the storage (anew if its tag moved); answers its
    /// id and its `ONBUILD` triggers.
    pub fn pull(&self, image: &str, insecure: &[String]) -> Result<(String, Vec<String>)> {
        let out = self
            .command()
            .env("CONTAINERS_REGISTRIES_CONF", self.registries(insecure)?)
            .args(["pull", "--quiet", "--policy", "always", image])
            .output()
            .context("running buildah to pull an image")?;
        if !out.status.success() {
            return Err(SourceError(format!(
                "the image {image} could not be pulled: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
            .into());
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let text = self.output(&["inspect", "--type", "image", &id], "describe an image")?;
        let described: serde_json::Value =
            serde_json::from_str(&text).context("reading buildah's description of an image")?;
        let triggers = ["config", "container_config"]
            .iter()
            .filter_map(|c| described["Docker"][c]["OnBuild"].as_array())
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        Ok((id, triggers))
    }

    /// Makes the cache mounts' directories, each owned by the steps' root
    /// (or the mount's `uid`/`gid`). Every directory on the way is one
    /// this made, owned by the host's root: a path through a cache, which
    /// a step could have filled with links, is refused.
    pub fn prepare_caches(&self, dirs: &[CacheDir]) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let parent = self.tmp.join("buildah-cache");
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        for dir in dirs {
            let names: Vec<&str> = dir.path.split('/').filter(|n| !n.is_empty()).collect();
            let mut at = parent.clone();
            for (i, name) in names.iter().enumerate() {
                at.push(name);
                let leaf = i + 1 == names.len();
                match std::fs::symlink_metadata(&at) {
                    Ok(m) if m.file_type().is_dir() && (leaf || m.uid() == 0) => {}
                    Ok(_) => {
                        return Err(SourceError(format!(
                            "the cache mount {:?} lies inside another cache mount",
                            dir.path
                        ))
                        .into())
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        match std::fs::create_dir(&at) {
                            // Another build of the namespace made it: as
                            // any existing one, a directory of the host's
                            // root's on the way.
                            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                                let m = std::fs::symlink_metadata(&at)
                                    .with_context(|| format!("reading {}", at.display()))?;
                                if !m.file_type().is_dir() || (!leaf && m.uid() != 0) {
                                    return Err(SourceError(format!(
                                        "the cache mount {:?} lies inside another cache mount",
                                        dir.path
                                    ))
                                    .into());
                                }
                                continue;
                            }
                            made => made.with_context(|| format!("creating {}", at.display()))?,
                        }
                        if leaf {
                            std::os::unix::fs::chown(
                                &at,
                                Some(HOST_ID_BASE + dir.uid),
                                Some(HOST_ID_BASE + dir.gid),
                            )
                            .with_context(|| format!("giving {} to the steps", at.display()))?;
                        }
                    }
                    Err(e) => return Err(e).context(format!("reading {}", at.display())),
                }
            }
        }
        Ok(())
    }

    /// How many of the image's layers its build made: those over the
    /// layers of the image its last stage came from (buildah names that
    /// one in the annotation read here), all of them for `FROM scratch`.
    pub fn built_layers(&self, image: &str) -> Result<usize> {
        let inspect = |name: &str| -> Result<serde_json::Value> {
            let text = self.output(&["inspect", "--type", "image", name], "describe an image")?;
            serde_json::from_str(&text).context("reading buildah's description of an image")
        };
        let diff_ids = |image: &serde_json::Value| {
            image["OCIv1"]["rootfs"]["diff_ids"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        let built = inspect(image)?;
        let all = diff_ids(&built);
        let base = match built["ImageAnnotations"]["org.opencontainers.image.base.name"].as_str() {
            Some(name) => diff_ids(&inspect(name)?),
            None => Vec::new(),
        };
        // A base renamed since (another build pulled a newer one) is no
        // longer the prefix: every layer counts as built.
        let base = if all.starts_with(&base) {
            base.len()
        } else {
            0
        };
        Ok(all.len() - base)
    }

    /// Writes the image `image` into the OCI layout `dir`, tagged `tag`, its
    /// layers uncompressed (the flatten reads them next).
    pub fn push_layout(&self, image: &str, dir: &Path, tag: &str) -> Result<()> {
        let dest = format!("oci:{}:{tag}", dir.display());
        self.output(
            &["push", "--quiet", "--disable-compression", image, &dest],
            "write the built image out",
        )
        .map(drop)
    }

    /// Removes the image `image` from the storage (its base stays).
    pub fn remove_image(&self, image: &str) {
        let _ = self.output(&["rmi", image], "remove the built image's name");
    }

    /// Keeps the image `image` and the instructions' images under it as
    /// the layer cache `key`, in place of the image kept there before (and
    /// those of its instructions' images no other image stands on).
    pub fn keep_as_cache(&self, image: &str, key: &str) -> Result<()> {
        let name = format!("localhost/builderd-cache:{key}");
        let id = |name: &str| {
            self.output(
                &[
                    "inspect",
                    "--type",
                    "image",
                    "--format",
                    "{{.FromImageID}}",
                    name,
                ],
                "describe an image",
            )
        };
        let before = id(&name).ok();
        self.output(&["tag", image, &name], "keep the layer cache")?;
        // The build's own name goes; the image stays under the cache's.
        self.remove_image(image);
        if let Some(before) = before.filter(|b| *b != id(&name).unwrap_or_default()) {
            let _ = self.output(&["rmi", &before], "drop the replaced layer cache");
        }
        Ok(())
    }
}

/// How the engine reports a step's non-zero exit, on its stderr.
const ENGINE_EXIT: &str = "Error: while running runtime: exit status ";
