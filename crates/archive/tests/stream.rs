//! An archive handed on as a tar stream holds what its extraction to disk
//! holds, under the path asked for: contents, modes, times, symlinks, hard
//! links, directories (described or only implied) and long names; and it
//! is refused by the same rules.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use builderd_archive::{extract, sha256, stream, Limits, Options};

/// What one entry is, as both forms can say it.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    File {
        data: Vec<u8>,
        mode: u32,
        mtime: u64,
    },
    Dir {
        mode: u32,
        mtime: u64,
    },
    Symlink(String),
}

fn options<'a>(notice: &'a (dyn Fn(String) + Sync)) -> Options<'a> {
    Options {
        declared: None,
        limits: Limits::default(),
        notice,
    }
}

/// The extraction read back from disk, hard links as the file they share.
fn from_disk(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            let node = if meta.is_dir() {
                pending.push(path.clone());
                Node::Dir {
                    mode: meta.mode() & 0o7777,
                    mtime: meta.mtime() as u64,
                }
            } else if meta.file_type().is_symlink() {
                Node::Symlink(std::fs::read_link(&path).unwrap().display().to_string())
            } else {
                Node::File {
                    data: std::fs::read(&path).unwrap(),
                    mode: meta.mode() & 0o7777,
                    mtime: meta.mtime() as u64,
                }
            };
            out.insert(name, node);
        }
    }
    out
}

/// The stream read with the tar crate, under `at`; hard links resolved to
/// their target's entry.
fn from_stream(bytes: &[u8], at: &str) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut links = Vec::new();
    let mut top = None;
    let mut archive = tar::Archive::new(bytes);
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        let full = e.path().unwrap().display().to_string();
        let name = full.trim_end_matches('/');
        if name == at {
            top = Some(h.mode().unwrap());
            continue;
        }
        let name = name.strip_prefix(&format!("{at}/")).unwrap().to_string();
        let (mode, mtime) = (h.mode().unwrap() & 0o7777, h.mtime().unwrap());
        let node = match h.entry_type() {
            tar::EntryType::Directory => Node::Dir { mode, mtime },
            tar::EntryType::Symlink => {
                Node::Symlink(e.link_name().unwrap().unwrap().display().to_string())
            }
            tar::EntryType::Link => {
                let target = e.link_name().unwrap().unwrap().display().to_string();
                links.push((name, target));
                continue;
            }
            kind => {
                assert_eq!(kind, tar::EntryType::Regular);
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                Node::File { data, mode, mtime }
            }
        };
        assert!(out.insert(name.clone(), node).is_none(), "{name} twice");
    }
    assert_eq!(top, Some(0o755), "the top directory comes last");
    for (name, target) in links {
        let target = target.strip_prefix(&format!("{at}/")).unwrap();
        let node = match &out[target] {
            Node::File { data, mode, mtime } => Node::File {
                data: data.clone(),
                mode: *mode,
                mtime: *mtime,
            },
            other => panic!("{name} links to {other:?}"),
        };
        out.insert(name, node);
    }
    out
}

/// A header of `kind`, owned by root, dated 0.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn both(archive: &Path, at: &str) -> (BTreeMap<String, Node>, BTreeMap<String, Node>) {
    let quiet = |_: String| {};
    let dest = tempfile::tempdir().unwrap();
    let disk = extract(archive, dest.path(), &options(&quiet)).unwrap();
    let mut bytes = Vec::new();
    let streamed = stream(
        archive,
        sha256(archive).unwrap(),
        &mut bytes,
        at,
        tempfile::tempdir().unwrap().path(),
        &options(&quiet),
    )
    .unwrap();
    assert_eq!(disk, streamed);
    (from_disk(dest.path()), from_stream(&bytes, at))
}

