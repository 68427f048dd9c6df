//! `builderd mkfs` on a tree with every kind of entry, read back through a
//! loop mount (the kernel's ext4 as the independent reader) and compared
//! entry by entry with the source; every image passes `e2fsck -fn`.

mod common;

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::*;

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Sets atime and mtime without following symlinks.
fn set_times(p: &Path, secs: i64, nanos: i64) {
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: nanos,
    };
    let times = [t, t];
    // SAFETY: valid C string and a two-element timespec array.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cpath(p).as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        rc,
        0,
        "utimensat {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn mknod(p: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    // SAFETY: valid C string.
    let rc = unsafe { libc::mknod(cpath(p).as_ptr(), kind | 0o640, libc::makedev(major, minor)) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn write(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The capability set `cap_net_bind_service+ep` in VFS v2 form.
fn capability() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x0200_0001u32.to_le_bytes()); // v2, effective
    v.extend_from_slice(&(1u32 << 10).to_le_bytes()); // permitted
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable
    v.extend_from_slice(&[0; 8]);
    v
}

/// Builds the tree the issue lists; returns nothing, the test snapshots it.
fn build_tree(root: &Path) {
    let d = |rel: &str| root.join(rel);
    for dir in [
        "files", "links", "devices", "perm", "names", "xattrs", "times",
    ] {
        fs::create_dir(d(dir)).unwrap();
    }
    // Regular files: empty, small, unaligned, a few MiB, fragmented, sparse.
    write(&d("files/empty"), b"");
    write(&d("files/small"), b"hello, world\n");
    write(&d("files/unaligned"), &pseudo_random(4096 * 3 + 17, 1));
    write(&d("files/big"), &pseudo_random(6 << 20, 2));
    {
        // Data in every other block: 3000 extents, so index blocks are needed.
        let f = fs::File::create(d("files/fragmented")).unwrap();
        use std::os::unix::fs::FileExt;
        for i in 0..3000u64 {
            f.write_all_at(&pseudo_random(4096, 100 + i), i * 8192)
                .unwrap();
        }
    }
    {
        let f = fs::File::create(d("files/sparse-5g")).unwrap();
        use std::os::unix::fs::FileExt;
        f.set_len(5 << 30).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(&pseudo_random(10000, 3), 1 << 30).unwrap();
        f.write_all_at(b"the end", (5 << 30) - 7).unwrap();
    }
    write(&d("files/zeros"), &vec![0u8; 100_000]);

    // Symlinks: fast (in the inode), long (in a block), dangling, absolute.
    symlink("../files/small", d("links/fast")).unwrap();
    symlink("x".repeat(59), d("links/fast-59")).unwrap();
    symlink("y".repeat(60), d("links/slow-60")).unwrap();
    symlink(format!("/{}", "z/".repeat(1999)), d("links/long-3999")).unwrap();
    symlink("/does/not/exist", d("links/dangling")).unwrap();
    // Hard links, across directories.
    write(&d("links/target"), b"linked content");
    fs::hard_link(d("links/target"), d("links/second")).unwrap();
    fs::hard_link(d("links/target"), d("files/third")).unwrap();

    // Devices, fifo, socket.
    mknod(&d("devices/null"), libc::S_IFCHR, 1, 3);
    mknod(&d("devices/vda"), libc::S_IFBLK, 254, 0);
    mknod(&d("devices/big-numbers"), libc::S_IFBLK, 4095, 1_000_000);
    mknod(&d("devices/fifo"), libc::S_IFIFO, 0, 0);
    let _socket = std::os::unix::net::UnixListener::bind(d("devices/socket")).unwrap();

    // Modes and owners.
    for (name, mode) in [
        ("setuid", 0o4755),
        ("setgid", 0o2711),
        ("none", 0o000),
        ("all", 0o7777),
        ("group", 0o640),
    ] {
        write(&d(&format!("perm/{name}")), name.as_bytes());
        chmod(&d(&format!("perm/{name}")), mode);
    }
    fs::create_dir(d("perm/sticky")).unwrap();
    chmod(&d("perm/sticky"), 0o1777);
    write(&d("perm/owned"), b"owned");
    std::os::unix::fs::lchown(d("perm/owned"), Some(4_000_000_000), Some(3_000_000_000)).unwrap();
    std::os::unix::fs::lchown(d("links/fast"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::lchown(d("perm/sticky"), Some(65534), Some(100)).unwrap();

    // Names: 255 bytes, non-UTF-8, odd characters, 12 levels deep.
    write(&d(&format!("names/{}", "n".repeat(255))), b"long name");
    write(
        &d("names").join(OsStr::from_bytes(b"caf\xe9-\xff\xfe")),
        b"latin-1",
    );
    write(&d("names/with space\tand\nnewline"), b"odd");
    let deep: std::path::PathBuf = (1..=12).map(|i| format!("level{i}")).collect();
    fs::create_dir_all(d("names").join(&deep)).unwrap();
    write(&d("names").join(&deep).join("leaf"), b"deep");
    // A hashed directory of non-UTF-8 names (bytes over 0x7f hash
    // differently as signed and unsigned chars).
    fs::create_dir(d("names/latin-1")).unwrap();
    for i in 0..600u32 {
        let name = [
            &b"\xe9t\xe9-"[..],
            format!("{i:04}-").as_bytes(),
            &[0xff, 0x80, b'a' + (i % 26) as u8],
        ]
        .concat();
        write(
            &d("names/latin-1").join(OsStr::from_bytes(&name)),
            &i.to_le_bytes(),
        );
    }
    // A directory of 10,000 entries with long names: a two-level htree.
    fs::create_dir(d("names/ten-thousand")).unwrap();
    for i in 0..10_000 {
        write(
            &d(&format!("names/ten-thousand/{i:05}-{}", "e".repeat(190))),
            b"",
        );
    }

    // Xattrs: in the inode, in a block, shared blocks, capabilities, ACLs.
    write(&d("xattrs/cap"), b"binary");
    xattr::set(d("xattrs/cap"), "security.capability", &capability()).unwrap();
    write(&d("xattrs/selinux"), b"labelled");
    xattr::set(
        d("xattrs/selinux"),
        "security.selinux",
        b"system_u:object_r:bin_t:s0\0",
    )
    .unwrap();
    write(&d("xattrs/mixed"), b"mixed");
    xattr::set(d("xattrs/mixed"), "user.comment", b"hello").unwrap();
    xattr::set(d("xattrs/mixed"), "trusted.overlay.opaque", b"y").unwrap();
    xattr::set(d("xattrs/mixed"), "user.empty", b"").unwrap();
    for name in ["block-a", "block-b"] {
        write(&d(&format!("xattrs/{name}")), b"many xattrs");
        for i in 0..20 {
            xattr::set(
                d(&format!("xattrs/{name}")),
                format!("user.attribute-{i:02}"),
                &pseudo_random(100, i),
            )
            .unwrap();
        }
    }
    write(&d("xattrs/acl"), b"acl");
    fs::create_dir(d("xattrs/acl-dir")).unwrap();
    run(Command::new("setfacl")
        .args(["-m", "u:1000:rwx,g:2000:r-x,m::rwx"])
        .arg(d("xattrs/acl")));
    run(Command::new("setfacl")
        .args(["-d", "-m", "u:1001:r-x"])
        .arg(d("xattrs/acl-dir")));
    xattr::set(d("xattrs/acl-dir"), "user.on-a-dir", b"1").unwrap();
    symlink("target", d("xattrs/symlink-with-xattr")).unwrap();
    xattr::set(d("xattrs/symlink-with-xattr"), "trusted.link", b"yes").unwrap();

    // Times: nanoseconds, before 1970, after 2038 and after 2106.
    for (name, secs, nanos) in [
        ("nanos", 1_234_567_890, 123_456_789),
        ("before-1970", -1_000_000_000, 5),
        ("year-1901", -(1i64 << 31), 0),
        ("after-2038", 2_500_000_000, 999_999_999),
        ("after-2106", 4_400_000_000, 42),
        ("year-2400", 13_574_563_200, 1),
    ] {
        write(&d(&format!("times/{name}")), name.as_bytes());
        set_times(&d(&format!("times/{name}")), secs, nanos);
    }
    fs::create_dir(d("times/old-dir")).unwrap();
    set_times(&d("times/old-dir"), -86_400, 0);
    set_times(&d("links/fast"), 1_600_000_000, 7);
    set_times(&d("times"), 4_300_000_000, 3);
}

struct Fixture {
    _dir: tempfile::TempDir,
    src: std::path::PathBuf,
    work: std::path::PathBuf,
}

fn fixture() -> Option<Fixture> {
    if !root_or_skip() {
        return None;
    }
    let dir = tmp();
    let src = dir.path().join("src");
    let work = dir.path().join("work");
    fs::create_dir(&src).unwrap();
    fs::create_dir(&work).unwrap();
    build_tree(&src);
    chmod(&src, 0o750);
    set_times(&src, 1_700_000_000, 1);
    Some(Fixture {
        _dir: dir,
        src,
        work,
    })
}

fn check_image(image: &Path, expected: &std::collections::BTreeMap<Vec<u8>, Entry>) {
    e2fsck(image);
    let m = Mount::new(image);
    let got = snapshot(m.path());
    assert_same(expected, &got);
    // Holes stay holes: the 5 GiB file holds three pieces of data.
    let st = fs::metadata(m.path().join("files/sparse-5g")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(
        st.blocks() * 512 < 1 << 20,
        "sparse file allocates {} bytes",
        st.blocks() * 512
    );
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root: run as root")]
fn directory_round_trips_entry_by_entry() {
    let Some(f) = fixture() else { return };
    let expected = snapshot(&f.src);
    assert!(
        expected.len() > 10_050,
        "the tree has {} entries",
        expected.len()
    );
    let image = f.work.join("dir.ext4");
    let out = mkfs(&f.src, &image, &[]);
    assert!(out.contains("entries"), "{out}");
    check_image(&image, &expected);
    // The same again without a journal, for read-only images.
    let image = f.work.join("nojournal.ext4");
    mkfs(&f.src, &image, &["--no-journal"]);
    assert!(!dumpe2fs(&image).contains("has_journal"));
    check_image(&image, &expected);
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root: run as root")]
fn tar_archives_round_trip_plain_gzip_and_zstd() {
    let Some(f) = fixture() else { return };
    let mut expected = snapshot(&f.src);
    // tar does not archive sockets.
    expected.remove(&b"devices/socket"[..]);
    let tar = f.work.join("tree.tar");
    // GNU tar writes './'-prefixed names, a '.' root entry, PAX headers for
    // long and non-UTF-8 names, times and SCHILY.xattr.*, and PAX 1.0 sparse
    // files.
    run(Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--format=posix",
            "--sparse",
            "-C",
        ])
        .arg(&f.src)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    run(Command::new("gzip").args(["-k", "-1"]).arg(&tar));
    run(Command::new("zstd").args(["-q", "-k", "-1"]).arg(&tar));
    for name in ["tree.tar", "tree.tar.gz", "tree.tar.zst"] {
        let image = f.work.join(format!("{name}.ext4"));
        mkfs(&f.work.join(name), &image, &[]);
        check_image(&image, &expected);
    }
    // The old GNU sparse format too.
    let gnu = f.work.join("gnu.tar");
    run(Command::new("tar")
        .args(["--format=gnu", "--sparse", "-C"])
        .arg(&f.src)
        .arg("-cf")
        .arg(&gnu)
        .arg("./files"));
    let image = f.work.join("gnu.ext4");
    mkfs(&gnu, &image, &[]);
    e2fsck(&image);
    let m = Mount::new(&image);
    for file in ["files/sparse-5g", "files/fragmented", "files/big"] {
        let (want, got) = (
            &expected[file.as_bytes()],
            &snapshot(&m.path().join(file))[&b""[..]],
        );
        assert_eq!((want.size, want.content), (got.size, got.content), "{file}");
    }
    drop(m);

    // GNU long names and link names ('L' and 'K' headers).
    let long = f.work.join("gnu-names.tar");
    run(Command::new("tar")
        .args(["--format=gnu", "-C"])
        .arg(&f.src)
        .arg("-cf")
        .arg(&long)
        .args(["./names", "./links"]));
    let image = f.work.join("gnu-names.ext4");
    mkfs(&long, &image, &[]);
    e2fsck(&image);
    let m = Mount::new(&image);
    let got = snapshot(m.path());
    let names: Vec<&Vec<u8>> = expected
        .keys()
        .filter(|k| k.starts_with(b"names") || k.starts_with(b"links"))
        .collect();
    assert!(names.len() > 10_000);
    for name in names {
        let (want, have) = (
            &expected[name],
            got.get(name)
                .unwrap_or_else(|| panic!("missing {}", String::from_utf8_lossy(name))),
        );
        // The GNU format keeps whole seconds and no xattrs.
        assert_eq!(
            (want.mode, want.size, want.content, &want.link, want.mtime.0),
            (have.mode, have.size, have.content, &have.link, have.mtime.0)
        );
    }
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root: run as root")]
fn kernel_can_write_to_the_image_and_it_stays_consistent() {
    let Some(f) = fixture() else { return };
    let image = f.work.join("rw.ext4");
    mkfs(&f.src, &image, &["--size", "512M"]);
    let mnt = tmp();
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&image)
        .arg(mnt.path()));
    let root = mnt.path();
    let result = std::panic::catch_unwind(|| {
        fs::create_dir_all(root.join("new/dir")).unwrap();
        for i in 0..2000 {
            fs::write(
                root.join(format!("new/dir/f{i}")),
                pseudo_random(i * 37, i as u64),
            )
            .unwrap();
            fs::write(
                root.join(format!("names/ten-thousand/added-{i}")),
                b"more entries in an htree",
            )
            .unwrap();
        }
        fs::write(root.join("new/large"), pseudo_random(20 << 20, 5)).unwrap();
        fs::remove_dir_all(root.join("times")).unwrap();
        fs::remove_file(root.join("files/big")).unwrap();
        fs::remove_file(root.join("links/second")).unwrap();
        xattr::set(root.join("xattrs/mixed"), "user.added", &[7; 300]).unwrap();
        fs::write(root.join("files/unaligned"), b"rewritten").unwrap();
    });
    run(Command::new("umount").arg(root));
    result.unwrap();
    e2fsck(&image);
    let m = Mount::new(&image);
    assert_eq!(
        fs::read(m.path().join("new/large")).unwrap(),
        pseudo_random(20 << 20, 5)
    );
    assert_eq!(
        fs::read_dir(m.path().join("names/ten-thousand"))
            .unwrap()
            .count(),
        12_000
    );
    assert_eq!(
        fs::read(m.path().join("files/third")).unwrap(),
        b"linked content"
    );
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root: run as root")]
fn sizes_labels_and_uuids() {
    let Some(f) = fixture() else { return };
    let small = f.work.join("small");
    fs::create_dir(&small).unwrap();
    fs::File::create(small.join("data"))
        .unwrap()
        .write_all(&pseudo_random(3 << 20, 9))
        .unwrap();

    let fixed = f.work.join("fixed.ext4");
    mkfs(
        &small,
        &fixed,
        &[
            "--size",
            "256M",
            "--label",
            "rootfs",
            "--uuid",
            "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        ],
    );
    e2fsck(&fixed);
    assert_eq!(fs::metadata(&fixed).unwrap().len(), 256 << 20);
    let info = dumpe2fs(&fixed);
    assert!(info.contains("Block count:              65536"), "{info}");
    assert!(info.contains("Filesystem volume name:   rootfs"), "{info}");
    assert!(
        info.contains("Filesystem UUID:          0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"),
        "{info}"
    );

    let roomy = f.work.join("roomy.ext4");
    mkfs(&small, &roomy, &["--free", "20%"]);
    e2fsck(&roomy);
    let info = dumpe2fs(&roomy);
    let field = |name: &str| -> u64 {
        let line = info.lines().find(|l| l.starts_with(name)).unwrap();
        line.split(':').nth(1).unwrap().trim().parse().unwrap()
    };
    let (free, total) = (field("Free blocks"), field("Block count"));
    assert!(free * 100 >= total * 20, "{free} of {total} free");
    assert!(
        free * 100 < total * 30,
        "{free} of {total} free: more than asked"
    );

    let tight = f.work.join("tight.ext4");
    mkfs(&small, &tight, &["--free", "0"]);
    e2fsck(&tight);
    let m = Mount::new(&tight);
    assert_eq!(
        fs::read(m.path().join("data")).unwrap(),
        pseudo_random(3 << 20, 9)
    );
}
