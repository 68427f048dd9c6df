//! The step engine: buildah, run as a subprocess with storage of our own
//! (never the host's default), each container in a user namespace whose
//! root is `HOST_ID_BASE` on the host, with runc (`--isolation oci`: own
//! PID, mount, IPC, UTS and network namespaces; buildah's capability set
//! and seccomp profile, less user namespaces), no network unless egress,
//! and the steps' cgroup as its parent.
//! `--isolation chroot` would share the host's network and PIDs: never used.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

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

    /// A working container from the image in the OCI layout `layout`.
    pub fn from(&self, layout: &Path, tag: &str, cgroup_parent: &str) -> Result<Container<'_>> {
        let name = format!(
            "builderd-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let map = format!("0:{HOST_ID_BASE}:{HOST_ID_RANGE}");
        // The engine names the image after the layout's path, which must
        // then be a valid repository name (lower case): the layout is
        // handed over as descriptor 3, whatever its path.
        let dir =
            std::fs::File::open(layout).with_context(|| format!("opening {}", layout.display()))?;
        let image = format!("oci:/proc/self/fd/{LAYOUT_FD}:{tag}");
        let seccomp = format!("seccomp={}", self.seccomp.display());
        let mut from = self.command();
        pass_as(&mut from, &dir, LAYOUT_FD);
        self.run_to_end(
            from,
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
                &image,
            ],
            "start a container from the base image",
        )?;
        drop(dir);
        let container = Container { engine: self, name };
        self.remember_base(&container.name)?;
        container.prepare_root()?;
        Ok(container)
    }

    /// Marks the container's base image as used now (a file named by its
    /// id in `bases/`, whose time is its last use).
    fn remember_base(&self, container: &str) -> Result<()> {
        let id = self.output(
            &[
                "inspect",
                "--type",
                "container",
                "--format",
                "{{.FromImageID}}",
                container,
            ],
            "name the base image",
        )?;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            anyhow::bail!("the engine named the base image {id:?}");
        }
        let bases = self.bases();
        std::fs::create_dir_all(&bases)
            .and_then(|()| std::fs::write(bases.join(&id), b""))
            .with_context(|| format!("recording the base in {}", bases.display()))
    }

    fn bases(&self) -> PathBuf {
        self.root.with_file_name("bases")
    }

    /// Removes the images beyond the `KEEP_BASES` most recently used (one
    /// another build still runs on stays): each base a build used stays
    /// unpacked for the next, but the storage does not grow without bound.
    pub fn prune(&self) {
        let Ok(images) = self.output(
            &["images", "--noheading", "--no-trunc", "--format", "{{.ID}}"],
            "list its images",
        ) else {
            return;
        };
        let mut used: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(self.bases())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let when = e.metadata().ok()?.modified().ok()?;
                Some((when, e.file_name().into_string().ok()?))
            })
            .collect();
        used.sort_by(|a, b| b.cmp(a));
        let kept: Vec<&str> = used
            .iter()
            .take(KEEP_BASES)
            .map(|(_, id)| id.as_str())
            .collect();
        for id in images.lines().map(|l| l.trim_start_matches("sha256:")) {
            if !kept.contains(&id) && self.output(&["rmi", id], "remove an old base").is_ok() {
                let _ = std::fs::remove_file(self.bases().join(id));
            }
        }
    }
}

/// How many base images an engine storage keeps (each build from one of
/// them skips unpacking it).
pub const KEEP_BASES: usize = 4;

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

/// The descriptor the base layout is handed over as.
const LAYOUT_FD: i32 = 3;

/// Makes `file` descriptor `fd` of `command`'s process.
fn pass_as(command: &mut Command, file: &std::fs::File, fd: i32) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let from = file.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (dup2, fcntl), on descriptors this process holds; nothing allocates.
    unsafe {
        command.pre_exec(move || {
            if from == fd {
                // dup2 onto itself keeps close-on-exec: clear it instead.
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(from, fd) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
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
    /// The container's root directory belongs to the namespace's root,
    /// and the runtime's mount points exist. The container stays mounted
    /// from here to its removal: each new mount of it gives its root
    /// directory back to the host's root (the storage copies the owner of
    /// the image's root), and the steps' runs reuse this mount.
    fn prepare_root(&self) -> Result<()> {
        let merged = self
            .engine
            .output(&["mount", &self.name], "mount the container")?;
        let merged = PathBuf::from(merged);
        let chown = |path: &Path| {
            std::os::unix::fs::chown(path, Some(HOST_ID_BASE), Some(HOST_ID_BASE))
                .with_context(|| format!("giving {} to the step's root", path.display()))
        };
        // The root directory is the overlay's upper directory itself; a
        // chown through the overlay does not reach it.
        chown(&upper_dir(&merged)?)?;
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

/// The upper directory of the overlay mounted at `merged`, from the mount
/// table.
fn upper_dir(merged: &Path) -> Result<PathBuf> {
    let table =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading the mount table")?;
    let at = format!(" {} ", merged.display());
    table
        .lines()
        .filter(|l| l.contains(&at) && l.contains(" - overlay "))
        .find_map(|l| {
            l.rsplit(' ')
                .next()?
                .split(',')
                .find_map(|o| o.strip_prefix("upperdir="))
                .map(PathBuf::from)
        })
        .with_context(|| {
            format!(
                "no overlay with an upper directory is mounted at {}",
                merged.display()
            )
        })
}

/// How the engine reports a step's non-zero exit, on its stderr.
const ENGINE_EXIT: &str = "Error: while running runtime: exit status ";
