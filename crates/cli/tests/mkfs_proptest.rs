//! Random trees: written with `builderd mkfs`, e2fsck-clean, and read back
//! through a loop mount equal to the source.

mod common;

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File { content: Vec<u8>, hole_blocks: u8 },
    Symlink(Vec<u8>),
    Hardlink(usize),
    Fifo,
}

#[derive(Debug, Clone)]
struct Spec {
    parent: usize,
    name: Vec<u8>,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    // Any bytes but '/' and NUL, including invalid UTF-8; never "." or "..".
    prop::collection::vec(prop_oneof![4 => b'a'..=b'z', 1 => 1u8..=255u8], 1..40).prop_filter_map(
        "not a valid name",
        |mut n| {
            n.retain(|&b| b != b'/');
            (!n.is_empty() && n != b"." && n != b"..").then_some(n)
        },
    )
}

fn spec() -> impl Strategy<Value = Spec> {
    let kind = prop_oneof![
        3 => Just(Kind::Dir),
        6 => (prop::collection::vec(any::<u8>(), 0..20_000), 0u8..4).prop_map(|(content, hole_blocks)| Kind::File { content, hole_blocks }),
        2 => prop::collection::vec(1u8..=255, 1..300).prop_map(Kind::Symlink),
        2 => any::<usize>().prop_map(Kind::Hardlink),
        1 => Just(Kind::Fifo),
    ];
    (
        any::<usize>(),
        name(),
        kind,
        0u32..0o10000,
        0u32..u32::MAX,
        0u32..u32::MAX,
        (-(1i64 << 31))..(1i64 << 34),
        0u32..1_000_000_000,
    )
        .prop_map(|(parent, name, kind, mode, uid, gid, secs, nanos)| Spec {
            parent,
            name,
            kind,
            mode,
            uid,
            gid,
            mtime: (secs, nanos),
        })
}

fn set_mtime(p: &Path, (secs, nanos): (i64, u32)) {
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: i64::from(nanos),
    };
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid path and a two-element timespec array.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [t, t].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0);
}

/// Creates the tree; later specs whose path is taken are skipped.
fn materialize(root: &Path, specs: &[Spec]) {
    let mut dirs: Vec<PathBuf> = vec![root.to_path_buf()];
    let mut files: Vec<PathBuf> = Vec::new();
    let mut stamped: Vec<(PathBuf, Spec)> = Vec::new();
    for s in specs {
        let path = dirs[s.parent % dirs.len()].join(OsStr::from_bytes(&s.name));
        if fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        match &s.kind {
            Kind::Dir => {
                fs::create_dir(&path).unwrap();
                dirs.push(path.clone());
            }
            Kind::File {
                content,
                hole_blocks,
            } => {
                let f = fs::File::create(&path).unwrap();
                use std::os::unix::fs::FileExt;
                f.write_all_at(content, u64::from(*hole_blocks) * 4096)
                    .unwrap();
                files.push(path.clone());
            }
            Kind::Symlink(target) => {
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &path).unwrap()
            }
            Kind::Hardlink(i) => {
                if files.is_empty() {
                    continue;
                }
                fs::hard_link(&files[i % files.len()], &path).unwrap();
                continue; // shares the target's metadata
            }
            Kind::Fifo => {
                let c = CString::new(path.as_os_str().as_bytes()).unwrap();
                // SAFETY: a valid path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
            }
        }
        std::os::unix::fs::lchown(&path, Some(s.uid), Some(s.gid)).unwrap();
        if !matches!(s.kind, Kind::Symlink(_)) {
            fs::set_permissions(&path, fs::Permissions::from_mode(s.mode)).unwrap();
        }
        stamped.push((path, s.clone()));
    }
    // Times last: adding entries changes a directory's mtime.
    for (path, s) in stamped.iter().rev() {
        set_mtime(path, s.mtime);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    #[cfg_attr(builderd_not_root, ignore = "needs root: run as root")]
    fn random_trees_round_trip(specs in prop::collection::vec(spec(), 1..60), journal in any::<bool>()) {
        if !root_or_skip() {
            return Ok(());
        }
        let dir = tmp();
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        materialize(&src, &specs);
        let expected = snapshot(&src);
        let image = dir.path().join("img.ext4");
        mkfs(&src, &image, if journal { &[] } else { &["--no-journal"] });
        e2fsck(&image);
        let m = Mount::new(&image);
        assert_same(&expected, &snapshot(m.path()));
    }
}
