//! Helpers for tests with real parts: the built `builderd` binary, e2fsck,
//! and an independent read-back by loop-mounting the image (as root).

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeMap;
use std::fs::File;
use std::hash::Hasher;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn builderd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_builderd"))
}

/// Runs `builderd mkfs SOURCE -o OUT ARGS...`, asserting success.
pub fn mkfs(source: &Path, out: &Path, args: &[&str]) -> String {
    let o = builderd()
        .arg("mkfs")
        .arg(source)
        .arg("-o")
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mkfs failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `e2fsck -fn` must pass with exit code 0 on every image a test makes.
pub fn e2fsck(image: &Path) {
    let o = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .expect("e2fsck (e2fsprogs) is installed");
    assert!(
        o.status.code() == Some(0),
        "e2fsck -fn {} exited {:?}:\n{}{}",
        image.display(),
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Text of `dumpe2fs -h`.
pub fn dumpe2fs(image: &Path) -> String {
    let o = Command::new("dumpe2fs")
        .arg("-h")
        .arg(image)
        .output()
        .unwrap();
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// A read-only loop mount, unmounted on drop.
pub struct Mount {
    pub dir: tempfile::TempDir,
}

impl Mount {
    pub fn new(image: &Path) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("mount")
            .args(["-o", "loop,ro,noatime"])
            .arg(image)
            .arg(dir.path()));
        Mount { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Everything compared about one entry.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Entry {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size for regular files and symlinks (directory sizes differ by
    /// filesystem).
    pub size: Option<u64>,
    pub content: Option<u64>,
    pub link: Option<Vec<u8>>,
    pub rdev: Option<(u32, u32)>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub mtime: (i64, i64),
    /// For multiply-linked files: the first path (in name order) of the group.
    pub hardlink_group: Option<Vec<u8>>,
}

/// A content hash that skips holes and zero blocks: equal iff the files have
/// equal bytes (sizes are compared separately).
fn content_hash(path: &Path) -> u64 {
    let f = File::open(path).unwrap();
    let size = f.metadata().unwrap().len();
    let mut h = std::hash::DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < size {
        // SAFETY: lseek on an open descriptor.
        let data = unsafe { libc::lseek(f.as_raw_fd(), pos as i64, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        // SAFETY: lseek on an open descriptor.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) } as u64;
        let mut at = data as u64 / 4096 * 4096;
        while at < hole {
            let n = f
                .read_at(&mut buf[..((hole - at) as usize).min(1 << 20)], at)
                .unwrap();
            assert!(n > 0);
            for (i, block) in buf[..n].chunks(4096).enumerate() {
                if block.iter().any(|&b| b != 0) {
                    h.write_u64(at + (i * 4096) as u64);
                    h.write(block);
                }
            }
            at += n as u64;
        }
        pos = hole;
    }
    h.finish()
}

/// Walks `root` without following symlinks; keys are paths relative to it.
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    let mut groups: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), Vec::<u8>::new())];
    let mut inodes = Vec::new();
    while let Some((host, rel)) = stack.pop() {
        let st = std::fs::symlink_metadata(&host).unwrap();
        let ft = st.file_type();
        let mut xattrs = BTreeMap::new();
        for name in xattr::list(&host).unwrap() {
            if let Some(v) = xattr::get(&host, &name).unwrap() {
                xattrs.insert(name.as_bytes().to_vec(), v);
            }
        }
        use std::os::unix::fs::FileTypeExt;
        let e = Entry {
            mode: st.mode(),
            uid: st.uid(),
            gid: st.gid(),
            size: (ft.is_file() || ft.is_symlink()).then_some(st.len()),
            content: ft.is_file().then(|| content_hash(&host)),
            link: ft.is_symlink().then(|| {
                std::fs::read_link(&host)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            }),
            rdev: (ft.is_block_device() || ft.is_char_device())
                .then(|| (libc::major(st.rdev()), libc::minor(st.rdev()))),
            xattrs,
            mtime: (st.mtime(), st.mtime_nsec()),
            hardlink_group: None,
        };
        if !ft.is_dir() && st.nlink() > 1 {
            inodes.push((rel.clone(), (st.dev(), st.ino())));
        }
        out.insert(rel.clone(), e);
        if ft.is_dir() {
            for child in std::fs::read_dir(&host).unwrap() {
                let child = child.unwrap();
                let mut r = rel.clone();
                if !r.is_empty() {
                    r.push(b'/');
                }
                r.extend_from_slice(child.file_name().as_bytes());
                stack.push((child.path(), r));
            }
        }
    }
    inodes.sort();
    for (rel, key) in &inodes {
        groups.entry(*key).or_insert_with(|| rel.clone());
    }
    for (rel, key) in inodes {
        out.get_mut(&rel).unwrap().hardlink_group = Some(groups[&key].clone());
    }
    out
}

/// Asserts two snapshots are equal, reporting the first differences by path.
pub fn assert_same(expected: &BTreeMap<Vec<u8>, Entry>, got: &BTreeMap<Vec<u8>, Entry>) {
    let mut problems = Vec::new();
    for (path, e) in expected {
        match got.get(path) {
            None => problems.push(format!("missing: {}", String::from_utf8_lossy(path))),
            Some(g) if g != e => problems.push(format!(
                "differs: {}\n  expected {e:?}\n  got      {g:?}",
                String::from_utf8_lossy(path)
            )),
            _ => {}
        }
    }
    for path in got.keys().filter(|p| !expected.contains_key(*p)) {
        problems.push(format!("unexpected: {}", String::from_utf8_lossy(path)));
    }
    assert!(
        problems.is_empty(),
        "{} differences:\n{}",
        problems.len(),
        problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Takes builderd's own files (`/.builderd/`, added by the boot strategy)
/// out of an image's snapshot, so it compares with the image's files alone;
/// checks they are there: the init and its run config.
pub fn without_builderd(mut s: BTreeMap<Vec<u8>, Entry>) -> BTreeMap<Vec<u8>, Entry> {
    let ours: Vec<Vec<u8>> = s
        .keys()
        .filter(|k| k.as_slice() == b".builderd" || k.starts_with(b".builderd/"))
        .cloned()
        .collect();
    let names: Vec<String> = ours
        .iter()
        .map(|k| String::from_utf8_lossy(k).into())
        .collect();
    assert_eq!(
        names,
        [".builderd", ".builderd/init", ".builderd/run.json"],
        "builderd's files"
    );
    assert_eq!(s[&b".builderd/init"[..]].mode & 0o7777, 0o755);
    for k in ours {
        s.remove(&k);
    }
    s
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// For tests that need root (loop mounts, device nodes, trusted.* xattrs):
/// true when they can run. Without root they are skipped, unless
/// BUILDERD_TESTS_NEED_ROOT is set (as CI does), which makes it a failure.
pub fn root_or_skip() -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var_os("BUILDERD_TESTS_NEED_ROOT").is_none(),
        "this test needs root and BUILDERD_TESTS_NEED_ROOT is set"
    );
    eprintln!("skipping: this test needs root (loop mounts, device nodes, trusted.* xattrs)");
    false
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("builderd-test-")
        .tempdir()
        .unwrap()
}

pub fn p(dir: &Path, rel: &str) -> PathBuf {
    dir.join(rel)
}
pub mod debian;
pub mod fake;
pub mod git_servers;
pub mod images;
pub mod package_index;
pub mod projects;
pub mod registry;
pub mod server;
