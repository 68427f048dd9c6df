//! What an extraction keeps, drops and changes, read back from the disk:
//! modes and times, setuid and devices (dropped, told), hard links, the
//! modes of directories described after their contents and of those no
//! entry describes, and the limits on what is actually read.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use builderd_archive::{extract, Format, Limits, Options};

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    // Written as given: the tar crate would refuse the hostile ones.
    h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_600_000_000);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    h.set_cksum();
    h
}

fn tar_of(path: &Path, build: impl FnOnce(&mut tar::Builder<std::fs::File>)) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    build(&mut b);
    b.finish().unwrap();
}

fn run(
    archive: &Path,
    limits: Limits,
) -> (
    Result<builderd_archive::Extracted, String>,
    Vec<String>,
    tempfile::TempDir,
) {
    let dest = tempfile::tempdir().unwrap();
    let told = Mutex::new(Vec::new());
    let notice = |line: String| told.lock().unwrap().push(line);
    let r = extract(
        archive,
        dest.path(),
        &Options {
            declared: None,
            limits,
            notice: &notice,
        },
    )
    .map_err(|e| e.to_string());
    (r, told.into_inner().unwrap(), dest)
}

#[test]
fn modes_times_links_and_what_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.tar");
    tar_of(&archive, |b| {
        let data = b"#!/bin/sh\n";
        b.append(
            &header("app/bin/tool", tar::EntryType::Regular, 0o4755, 10),
            &data[..],
        )
        .unwrap();
        b.append(
            &header("app/dev/null", tar::EntryType::Char, 0o666, 0),
            &[][..],
        )
        .unwrap();
        b.append(&header("app/pipe", tar::EntryType::Fifo, 0o644, 0), &[][..])
            .unwrap();
        let mut link = header("app/bin/same", tar::EntryType::Link, 0o755, 0);
        link.set_link_name("app/bin/tool").unwrap();
        link.set_cksum();
        b.append(&link, &[][..]).unwrap();
        // Described after what is in it, read-only: set once its contents are in.
        b.append(
            &header("app/bin/", tar::EntryType::Directory, 0o555, 0),
            &[][..],
        )
        .unwrap();
    });
    let (r, told, dest) = run(&archive, Limits::default());
    let done = r.unwrap();
    assert_eq!(done.format, Format::Tar);
    assert_eq!(
        (done.files, done.hard_links, done.dropped, done.bits_cleared),
        (1, 1, 2, 1)
    );
    let root = dest.path();
    let tool = std::fs::metadata(root.join("app/bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o755, "setuid cleared");
    assert_eq!(tool.mtime(), 1_600_000_000);
    assert_eq!(tool.nlink(), 2);
    assert_eq!(
        std::fs::metadata(root.join("app/bin/same")).unwrap().ino(),
        tool.ino()
    );
    let bin = std::fs::metadata(root.join("app/bin")).unwrap();
    assert_eq!(bin.mode() & 0o7777, 0o555);
    assert_eq!(bin.mtime(), 1_600_000_000);
    // No entry described app/: made 0755, dated as the newest entry.
    let app = std::fs::metadata(root.join("app")).unwrap();
    assert_eq!(app.mode() & 0o7777, 0o755);
    assert_eq!(app.mtime(), 1_600_000_000);
    assert!(!root.join("app/dev/null").exists() && !root.join("app/pipe").exists());
    let told = told.join("\n");
    for what in [
        "\"app/bin/tool\": mode 4755",
        "\"app/dev/null\": a device",
        "\"app/pipe\": a fifo",
    ] {
        assert!(told.contains(what), "{what} not told:\n{told}");
    }
}

#[test]
fn limits_count_what_is_read_and_name_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("zeros.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&archive).unwrap(),
            flate2::Compression::best(),
        );
        let mut b = tar::Builder::new(gz);
        let size = 64 << 20;
        b.append(
            &header("zeros.bin", tar::EntryType::Regular, 0o644, size),
            std::io::Read::take(std::io::repeat(0), size),
        )
        .unwrap();
        b.into_inner().unwrap().finish().unwrap();
    }
    let (r, _, _d) = run(&archive, Limits::default());
    let e = r.unwrap_err();
    assert!(e.contains("max_ratio limit (200:1"), "{e}");
    let (r, _, _d) = run(
        &archive,
        Limits {
            max_ratio: u64::MAX,
            max_entry_bytes: 1 << 20,
            ..Limits::default()
        },
    );
    let e = r.unwrap_err();
    assert!(
        e.contains("max_entry_bytes limit (1048576 bytes in one file), at \"zeros.bin\""),
        "{e}"
    );
    let (r, _, _d) = run(
        &archive,
        Limits {
            max_ratio: u64::MAX,
            ..Limits::default()
        },
    );
    assert_eq!(r.unwrap().bytes, 64 << 20);
}

/// A tar's members: headers and data.
type Members = Vec<(tar::Header, &'static [u8])>;

#[test]
fn names_that_aim_at_a_canary_beside_the_root_write_nothing_there() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let canary = dir.path().join("canary");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&canary).unwrap();
    let link = |path: &str, kind: tar::EntryType, target: &str| {
        let mut h = header(path, kind, 0o777, 0);
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        h
    };
    let cases: Vec<(&str, Members)> = vec![
        (
            "dotdot",
            vec![(
                header("../canary/x", tar::EntryType::Regular, 0o644, 1),
                b"x",
            )],
        ),
        (
            "inner dotdot",
            vec![(
                header("a/../../canary/x", tar::EntryType::Regular, 0o644, 1),
                b"x",
            )],
        ),
        (
            "through a link",
            vec![
                (link("c", tar::EntryType::Symlink, "../canary"), b""),
                (header("c/x", tar::EntryType::Regular, 0o644, 1), b"x"),
            ],
        ),
        (
            "a relative link out, then written through",
            vec![
                (header("sub/", tar::EntryType::Directory, 0o755, 0), b""),
                (link("sub/up", tar::EntryType::Symlink, ".."), b""),
                (
                    link("out", tar::EntryType::Symlink, "sub/up/../canary"),
                    b"",
                ),
            ],
        ),
        (
            "a hard link out",
            vec![(link("h", tar::EntryType::Link, "../canary/y"), b"")],
        ),
    ];
    for (what, members) in cases {
        let archive = dir.path().join("case.tar");
        tar_of(&archive, |b| {
            for (h, data) in members {
                b.append(&h, data).unwrap();
            }
        });
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        let told = Mutex::new(Vec::new());
        let notice = |line: String| told.lock().unwrap().push(line);
        let r = extract(
            &archive,
            &root,
            &Options {
                declared: None,
                limits: Limits::default(),
                notice: &notice,
            },
        );
        assert!(r.is_err(), "{what}: taken");
        assert_eq!(
            std::fs::read_dir(&canary).unwrap().count(),
            0,
            "{what}: wrote into the canary"
        );
    }
}
