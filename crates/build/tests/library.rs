//! A build through the library, as a program embedding it would run one:
//! an OCI layout written here, a `BuildRequest`, an in-memory reporter.
//! The events come in the order of the stages, the report says what was
//! made, and the image is one `e2fsck -fn` passes.

use std::io::Write;
use std::path::Path;

use builderd_build::{BuildRequest, Collect, Event, Level, Stage};
use sha2::Digest as _;

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// Writes `bytes` as a blob of the layout; answers its descriptor.
fn blob(layout: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
    let digest = sha(bytes);
    std::fs::write(layout.join("blobs/sha256").join(&digest[7..]), bytes).unwrap();
    serde_json::json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
}

/// A gzip layer of `files` (path, content).
fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, *data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// An OCI layout of a two-layer image tagged v1; the upper layer replaces
/// a file of the lower.
fn layout(dir: &Path) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
    let lower = blob(
        dir,
        gz,
        &layer(&[("etc/motd", b"lower\n"), ("bin/app", b"#!/bin/sh\n")]),
    );
    let upper = blob(dir, gz, &layer(&[("etc/motd", b"upper\n")]));
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/app"]},
        "rootfs": {"type": "layers", "diff_ids": []}});
    let config = blob(
        dir,
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    );
    let manifest = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": [lower, upper]});
    let mut m = blob(
        dir,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.to_string().as_bytes(),
    );
    m["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "v1"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [m]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
}

#[test]
fn a_build_through_the_library_reports_its_stages_and_what_it_made() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("layout");
    layout(&src);
    let out = dir.path().join("rootfs.ext4");
    let req: BuildRequest = serde_json::from_value(serde_json::json!({
        "source": format!("oci:{}:v1", src.display()),
        "output": out,
        "platform": "linux/amd64",
    }))
    .unwrap();
    let reporter = Collect::default();
    let report = builderd_build::build(&req, &reporter).unwrap();

    let events = reporter.events();
    let stages: Vec<Stage> = events
        .iter()
        .filter_map(|e| match e {
            Event::Stage(s) => Some(*s),
            _ => None,
        })
        .collect();
    // A local layout has nothing to download.
    assert_eq!(
        stages,
        [
            Stage::Preparing,
            Stage::Building,
            Stage::Optimizing,
            Stage::Packaging
        ]
    );
    let logs: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Log(l) if l.level == Level::Info => Some(l.message.as_str()),
            _ => None,
        })
        .collect();
    assert!(logs.iter().any(|l| l.contains("2 layers")), "{logs:?}");
    assert_eq!(
        logs.iter().filter(|l| l.ends_with(" written")).count(),
        2,
        "{logs:?}"
    );
    let Some(Event::Progress(last)) = events.last() else {
        panic!("the last event: {:?}", events.last());
    };
    assert_eq!(last.step, "written");
    assert_eq!(last.done, report.image.size_bytes);

    // The report is what OUT.json holds, and says what the file is.
    assert_eq!(report.layers.len(), 2);
    assert_eq!(
        report.flatten.entries_masked, 1,
        "the upper motd masks the lower"
    );
    let image = std::fs::read(&out).unwrap();
    assert_eq!(format!("sha256:{}", report.image.sha256), sha(&image));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("rootfs.ext4.json")).unwrap())
            .unwrap();
    assert_eq!(meta["image"]["sha256"], report.image.sha256);
    assert_eq!(meta["run_config"]["entrypoint"][0], "/bin/app");
    let fsck = std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(&out)
        .output()
        .expect("e2fsck is installed");
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
fn a_failed_build_says_whose_fault_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rootfs.ext4");
    let req: BuildRequest = serde_json::from_value(serde_json::json!({
        "source": format!("oci:{}:v1", dir.path().join("missing").display()),
        "output": out,
    }))
    .unwrap();
    let e = builderd_build::build(&req, &Collect::default()).unwrap_err();
    assert_eq!(
        e.category,
        builderd_build::Category::Source,
        "{}",
        e.message
    );
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
