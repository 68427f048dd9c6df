//! `--preserve-layers`: an image's layers kept as read-only disks in
//! overlayfs form under a small top disk. The overlay of them (mounted on
//! the host, and booted in QEMU) is the tree the flatten makes; a second
//! image that shares the lower layers stores only its new one.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::images::{built, make_image};
use common::projects::boot;
use common::{assert_same, e2fsck, root_or_skip, run, snapshot, tmp, without_builderd, Mount};
use serde_json::{json, Value};

const APP: &str = r#"#!/bin/sh
b=busybox
for p in /gone /data/a /data/sub/c /opq/old1 /lib/libfoo.so /usr/lib/libfoo.so /etc/conf /srv/deep/f; do
  if $b test -e $p; then echo "app: has $p: $($b cat $p 2>/dev/null)"; else echo "app: no $p"; fi
done
echo "app: opq holds $($b ls /opq)"
echo "app: etc is $($b stat -c %a /etc), srv is $($b stat -c %a:%u /srv)"
echo written > /written && echo "app: wrote $($b cat /written)"
"#;

/// Three layers: a base; whiteouts of a directory and a file, an opaque
/// directory, a file under a lower symlink (it goes where the link points),
/// a replaced file; then the app, a whiteout under a directory, a
/// directory's new metadata and a path whose parents only a lower layer
/// describes. `top` varies the last layer.
fn three_layers(layout: &Path, top: &str) {
    layers_and(layout, top, &[]);
}

/// The three layers and, over them, one with `more` entries.
fn layers_and(layout: &Path, top: &str, more: &[Value]) {
    let mut spec = json!({"tag": "v1", "layers": [{"entries": [
            {"name": "bin", "type": "dir"},
            {"name": "bin/busybox", "src": "/bin/busybox", "mode": 0o755},
            {"name": "bin/sh", "type": "symlink", "link": "busybox"},
            {"name": "usr", "type": "dir"},
            {"name": "usr/lib", "type": "dir"},
            {"name": "lib", "type": "symlink", "link": "usr/lib"},
            {"name": "etc", "type": "dir"},
            {"name": "etc/conf", "data": "old"},
            {"name": "etc/x", "data": "with an xattr", "xattrs": {"user.note": "kept"}},
            {"name": "data", "type": "dir"},
            {"name": "data/a", "data": "a"},
            {"name": "data/b", "data": "b"},
            {"name": "data/sub", "type": "dir"},
            {"name": "data/sub/c", "data": "c"},
            {"name": "opq", "type": "dir", "mode": 0o750},
            {"name": "opq/old1", "data": "1"},
            {"name": "opq/old2", "data": "2"},
            {"name": "gone", "type": "dir"},
            {"name": "gone/x", "data": "x"},
            {"name": "hl1", "data": "linked"},
            {"name": "hl2", "type": "hardlink", "link": "hl1"},
            {"name": "srv", "type": "dir", "mode": 0o711, "uid": 7},
        ]}, {"entries": [
            {"name": ".wh.gone"},
            {"name": "data/.wh.a"},
            {"name": "opq/.wh..wh..opq"},
            {"name": "opq/new", "data": "new"},
            {"name": "lib/libfoo.so", "data": "foo"},
            {"name": "etc/conf", "data": "new"},
        ]}, {"entries": [
            {"name": "app.sh", "data": APP, "mode": 0o755},
            {"name": "data/sub/.wh.c"},
            {"name": "data/new", "data": top},
            {"name": "etc", "type": "dir", "mode": 0o750},
            {"name": "srv/deep/f", "data": "deep"},
        ]}], "config": {"Entrypoint": ["/app.sh"], "Env": ["PATH=/bin"]}});
    if !more.is_empty() {
        spec["layers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"entries": more}));
    }
    make_image(layout, spec);
}

/// Mounts the top disk's upper directory over the layer disks (read-only,
/// on the host) and compares the overlay with the flattened image `flat`,
/// entry by entry.
fn assert_overlay_is_flat(out: &Path, disks: &[PathBuf], flat: &Path) {
    let top = Mount::new(out);
    let lowers: Vec<Mount> = disks.iter().map(|d| Mount::new(d)).collect();
    let merged = tempfile::tempdir().unwrap();
    let mut dirs = vec![top.path().join(".builderd/upper").display().to_string()];
    dirs.extend(lowers.iter().rev().map(|m| m.path().display().to_string()));
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={}", dirs.join(":")))
        .arg(merged.path()));
    let mut got = snapshot(merged.path());
    let _ = Command::new("umount").arg(merged.path()).status();
    let expected = snapshot(Mount::new(flat).path());
    // The one difference an overlay cannot help: a file whose other name
    // an upper layer removed still counts that name (st_nlink comes from
    // the lower disk's inode).
    for (path, e) in got.iter_mut() {
        if expected
            .get(path)
            .is_some_and(|x| x.hardlink_group.is_none())
        {
            e.hardlink_group = None;
        }
    }
    // builderd's own files are there and the same (the init, its run
    // config, their times).
    without_builderd(got.clone());
    assert_same(&expected, &got);
}

fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The layer disks OUT.json lists, each checked: beside the image, whole
/// (`e2fsck`), with the sha256 it says.
fn layer_disks(out: &Path, meta: &Value) -> Vec<PathBuf> {
    let disks = meta["layer_disks"].as_array().expect("layer_disks");
    disks
        .iter()
        .map(|d| {
            let path = PathBuf::from(d["file"].as_str().unwrap());
            assert_eq!(path.parent(), out.parent());
            e2fsck(&path);
            assert_eq!(sha256(&path), d["sha256"].as_str().unwrap());
            path
        })
        .collect()
}

/// Which of the layer disks the build converted (the others it took from
/// the store).
fn converted(meta: &Value) -> Vec<bool> {
    meta["layer_disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["converted"].as_bool().unwrap())
        .collect()
}

/// The store's files and their sizes.
fn store_files(store: &Path) -> BTreeMap<String, u64> {
    std::fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect()
}

#[test]
fn kept_layers_overlay_to_the_flattened_tree_and_boot() {
    let dir = tmp();
    let layout = dir.path().join("layout");
    three_layers(&layout, "top one");
    let source = format!("oci:{}:v1", layout.display());
    let flat = dir.path().join("flat.ext4");
    built(&source, &flat, &[]);
    let out = dir.path().join("rootfs.ext4");
    let store = dir.path().join("store");
    let store_arg = store.to_str().unwrap();
    let meta = built(
        &source,
        &out,
        &["--preserve-layers", "--layer-store", store_arg],
    );
    let disks = layer_disks(&out, &meta);
    assert_eq!(disks.len(), 3);
    assert_eq!(converted(&meta), [true, true, true]);
    assert_eq!(meta["layer_disks"][1]["whiteouts"], 3, "{meta}");
    assert_eq!(meta["layer_disks"][1]["opaque_dirs"], 1, "{meta}");

    if root_or_skip() {
        assert_overlay_is_flat(&out, &disks, &flat);
        assert!(Mount::new(&flat).path().join("usr/lib/libfoo.so").is_file());
    }

    let (console, code) = boot(&out);
    assert_eq!(code, Some(0), "{console}");
    for line in [
        "app: no /gone",
        "app: no /data/a",
        "app: no /data/sub/c",
        "app: no /opq/old1",
        "app: has /lib/libfoo.so: foo",
        "app: has /usr/lib/libfoo.so: foo",
        "app: has /etc/conf: new",
        "app: has /srv/deep/f: deep",
        "app: opq holds new",
        "app: etc is 750, srv is 711:7",
        "app: wrote written",
    ] {
        assert!(console.contains(line), "{line:?} not in:\n{console}");
    }
    // The layers stay as they were: the guest wrote to the top disk.
    for (disk, d) in disks.iter().zip(meta["layer_disks"].as_array().unwrap()) {
        assert_eq!(sha256(disk), d["sha256"].as_str().unwrap());
    }
}

#[test]
fn an_image_sharing_the_lower_layers_stores_only_its_new_layer() {
    let dir = tmp();
    let store = dir.path().join("store");
    let store_arg = store.to_str().unwrap();
    let a = dir.path().join("a");
    three_layers(&a, "top one");
    let b = dir.path().join("b");
    three_layers(&b, "top two");
    let out_a = dir.path().join("a.ext4");
    let meta_a = built(
        &format!("oci:{}:v1", a.display()),
        &out_a,
        &["--preserve-layers", "--layer-store", store_arg],
    );
    let before = store_files(&store);
    let out_b = dir.path().join("b.ext4");
    let meta_b = built(
        &format!("oci:{}:v1", b.display()),
        &out_b,
        &["--preserve-layers", "--layer-store", store_arg],
    );
    layer_disks(&out_b, &meta_b);
    let after = store_files(&store);
    assert_eq!(converted(&meta_b), [false, false, true]);
    for i in 0..2 {
        assert_eq!(
            meta_a["layer_disks"][i]["sha256"],
            meta_b["layer_disks"][i]["sha256"]
        );
    }
    // What was stored stays; what is new is the new layer's disk, its
    // state and its metadata, nothing else.
    for (name, size) in &before {
        assert_eq!(after.get(name), Some(size), "{name}");
    }
    let new: Vec<(&String, &u64)> = after
        .iter()
        .filter(|(n, _)| !before.contains_key(*n))
        .collect();
    assert_eq!(new.len(), 3, "{new:?}");
    let disk = new.iter().find(|(n, _)| n.ends_with(".ext4")).unwrap();
    assert_eq!(
        *disk.1,
        meta_b["layer_disks"][2]["size_bytes"].as_u64().unwrap()
    );
    let grown: u64 = new.iter().map(|(_, s)| **s).sum();
    eprintln!(
        "the store grew by {grown} bytes: the new layer's disk is {} bytes",
        disk.1
    );
    // An image over all of b's layers reads b's top layer's tree from the
    // store (kept as its changes over the tree below) and adds its own.
    let c = dir.path().join("c");
    layers_and(
        &c,
        "top two",
        &[
            json!({"name": "srv/deep/g", "data": "g"}),
            json!({"name": ".wh.hl2"}),
        ],
    );
    let source_c = format!("oci:{}:v1", c.display());
    let out_c = dir.path().join("c.ext4");
    let meta_c = built(
        &source_c,
        &out_c,
        &["--preserve-layers", "--layer-store", store_arg],
    );
    let disks_c = layer_disks(&out_c, &meta_c);
    assert_eq!(converted(&meta_c), [false, false, false, true]);
    if root_or_skip() {
        let flat = dir.path().join("c-flat.ext4");
        built(&source_c, &flat, &[]);
        assert_overlay_is_flat(&out_c, &disks_c, &flat);
    }
    // Both artifacts share the stored disks: hard links, not copies.
    use std::os::unix::fs::MetadataExt;
    let shared = std::fs::metadata(meta_b["layer_disks"][0]["file"].as_str().unwrap()).unwrap();
    assert!(
        shared.nlink() >= 4,
        "the lowest layer's disk has {} links",
        shared.nlink()
    );
    // A damaged tree in the store (same size, other bytes): the build
    // says so and converts the layers again.
    for (name, size) in store_files(&store) {
        if name.ends_with(".tree") {
            std::fs::write(store.join(&name), vec![0xff; size as usize]).unwrap();
        }
    }
    let again = dir.path().join("c-again.ext4");
    let o = common::images::build(
        &source_c,
        &again,
        &["--preserve-layers", "--layer-store", store_arg],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("is damaged"), "{err}");
    let meta_again = common::projects::metadata(&again);
    assert_eq!(converted(&meta_again), [true, true, true, true]);
    for i in 0..4 {
        assert_eq!(
            meta_again["layer_disks"][i]["sha256"],
            meta_c["layer_disks"][i]["sha256"]
        );
    }
}

#[test]
fn the_service_keeps_layers_and_serves_each_disk() {
    use common::registry::TestRegistry;
    use common::server::{config, sha256_hex, Server};
    let dir = tmp();
    let reg = TestRegistry::start(None);
    let layout = dir.path().join("layout");
    three_layers(&layout, "served");
    reg.push(&layout, "v1", "layered:v1", None);
    let server = Server::start(&dir.path().join("data"), &[]);
    let key = server.tenant("acme", "free");
    let mut cfg = config(&format!("{}/layered:v1", reg.addr));
    cfg["config"]["strategy"]["docker_strategy"]["preserve_layers"] = json!(true);
    let status = server.finished(&key, &cfg);
    assert_eq!(status["state"], "BUILD_STATE_COMPLETED", "{status}");
    let id = status["buildId"].as_str().unwrap();
    let meta: Value =
        serde_json::from_str(status["artifact"]["metadataJson"].as_str().unwrap()).unwrap();
    let disks = meta["layer_disks"].as_array().expect("layer_disks");
    assert_eq!(disks.len(), 3);
    let auth = format!("Authorization: Bearer {key}");
    for (n, disk) in disks.iter().enumerate() {
        assert_eq!(disk["file"], format!("rootfs.layer-{n}.ext4"));
        let a = server.curl(
            &format!("/builder.v1.BuilderService/GetBuildArtifact/{id}?layer={n}"),
            &["-H", &auth],
        );
        assert_eq!(a.status, 200);
        assert_eq!(sha256_hex(&a.body), disk["sha256"].as_str().unwrap());
        let file = dir.path().join(format!("layer-{n}.ext4"));
        std::fs::write(&file, &a.body).unwrap();
        e2fsck(&file);
    }
    let beyond = server.curl(
        &format!("/builder.v1.BuilderService/GetBuildArtifact/{id}?layer=3"),
        &["-H", &auth],
    );
    assert_eq!(beyond.status, 400);
    // The layers are stored once, in the data directory's layer store, and
    // the artifact links them.
    let stored = store_files(&dir.path().join("data/layers"));
    assert_eq!(stored.keys().filter(|n| n.ends_with(".ext4")).count(), 3);
}

#[test]
fn what_an_overlay_cannot_hold_is_refused_by_name() {
    let dir = tmp();
    let store = dir.path().join("store");
    for (name, entry, says) in [
        (
            "root-opaque",
            json!({"name": ".wh..wh..opq"}),
            "marks the root opaque",
        ),
        (
            "own-whiteout",
            json!({"name": "dev-null", "type": "char", "major": 0, "minor": 0}),
            "character device 0:0",
        ),
        (
            "lower-link",
            json!({"name": "hl3", "type": "hardlink", "link": "hl1"}),
            "hard link to a file of a lower layer",
        ),
    ] {
        let layout = dir.path().join(name);
        layers_and(&layout, "x", &[entry]);
        let out = dir.path().join(format!("{name}.ext4"));
        let o = common::images::build(
            &format!("oci:{}:v1", layout.display()),
            &out,
            &[
                "--preserve-layers",
                "--layer-store",
                store.to_str().unwrap(),
            ],
        );
        let err = common::images::assert_failed(&o, &out);
        assert!(err.contains(says), "{name}: {err}");
        assert!(!dir.path().join(format!("{name}.layer-0.ext4")).exists());
    }
}
