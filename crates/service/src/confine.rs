//! What a build process may use. Each build runs in a cgroup of its own,
//! where the machine gives one (cgroup v1's memory and pids controllers, or
//! v2 with both enabled for us), with its tier's memory and process limits;
//! and under rlimits in any case (no core files, a bound on descriptors, and
//! where no cgroup can be had, a bound on its data segment instead of the
//! memory controller). A hostile image then costs its own build, not the
//! server or the other tenants' builds.
//!
//! The process joins its cgroup between fork and exec (`enter`), so none of
//! its work ever runs outside it.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where builds' cgroups go, if anywhere.
#[derive(Debug)]
pub enum Confinement {
    /// v1: a directory of ours under the memory and the pids hierarchies.
    V1 { memory: PathBuf, pids: PathBuf },
    /// v2: a directory of ours with both controllers enabled for children.
    V2(PathBuf),
    /// No cgroup to be had (not root, or none mounted): rlimits only.
    Rlimits,
}

/// What one build may use.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub memory_bytes: u64,
    pub processes: u64,
}

/// Descriptors a build may hold open (blobs, the image, pipes: a few dozen).
const MAX_FILES: libc::rlim_t = 4096;
/// Room for threads' stacks on top of the memory bound, when the data
/// segment is what bounds memory (stacks are mappings it counts).
const STACKS: u64 = 256 << 20;

impl Confinement {
    /// Sets up this server's cgroup directory, named after its process id
    /// (removed by `close`); anything older of a server that is gone is
    /// removed first.
    pub fn open() -> Confinement {
        let root = Path::new("/sys/fs/cgroup");
        let name = format!("builderd-{}", std::process::id());
        let (memory, pids) = (root.join("memory"), root.join("pids"));
        // (A v1 hierarchy's root has no pids.max: its children do.)
        let v1 = |h: &Path, name: &str| {
            std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
                m.lines().any(|l| {
                    l.contains(&format!(" {} ", h.display()))
                        && l.contains(" cgroup ")
                        && l.contains(name)
                })
            })
        };
        if v1(&memory, "memory") && v1(&pids, "pids") {
            let dirs = (memory.join(&name), pids.join(&name));
            sweep(&memory);
            sweep(&pids);
            if std::fs::create_dir_all(&dirs.0).is_ok() && std::fs::create_dir_all(&dirs.1).is_ok()
            {
                return Confinement::V1 {
                    memory: dirs.0,
                    pids: dirs.1,
                };
            }
            let _ = std::fs::remove_dir(&dirs.0);
            let _ = std::fs::remove_dir(&dirs.1);
        }
        let controllers =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if has("memory") && has("pids") {
            sweep(root);
            let dir = root.join(&name);
            let enabled = std::fs::create_dir_all(&dir).is_ok()
                && std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids").is_ok()
                && std::fs::write(dir.join("cgroup.subtree_control"), "+memory +pids").is_ok();
            if enabled {
                return Confinement::V2(dir);
            }
            let _ = std::fs::remove_dir(&dir);
        }
        Confinement::Rlimits
    }

    pub fn describe(&self) -> String {
        match self {
            Confinement::V1 { memory, .. } => format!("cgroup v1 ({})", memory.display()),
            Confinement::V2(dir) => format!("cgroup v2 ({})", dir.display()),
            Confinement::Rlimits => {
                "rlimits only (no cgroup with memory and pids controllers)".into()
            }
        }
    }

    /// A cgroup for build `id` with `bounds` (rlimits only where there is
    /// none to be had; an error only if one there is cannot be made).
    pub fn cell(&self, id: &str, bounds: Bounds) -> std::io::Result<Cell> {
        let mut cell = Cell {
            dirs: Vec::new(),
            procs: Vec::new(),
            bounds,
            oom_files: Vec::new(),
        };
        let mut make = |dir: PathBuf, settings: &[(&str, String)]| -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            cell.dirs.push(dir.clone());
            for (file, value) in settings {
                std::fs::write(dir.join(file), value)?;
            }
            cell.procs.push(
                CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
                    .map_err(std::io::Error::other)?,
            );
            Ok(())
        };
        match self {
            Confinement::V1 { memory, pids } => {
                make(
                    memory.join(id),
                    &[("memory.limit_in_bytes", bounds.memory_bytes.to_string())],
                )?;
                make(pids.join(id), &[("pids.max", bounds.processes.to_string())])?;
                cell.oom_files
                    .push(memory.join(id).join("memory.oom_control"));
            }
            Confinement::V2(dir) => {
                make(
                    dir.join(id),
                    &[
                        ("memory.max", bounds.memory_bytes.to_string()),
                        ("memory.swap.max", "0".into()),
                        ("pids.max", bounds.processes.to_string()),
                    ],
                )
                .or_else(|e| {
                    // A kernel without swap accounting has no memory.swap.max.
                    if dir.join(id).join("memory.max").exists() {
                        std::fs::write(dir.join(id).join("pids.max"), bounds.processes.to_string())
                    } else {
                        Err(e)
                    }
                })?;
                cell.oom_files.push(dir.join(id).join("memory.events"));
            }
            Confinement::Rlimits => {}
        }
        Ok(cell)
    }

    /// Removes this server's cgroup directories (its builds' are gone).
    pub fn close(&self) {
        match self {
            Confinement::V1 { memory, pids } => {
                let _ = std::fs::remove_dir(memory);
                let _ = std::fs::remove_dir(pids);
            }
            Confinement::V2(dir) => {
                let _ = std::fs::remove_dir(dir);
            }
            Confinement::Rlimits => {}
        }
    }
}

