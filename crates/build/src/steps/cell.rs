//! The cgroup a build's steps run under: memory, processes and CPU bounded
//! for all of them together, and what went over a bound told afterwards.
//! The step engine makes each container's own cgroup inside it (it is the
//! containers' cgroup parent), so nothing a step starts runs outside it, and
//! ending the steps at their deadline is killing whatever is in it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::request::StepLimits;

/// Where the cells go, under each hierarchy's root.
const PARENT: &str = "builderd-steps";

pub struct Cell {
    /// The cell's path from a hierarchy's root.
    name: String,
    layout: Layout,
}

enum Layout {
    /// cgroup v1: the cell in the memory, pids and cpu hierarchies.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: PathBuf,
    },
    /// cgroup v2: one directory.
    V2(PathBuf),
}

impl Cell {
    /// A new cell with `limits`; an error where no cgroup can be made
    /// (steps do not run unbounded).
    pub fn new(limits: &StepLimits) -> Result<Cell> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let leaf = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let name = format!("/{PARENT}/{leaf}");
        let root = Path::new("/sys/fs/cgroup");
        let quota = (limits.cpus * 100_000.0).round().max(1_000.0) as u64;
        let layout = if root.join("memory/memory.limit_in_bytes").exists() {
            let make = |controller: &str, settings: &[(&str, String)]| -> Result<PathBuf> {
                let dir = root.join(controller).join(PARENT).join(&leaf);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating the steps' cgroup {}", dir.display()))?;
                for (file, value) in settings {
                    std::fs::write(dir.join(file), value)
                        .with_context(|| format!("setting {file} of {}", dir.display()))?;
                }
                Ok(dir)
            };
            let memory = make(
                "memory",
                &[("memory.limit_in_bytes", limits.memory_bytes.to_string())],
            )?;
            // With swap accounting, swap counts against the same bound.
            let _ = std::fs::write(
                memory.join("memory.memsw.limit_in_bytes"),
                limits.memory_bytes.to_string(),
            );
            Layout::V1 {
                memory,
                pids: make("pids", &[("pids.max", limits.pids.to_string())])?,
                cpu: make(
                    "cpu",
                    &[
                        ("cpu.cfs_period_us", "100000".into()),
                        ("cpu.cfs_quota_us", quota.to_string()),
                    ],
                )?,
            }
        } else if root.join("cgroup.controllers").exists() {
            let parent = root.join(PARENT);
            let dir = parent.join(&leaf);
            let controllers = "+memory +pids +cpu";
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating the steps' cgroup {}", dir.display()))?;
            for (d, file, value) in [
                (root, "cgroup.subtree_control", controllers.to_string()),
                (&parent, "cgroup.subtree_control", controllers.to_string()),
                (&dir, "memory.max", limits.memory_bytes.to_string()),
                (&dir, "memory.swap.max", "0".into()),
                (&dir, "pids.max", limits.pids.to_string()),
                (&dir, "cpu.max", format!("{quota} 100000")),
                (&dir, "cgroup.subtree_control", controllers.to_string()),
            ] {
                std::fs::write(d.join(file), value)
                    .with_context(|| format!("setting {file} of {}", d.display()))?;
            }
            Layout::V2(dir)
        } else {
            anyhow::bail!(
                "build steps need a cgroup for their limits, and none is mounted at /sys/fs/cgroup"
            );
        };
        Ok(Cell { name, layout })
    }

    /// Where the containers' cgroup goes (`--cgroup-parent`), from a
    /// hierarchy's root: a child of the cell, as the runtime writes its own
    /// (unbounded) settings to the cgroup it is given, and the cell's bounds
    /// hold for all below it.
    pub fn containers(&self) -> String {
        format!("{}/containers", self.name)
    }

    /// The steps' memory reached the bound. (cgroup v1 counts an OOM kill
    /// in the container's own cgroup, which the runtime removes when the
    /// step ends: the cell's own peak and refused charges are what stay.
    /// v2 counts OOM kills up the tree.)
    pub fn memory_exhausted(&self) -> bool {
        match &self.layout {
            // The peak is the bound: this kernel does not count the
            // refused charges of a child in the parent's failcnt.
            Layout::V1 { memory, .. } => {
                let limit = read_number(&memory.join("memory.limit_in_bytes"));
                ["memory.failcnt", "memory.memsw.failcnt"]
                    .iter()
                    .any(|f| read_number(&memory.join(f)) > 0)
                    || (limit > 0
                        && read_number(&memory.join("memory.max_usage_in_bytes")) >= limit)
            }
            Layout::V2(dir) => counter(&dir.join("memory.events"), "oom_kill") > 0,
        }
    }

    /// The steps' processes reached the bound (v1: the cell's peak is its
    /// maximum, the refusals being counted in the container's cgroup; v2:
    /// refusals counted up the tree).
    pub fn pids_refused(&self) -> bool {
        match &self.layout {
            Layout::V1 { pids, .. } => {
                let max = read_number(&pids.join("pids.max"));
                max > 0 && read_number(&pids.join("pids.peak")) >= max
            }
            Layout::V2(dir) => counter(&dir.join("pids.events"), "max") > 0,
        }
    }

    /// Kills every process in the cell and below.
    pub fn kill_all(&self) {
        kill_all(self.dirs()[0]);
    }

    /// The cell's directory in each hierarchy, the one counting processes
    /// first.
    fn dirs(&self) -> Vec<&PathBuf> {
        match &self.layout {
            Layout::V1 { memory, pids, cpu } => vec![pids, memory, cpu],
            Layout::V2(dir) => vec![dir],
        }
    }
}

/// Ends the cells of builderd processes that are gone (killed before they
/// could end their own): their processes killed, their cgroups removed.
pub fn sweep() {
    let root = Path::new("/sys/fs/cgroup");
    let parents = ["pids", "memory", "cpu", ""].map(|c| root.join(c).join(PARENT));
    for parent in parents {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if super::owner::gone(&name.to_string_lossy(), "") {
                kill_all(&entry.path());
                remove_tree(&entry.path());
            }
        }
    }
}

/// Kills every process in the cgroup `dir` and below, until none is left
/// (a fork bomb forks while it is killed: a few rounds end it).
fn kill_all(dir: &Path) {
    for _ in 0..100 {
        let mut found = false;
        for procs in cgroup_files(dir, "cgroup.procs") {
            let text = std::fs::read_to_string(procs).unwrap_or_default();
            for pid in text
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                found = true;
                // SAFETY: kill(2) with a pid read from the cgroup; no
                // memory is involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if !found {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes the (empty) cgroup `dir` and those below it, deepest first.
fn remove_tree(dir: &Path) {
    let mut below: Vec<PathBuf> = cgroup_files(dir, "cgroup.procs")
        .into_iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    below.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in below {
        let _ = std::fs::remove_dir(d);
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        self.kill_all();
        for dir in self.dirs() {
            remove_tree(dir);
        }
    }
}

/// A file holding one number; 0 when absent or not a number ("max").
fn read_number(file: &Path) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// `name`'s value in a flat keyed file (`oom_kill 1`), 0 when absent.
fn counter(file: &Path, name: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

/// `file` in `dir` and in every cgroup below it.
fn cgroup_files(dir: &Path, file: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let f = d.join(file);
        if f.exists() {
            found.push(f);
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    todo.push(e.path());
                }
            }
        }
    }
    found
}