#[test]
fn a_tar_streamed_holds_what_its_extraction_holds() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.tar");
    let long = format!("deep/{}/file.txt", "d".repeat(120));
    let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    let mut add = |name: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: &str| {
        let mut h = header(kind, mode, data.len() as u64);
        h.set_mtime(1_650_000_000);
        h.set_uid(1000);
        h.set_gid(1000);
        if kind == tar::EntryType::Link || kind == tar::EntryType::Symlink {
            b.append_link(&mut h, name, link).unwrap();
        } else {
            b.append_data(&mut h, name, data).unwrap();
        }
    };
    add(
        "index.html",
        tar::EntryType::Regular,
        0o644,
        b"<h1>hi</h1>\n",
        "",
    );
    add(
        "bin/tool",
        tar::EntryType::Regular,
        0o4755,
        b"#!/bin/sh\n",
        "",
    );
    add("bin/same", tar::EntryType::Link, 0o755, b"", "bin/tool");
    add("bin/", tar::EntryType::Directory, 0o555, b"", "");
    add(&long, tar::EntryType::Regular, 0o600, &[7u8; 3000], "");
    let far = format!("{}/target", "t".repeat(110));
    add("latest", tar::EntryType::Symlink, 0o777, b"", "index.html");
    add("far", tar::EntryType::Symlink, 0o777, b"", &far);
    add(&far, tar::EntryType::Regular, 0o644, b"far\n", "");
    b.finish().unwrap();
    drop(b);
    let (disk, streamed) = both(&archive, "srv/www");
    assert_eq!(disk, streamed);
    assert!(
        matches!(&streamed["bin/tool"], Node::File { mode: 0o755, .. }),
        "setuid cleared: {:?}",
        streamed["bin/tool"]
    );
    assert_eq!(
        streamed["bin"],
        Node::Dir {
            mode: 0o555,
            mtime: 1_650_000_000
        }
    );
    assert!(streamed.contains_key(&long));
}

#[test]
fn a_zip_streamed_holds_what_its_extraction_holds() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.zip");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&archive).unwrap());
        let at = zip::DateTime::from_date_and_time(2023, 5, 6, 7, 8, 10).unwrap();
        let opts = |mode: u32, method| {
            zip::write::SimpleFileOptions::default()
                .compression_method(method)
                .unix_permissions(mode)
                .last_modified_time(at)
        };
        z.start_file(
            "site/index.html",
            opts(0o644, zip::CompressionMethod::Deflated),
        )
        .unwrap();
        z.write_all(&b"<p>text that deflates</p>\n".repeat(500))
            .unwrap();
        z.start_file(
            "site/img/a.png",
            opts(0o600, zip::CompressionMethod::Stored),
        )
        .unwrap();
        z.write_all(&[0x89, b'P', b'N', b'G', 1, 2, 3]).unwrap();
        z.add_directory("site/empty/", opts(0o750, zip::CompressionMethod::Stored))
            .unwrap();
        z.add_symlink(
            "site/home.html",
            "index.html",
            opts(0o777, zip::CompressionMethod::Stored),
        )
        .unwrap();
        z.finish().unwrap();
    }
    let (disk, streamed) = both(&archive, "app");
    assert_eq!(disk, streamed);
    assert_eq!(
        streamed["site/home.html"],
        Node::Symlink("index.html".into())
    );
    assert!(matches!(
        streamed["site/empty"],
        Node::Dir { mode: 0o750, .. }
    ));
}

#[test]
fn a_hostile_archive_is_refused_when_streamed_too() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("through.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    b.append_link(&mut header(tar::EntryType::Symlink, 0o777, 0), "l", "sub")
        .unwrap();
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o644, 1),
        "l/x",
        &b"x"[..],
    )
    .unwrap();
    b.finish().unwrap();
    drop(b);
    let quiet = |_: String| {};
    let mut bytes = Vec::new();
    let e = stream(
        &archive,
        sha256(&archive).unwrap(),
        &mut bytes,
        "app",
        dir.path(),
        &options(&quiet),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("\"l/x\": goes through the symlink \"l\""), "{e}");
}
