//! `builderd build oci:DIR:TAG`: images made by the test (tar layers written
//! by tests/fixtures/mkimage.py), converted, e2fsck-checked, and compared
//! entry by entry with what `umoci unpack` makes of the same image.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::images::{assert_failed, build, make_image};
use common::*;
use serde_json::{json, Value};

fn build_ok(source: &str, out: &Path) -> Value {
    let o = build(source, out, &[]);
    assert!(
        o.status.success(),
        "build failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    e2fsck(out);
    let json = fs::read(format!("{}.json", out.display())).unwrap();
    serde_json::from_slice(&json).unwrap()
}

/// What umoci makes of the image: the reference flatten.
fn umoci(layout: &Path, tag: &str, work: &Path) -> PathBuf {
    let bundle = work.join(format!("bundle-{tag}"));
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(&bundle));
    bundle.join("rootfs")
}

/// Snapshots, leaving out what the two sides cannot agree on: the mtimes of
/// directories no layer has an entry for (the root and implicit parents).
/// umoci gives them the time of the unpack; builderd the image's newest
/// mtime, so that the same image always gives the same bytes.
fn comparable(root: &Path) -> std::collections::BTreeMap<Vec<u8>, Entry> {
    let mut s = snapshot(root);
    for implicit in [&b""[..], b"implicit", b"implicit/parents"] {
        if let Some(r) = s.get_mut(implicit) {
            r.mtime = (0, 0);
        }
    }
    s
}

fn f(name: &str, data: &str) -> Value {
    json!({"name": name, "type": "file", "data": data})
}
fn d(name: &str) -> Value {
    json!({"name": name, "type": "dir"})
}
fn link(name: &str, target: &str) -> Value {
    json!({"name": name, "type": "hardlink", "link": target})
}

