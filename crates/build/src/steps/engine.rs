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
}

impl Engine {
    /// The engine with its storage in `dir`; a clear error if buildah is
    /// not installed.
    pub fn new(dir: &Path) -> Result<Engine> {
        super::host::require(
            "buildah",
            "--version",
            "buildah runc uidmap",
            "run build steps",
        )?;
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
        };
        engine.sweep();
        Ok(engine)
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
            // The host's registries and policy play no part: the base
            // image comes from a layout of ours.
            .env_remove("REGISTRY_AUTH_FILE")
            .stdin(Stdio::null());
        c
    }

    /// Runs a buildah command to its end; answers its stdout.
    fn output(&self, args: &[&str], what: &str) -> Result<String> {
        self.run_to_end(self.command(), args, what)
    }

    fn run_to_end(&self, mut command: Command, args: &[&str], what: &str) -> Result<String> {
        let out = command
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
        let options = overlay_options(&merged)?;
        let option = |key: &str| {
            options
                .split(',')
                .find_map(|o| o.strip_prefix(key))
                .map(|v| PathBuf::from(super::disk::unescape(v)))
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
        super::disk::unmount(&merged);
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
        mount_overlay(&merged, &data.join(","))?;
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
        c.args([&self.name, "--", "/bin/sh", "-c", command])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
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
                    // nothing the exit code does not: held back, and
                    // dropped when it is the last line.
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

    /// Commits what the steps changed into the OCI layout `out`, whose
    /// blobs named by the base's `diff_ids` are there already (placeholders:
    /// the engine then writes only the new layer), tagged `tag`.
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

/// The options of the overlay mounted at `merged`, from the mount table.
fn overlay_options(merged: &Path) -> Result<String> {
    let table =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading the mount table")?;
    table
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|p| Path::new(&super::disk::unescape(p)) == merged)
                && l.contains(" - overlay ")
        })
        .find_map(|l| l.rsplit(' ').next().map(str::to_string))
        .with_context(|| format!("no overlay is mounted at {}", merged.display()))
}

/// Mounts an overlay at `at` with `options`, without device files.
fn mount_overlay(at: &Path, options: &str) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |b: &[u8]| std::ffi::CString::new(b).context("a NUL in a mount argument");
    let (target, data) = (c(at.as_os_str().as_bytes())?, c(options.as_bytes())?);
    let kind = c(b"overlay")?;
    // SAFETY: mount(2) with NUL-terminated strings that live across the
    // call.
    let r = unsafe {
        libc::mount(
            kind.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting the base under the container at {}", at.display()));
    }
    Ok(())
}

/// How the engine reports a step's non-zero exit, on its stderr.
const ENGINE_EXIT: &str = "Error: while running runtime: exit status ";
