//! Bad input gets a clear error naming the path, a non-zero exit, and no
//! output file (an existing one is left as it was). And the same tree always
//! gives the same bytes.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

/// Runs mkfs expecting failure; returns stderr.
fn mkfs_fails(cmd: &mut Command, out: &Path) -> String {
    let o = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success(),
        "mkfs should have failed; stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(!out.exists(), "{} was left behind", out.display());
    let leftovers: Vec<_> = fs::read_dir(out.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    stderr
}

fn mkfs_cmd(source: &Path, out: &Path) -> Command {
    let mut c = builderd();
    c.arg("mkfs").arg(source).arg("-o").arg(out);
    c
}

/// A tar with one entry per (name, data), written with Python's tarfile
/// (PAX, so any name length is representable).
fn python_tar(path: &Path, entries: &[(&str, usize)]) {
    let spec: Vec<String> = entries
        .iter()
        .map(|(n, size)| format!("({n:?}, {size})"))
        .collect();
    let script = format!(
        "import tarfile, io\nt = tarfile.open({:?}, 'w', format=tarfile.PAX_FORMAT)\nfor name, size in [{}]:\n    i = tarfile.TarInfo(name); i.size = size; t.addfile(i, io.BytesIO(bytes(range(256)) * (size // 256 + 1)))\nt.close()\n",
        path.to_str().unwrap(),
        spec.join(", ")
    );
    run(Command::new("python3").arg("-c").arg(script));
}

#[test]
fn unreadable_file_is_named() {
    let dir = tmp();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/ok"), b"fine").unwrap();
    fs::write(src.join("etc/secret"), b"hidden").unwrap();
    fs::set_permissions(src.join("etc/secret"), fs::Permissions::from_mode(0o000)).unwrap();
    let outdir = dir.path().join("out");
    fs::create_dir(&outdir).unwrap();
    fs::set_permissions(&outdir, fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let out = outdir.join("img.ext4");
    // Root reads anything: run as nobody so the mode bits apply.
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_builderd"),
            "mkfs",
        ])
        .arg(&src)
        .arg("-o")
        .arg(&out);
        c
    } else {
        mkfs_cmd(&src, &out)
    };
    let err = mkfs_fails(&mut cmd, &out);
    assert!(
        err.contains("etc/secret") && err.contains("Permission denied"),
        "{err}"
    );
}

#[test]
fn name_over_255_bytes_is_named() {
    let dir = tmp();
    let tar = dir.path().join("long.tar");
    let long = format!("dir/{}", "n".repeat(256));
    python_tar(&tar, &[("dir/ok", 10), (&long, 10)]);
    let out = dir.path().join("img.ext4");
    let err = mkfs_fails(&mut mkfs_cmd(&tar, &out), &out);
    assert!(
        err.contains(&long) && err.contains("longer than 255 bytes"),
        "{err}"
    );
}

#[test]
fn content_larger_than_size_is_refused() {
    let dir = tmp();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let data: Vec<u8> = (0..12u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(src.join("big"), &data).unwrap();
    let out = dir.path().join("img.ext4");
    // An existing image survives a failed run untouched.
    let err = mkfs_fails(mkfs_cmd(&src, &out).args(["--size", "8M"]), &out);
    assert!(
        err.contains("does not fit") && err.contains("--size"),
        "{err}"
    );
    fs::write(&out, b"previous image").unwrap();
    let o = mkfs_cmd(&src, &out)
        .args(["--size", "8M"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert_eq!(fs::read(&out).unwrap(), b"previous image");
}

#[test]
fn truncated_tar_is_named() {
    let dir = tmp();
    let tar = dir.path().join("whole.tar");
    python_tar(
        &tar,
        &[
            ("first", 1000),
            ("second/payload.bin", 200_000),
            ("third", 10),
        ],
    );
    let whole = fs::read(&tar).unwrap();
    let cut = dir.path().join("cut.tar");
    fs::write(&cut, &whole[..100_000]).unwrap();
    let out = dir.path().join("img.ext4");
    let err = mkfs_fails(&mut mkfs_cmd(&cut, &out), &out);
    assert!(
        err.contains("second/payload.bin") && err.contains("truncated"),
        "{err}"
    );

    // Cut inside a header, after a complete member.
    let header_cut = dir.path().join("header-cut.tar");
    fs::write(&header_cut, &whole[..1536 + 100]).unwrap();
    let err = mkfs_fails(&mut mkfs_cmd(&header_cut, &out), &out);
    assert!(
        err.contains("after first") && err.contains("ends inside a header"),
        "{err}"
    );

    // A truncated compressed stream.
    run(Command::new("gzip").arg("-k").arg(&tar));
    let gz = fs::read(dir.path().join("whole.tar.gz")).unwrap();
    let cut_gz = dir.path().join("cut.tar.gz");
    fs::write(&cut_gz, &gz[..gz.len() / 2]).unwrap();
    let err = mkfs_fails(&mut mkfs_cmd(&cut_gz, &out), &out);
    assert!(err.contains("second/payload.bin"), "{err}");
}

#[test]
fn not_a_tar_is_refused() {
    let dir = tmp();
    let junk = dir.path().join("junk.tar");
    fs::write(&junk, vec![0x41u8; 4096]).unwrap();
    let out = dir.path().join("img.ext4");
    let err = mkfs_fails(&mut mkfs_cmd(&junk, &out), &out);
    assert!(
        err.contains("junk.tar") && err.contains("checksum"),
        "{err}"
    );
}

#[test]
fn same_tree_gives_the_same_bytes() {
    let dir = tmp();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    for i in 0..300 {
        fs::write(
            src.join(format!("a/file-{i}")),
            format!("content {i}").repeat(i),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("../file-1", src.join("a/b/link")).unwrap();
    let one = dir.path().join("one.ext4");
    let two = dir.path().join("two.ext4");
    mkfs(&src, &one, &[]);
    mkfs(&src, &two, &[]);
    e2fsck(&one);
    assert!(
        fs::read(&one).unwrap() == fs::read(&two).unwrap(),
        "two builds of one tree differ"
    );

    // From a tar of the same tree: reproducible too, and SOURCE_DATE_EPOCH
    // sets the filesystem's own times.
    let tar = dir.path().join("tree.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    let (t1, t2) = (dir.path().join("t1.ext4"), dir.path().join("t2.ext4"));
    for t in [&t1, &t2] {
        let o = builderd()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .arg("mkfs")
            .arg(&tar)
            .arg("-o")
            .arg(t)
            .output()
            .unwrap();
        assert!(o.status.success());
    }
    e2fsck(&t1);
    assert!(
        fs::read(&t1).unwrap() == fs::read(&t2).unwrap(),
        "two builds of one tar differ"
    );
    let info = dumpe2fs(&t1);
    assert!(
        info.contains("Filesystem created:       Tue Nov 14 22:13:20 2023"),
        "{info}"
    );

    // A change in one byte of content changes the UUID.
    fs::write(src.join("a/file-7"), "changed").unwrap();
    let three = dir.path().join("three.ext4");
    mkfs(&src, &three, &[]);
    let uuid = |p: &Path| {
        dumpe2fs(p)
            .lines()
            .find(|l| l.starts_with("Filesystem UUID"))
            .unwrap()
            .to_string()
    };
    assert_ne!(uuid(&one), uuid(&three));
}