/// Layers exercising overlay semantics and each of go-containerregistry's
/// `mutate.Extract` bug shapes.
fn overlay_layers(c1: &str, c2: &str, c3: &str) -> Value {
    json!([
        {"compression": c1, "entries": [
            d("etc"), f("etc/hostname", "base"), f("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
            d("opaque"), f("opaque/old1", "1"), f("opaque/old2", "2"),
            d("wdir"), f("wdir/a", "a"), f("wdir/b", "b"),
            d("keep"), f("keep/a", "kept"), f("keep/b", "removed above"),
            // A link whose target is replaced above, and one whose target is
            // deleted above: both keep this layer's content.
            f("target", "lower content"), link("link-same-layer", "target"),
            f("gone", "deleted above"), link("link-to-gone", "gone"), link("link-to-gone-2", "gone"),
            d("p"), f("p/q", "under a dir that becomes a file"),
            f("r", "a file that becomes a dir"),
            // Absolute and relative symlinks are kept as they are.
            d("usr"), d("usr/share"), d("usr/share/doc"), f("usr/share/doc/readme", "doc"),
            {"name": "abs", "type": "symlink", "link": "/usr/share/doc"},
            {"name": "rel", "type": "symlink", "link": "usr/share/doc/readme"},
            d("usr/sbin"), {"name": "sbin", "type": "symlink", "link": "usr/sbin"},
            f("base-file", "for a link from above"),
            d("dev"), {"name": "dev/null", "type": "char", "major": 1, "minor": 3, "mode": 0o666},
            {"name": "dev/fifo", "type": "fifo"},
            {"name": "attrs", "type": "file", "data": "x", "xattrs": {"user.k": "v", "trusted.t": "1"}},
            {"name": "big", "type": "file", "size": 3_000_000},
            {"name": "owned", "type": "file", "data": "o", "uid": 1000, "gid": 2000, "mode": 0o4750, "mtime": 1_234_567_890},
        ]},
        {"compression": c2, "entries": [
            f("target", "upper content"),
            f(".wh.gone", ""),
            d("opaque"), f("opaque/.wh..wh..opq", ""), f("opaque/new", "new"),
            f("wdir/.wh.a", ""),
            f("keep/.wh.b", ""),
            f("p", "now a file"),
            d("r"), f("r/s", "inside"),
            link("cross-link", "base-file"),
            f("usr/share/doc/readme2", "more doc"),
            // Entries whose parent a lower layer has as a symlink (relative,
            // absolute) and this layer only implies: they go through it.
            f("sbin/tool", "through a relative symlink"),
            f("abs/through-absolute", "through an absolute symlink"),
            f("implicit/parents/file", "no parent entries"),
            f("dup", "first"), f("dup", "second wins"),
            f("./dotslash", "dot"),
            f("/absolute-name", "leading slash"),
            {"name": "big", "type": "file", "size": 100_000},
        ]},
        {"compression": c3, "entries": [
            f(".wh.wdir", ""),
            {"name": "etc", "type": "dir", "mode": 0o700, "mtime": 1_600_000_000},
            f("etc/hostname", "top"),
        ]},
    ])
}

fn need_root() -> Option<tempfile::TempDir> {
    root_or_skip().then(tmp)
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root: run as root")]
fn overlay_semantics_match_umoci() {
    let Some(dir) = need_root() else { return };
    let layout = dir.path().join("layout");
    make_image(
        &layout,
        json!({"tag": "v1", "layers": overlay_layers("gzip", "gzip", "none"), "config": {"Cmd": ["/bin/sh"]}}),
    );
    let out = dir.path().join("rootfs.ext4");
    let meta = build_ok(&format!("oci:{}:v1", layout.display()), &out);
    let reference = comparable(&umoci(&layout, "v1", dir.path()));
    let m = Mount::new(&out);
    let got = without_builderd(comparable(m.path()));
    assert_same(&reference, &got);

    // The bug shapes, spelled out.
    let read = |p: &str| fs::read_to_string(m.path().join(p)).unwrap();
    assert_eq!(read("link-same-layer"), "lower content");
    assert_eq!(read("target"), "upper content");
    assert_eq!(read("link-to-gone"), "deleted above");
    assert!(!m.path().join("gone").exists());
    assert_eq!(
        got[&b"link-to-gone"[..]].hardlink_group,
        got[&b"link-to-gone-2"[..]].hardlink_group
    );
    assert!(m.path().join("opaque/new").exists() && !m.path().join("opaque/old1").exists());
    assert!(!m.path().join("wdir").exists());
    assert_eq!(
        fs::read_link(m.path().join("abs")).unwrap(),
        Path::new("/usr/share/doc")
    );
    assert_eq!(read("usr/sbin/tool"), "through a relative symlink");
    assert_eq!(
        read("usr/share/doc/through-absolute"),
        "through an absolute symlink"
    );
    assert_eq!(
        fs::read_link(m.path().join("sbin")).unwrap(),
        Path::new("usr/sbin")
    );
    assert_eq!(meta["flatten"]["hardlinks_fixed"], json!(2));

    // Content an upper layer masks was read beside the rest (the layers are
    // read side by side) but none of it is left in the image's bytes.
    let bytes = fs::read(&out).unwrap();
    for masked in [
        "removed above",
        "under a dir that becomes a file",
        "a file that becomes a dir",
    ] {
        assert!(
            !bytes.windows(masked.len()).any(|w| w == masked.as_bytes()),
            "{masked:?} is still in the image"
        );
    }
    assert!(bytes.windows(13).any(|w| w == b"upper content"));
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root: run as root")]
fn docker_schema2_and_zstd_layers_match_the_oci_reference() {
    let Some(dir) = need_root() else { return };
    let reference_layout = dir.path().join("reference");
    make_image(
        &reference_layout,
        json!({"tag": "ref", "layers": overlay_layers("gzip", "gzip", "gzip")}),
    );
    let reference = comparable(&umoci(&reference_layout, "ref", dir.path()));
    for (name, spec) in [
        (
            "docker",
            json!({"tag": "d", "docker": true, "layers": overlay_layers("gzip", "none", "gzip")}),
        ),
        (
            "zstd",
            json!({"tag": "z", "layers": overlay_layers("zstd", "zstd", "none")}),
        ),
    ] {
        let layout = dir.path().join(name);
        make_image(&layout, spec.clone());
        let out = dir.path().join(format!("{name}.ext4"));
        let tag = spec["tag"].as_str().unwrap();
        let meta = build_ok(&format!("oci:{}:{tag}", layout.display()), &out);
        if name == "docker" {
            assert_eq!(
                meta["manifest_media_type"],
                json!("application/vnd.docker.distribution.manifest.v2+json")
            );
        }
        let m = Mount::new(&out);
        assert_same(&reference, &without_builderd(comparable(m.path())));
    }
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root: run as root")]
fn multi_platform_index_picks_the_platform() {
    let Some(dir) = need_root() else { return };
    let layout = dir.path().join("layout");
    make_image(
        &layout,
        json!({"tag": "multi", "platforms": [["linux", "arm64"], ["linux", "amd64"], ["linux", "s390x"]],
        "layers": [{"entries": [f("hello", "world")]}]}),
    );
    let out = dir.path().join("arm.ext4");
    let o = build(
        &format!("oci:{}:multi", layout.display()),
        &out,
        &["--platform", "linux/arm64"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta: Value =
        serde_json::from_slice(&fs::read(format!("{}.json", out.display())).unwrap()).unwrap();
    assert_eq!(meta["platform"], json!("linux/arm64"));
    e2fsck(&out);
    let out = dir.path().join("riscv.ext4");
    let o = build(
        &format!("oci:{}:multi", layout.display()),
        &out,
        &["--platform", "linux/riscv64"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("no linux/riscv64 variant")
            && err.contains("linux/s390x"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root: run as root")]
fn metadata_describes_the_image() {
    let Some(dir) = need_root() else { return };
    let layout = dir.path().join("layout");
    let digests = make_image(
        &layout,
        json!({"tag": "app", "layers": [{"entries": [d("app"), f("app/run", "#!/bin/sh\n")]}],
            "config": {"Entrypoint": ["/app/run"], "Cmd": ["--serve"], "Env": ["PATH=/usr/bin", "lower=case"],
                       "WorkingDir": "/app", "User": "1000:1000", "ExposedPorts": {"8080/tcp": {}}, "Labels": {"team": "platform"}}}),
    );
    let out = dir.path().join("app.ext4");
    let meta = build_ok(&format!("oci:{}:app", layout.display()), &out);
    assert_eq!(meta["layers"][0]["digest"], json!(digests[0]));
    assert_eq!(meta["config"]["entrypoint"], json!(["/app/run"]));
    assert_eq!(
        meta["config"]["env"],
        json!(["PATH=/usr/bin", "lower=case"])
    );
    assert_eq!(meta["config"]["exposed_ports"], json!(["8080/tcp"]));
    assert_eq!(meta["config"]["labels"]["team"], json!("platform"));
    assert_eq!(meta["platform"], json!("linux/amd64"));
    let sha = String::from_utf8(run(Command::new("sha256sum").arg(&out)).stdout).unwrap();
    assert_eq!(
        meta["image"]["sha256"].as_str().unwrap(),
        sha.split_whitespace().next().unwrap()
    );
    for stage in ["resolve", "flatten", "finish", "checksum", "total"] {
        assert!(meta["timings_ms"][stage].is_u64(), "{stage}");
    }
}

/// Runs a build that must fail: returns stderr; checks nothing was written.
fn build_fails(source: &str, out: &Path) -> String {
    assert_failed(&build(source, out, &[]), out)
}

#[test]
fn bad_blobs_fail_with_their_digest_and_leave_nothing() {
    let dir = tmp();
    let spec = json!({"tag": "t", "layers": [{"entries": [f("a", "first layer")]}, {"entries": [{"name": "big", "type": "file", "size": 200_000}]}]});
    let blob = |layout: &Path, digest: &str| layout.join("blobs/sha256").join(&digest[7..]);

    // A blob whose content does not match its digest.
    let layout = dir.path().join("mismatch");
    let digests = make_image(&layout, spec.clone());
    let mut data = fs::read(blob(&layout, &digests[1])).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    fs::write(blob(&layout, &digests[1]), &data).unwrap();
    let err = build_fails(
        &format!("oci:{}:t", layout.display()),
        &dir.path().join("o1.ext4"),
    );
    assert!(err.contains("digest") && err.contains(&digests[1]), "{err}");

    // A truncated blob.
    let layout = dir.path().join("truncated");
    let digests = make_image(&layout, spec.clone());
    let data = fs::read(blob(&layout, &digests[1])).unwrap();
    fs::write(blob(&layout, &digests[1]), &data[..data.len() / 3]).unwrap();
    let err = build_fails(
        &format!("oci:{}:t", layout.display()),
        &dir.path().join("o2.ext4"),
    );
    assert!(err.contains("digest") && err.contains(&digests[1]), "{err}");

    // Corrupt gzip whose digest is right (the descriptor names the corrupt bytes).
    let layout = dir.path().join("corrupt");
    let mut corrupt = spec.clone();
    corrupt["layers"][1]["compression"] = json!("none");
    corrupt["layers"][1]["media_type"] = json!("application/vnd.oci.image.layer.v1.tar+gzip");
    let digests = make_image(&layout, corrupt);
    let err = build_fails(
        &format!("oci:{}:t", layout.display()),
        &dir.path().join("o3.ext4"),
    );
    assert!(err.contains("digest") && err.contains(&digests[1]), "{err}");

    // An unknown media type.
    let layout = dir.path().join("unknown");
    let mut unknown = spec.clone();
    unknown["layers"][0]["media_type"] = json!("application/x-something-else");
    make_image(&layout, unknown);
    let err = build_fails(
        &format!("oci:{}:t", layout.display()),
        &dir.path().join("o4.ext4"),
    );
    assert!(
        err.contains("unknown media type") && err.contains("application/x-something-else"),
        "{err}"
    );

    // A tag that is not there.
    let err = build_fails(
        &format!("oci:{}:nope", dir.path().join("unknown").display()),
        &dir.path().join("o5.ext4"),
    );
    assert!(
        err.contains("no image tagged \"nope\"") && err.contains("tags: t"),
        "{err}"
    );
}

#[test]
fn archive_sources_give_the_same_image_as_the_layout() {
    let dir = tmp();
    let layout = dir.path().join("layout");
    make_image(
        &layout,
        json!({"tag": "v1", "layers": overlay_layers("gzip", "gzip", "none")}),
    );
    let oci_archive = dir.path().join("oci.tar");
    let docker_archive = dir.path().join("docker.tar");
    run(Command::new("skopeo")
        .args(["copy", "-q"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("oci-archive:{}:v1", oci_archive.display())));
    run(Command::new("skopeo")
        .args(["copy", "-q"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!(
            "docker-archive:{}:test/app:v1",
            docker_archive.display()
        )));
    let from_layout = dir.path().join("layout.ext4");
    build_ok(&format!("oci:{}:v1", layout.display()), &from_layout);
    for (name, source) in [
        (
            "oci-archive",
            format!("oci-archive:{}:v1", oci_archive.display()),
        ),
        (
            "docker-archive",
            format!("docker-archive:{}", docker_archive.display()),
        ),
    ] {
        let out = dir.path().join(format!("{name}.ext4"));
        build_ok(&source, &out);
        assert!(
            fs::read(&out).unwrap() == fs::read(&from_layout).unwrap(),
            "{name} gives a different image"
        );
    }

    // A docker archive whose layer was altered fails on its diff_id.
    let mut bytes = fs::read(&docker_archive).unwrap();
    let marker = b"upper content";
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the layer is stored uncompressed");
    bytes[at] = b'U';
    let altered = dir.path().join("altered.tar");
    fs::write(&altered, &bytes).unwrap();
    let err = build_fails(
        &format!("docker-archive:{}", altered.display()),
        &dir.path().join("altered.ext4"),
    );
    assert!(err.contains("digest"), "{err}");
}