/// Removes the empty cgroup directories servers that are gone left under
/// `parent` (a crashed server's builds died with it: they are empty).
fn sweep(parent: &Path) {
    for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("builderd-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        for build in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
            if build.path().is_dir() {
                let _ = std::fs::remove_dir(build.path());
            }
        }
        let _ = std::fs::remove_dir(e.path());
    }
}

/// One build's cgroup (if any) and bounds.
pub struct Cell {
    dirs: Vec<PathBuf>,
    /// Each cgroup's `cgroup.procs`, ready for the child to write to.
    procs: Vec<CString>,
    bounds: Bounds,
    /// Where the kernel counts the cgroup's OOM kills.
    oom_files: Vec<PathBuf>,
}

impl Cell {
    /// In the child, between fork and exec: joins the cgroups and sets the
    /// rlimits. Only async-signal-safe calls (open, write, close, setrlimit).
    pub fn enter(&self) -> std::io::Result<()> {
        for path in &self.procs {
            // SAFETY: open, write and close on a NUL-terminated path and a
            // static buffer; all async-signal-safe.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" is the writing process itself.
                let wrote = libc::write(fd, b"0\n".as_ptr().cast(), 2);
                libc::close(fd);
                if wrote != 2 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        let set = |resource, value: libc::rlim_t| {
            let lim = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            // SAFETY: setrlimit on a struct on this stack; async-signal-safe.
            if unsafe { libc::setrlimit(resource, &lim) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        set(libc::RLIMIT_CORE, 0)?;
        set(libc::RLIMIT_NOFILE, MAX_FILES)?;
        if self.procs.is_empty() {
            // No memory controller: the data segment (heap and private
            // mappings, thread stacks among them) bounds memory instead.
            set(
                libc::RLIMIT_DATA,
                self.bounds.memory_bytes.saturating_add(STACKS) as libc::rlim_t,
            )?;
        }
        Ok(())
    }

    /// Did the kernel kill a process of this build for going over its
    /// memory limit?
    pub fn oom_killed(&self) -> bool {
        self.oom_files.iter().any(|f| {
            std::fs::read_to_string(f).is_ok_and(|text| {
                text.lines().any(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .is_some_and(|n| n > 0)
                })
            })
        })
    }

    pub fn memory_limit(&self) -> u64 {
        self.bounds.memory_bytes
    }
}

impl Drop for Cell {
    /// The build's processes are dead (killed and waited for) by now; a
    /// cgroup still emptying is tried again for a moment.
    fn drop(&mut self) {
        for dir in &self.dirs {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}
