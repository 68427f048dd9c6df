//! Test images: OCI layouts written by tests/fixtures/mkimage.py, and the
//! `builderd build` runs over them.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

/// Writes an OCI layout from `spec` (see mkimage.py); returns the layer
/// digests.
pub fn make_image(dir: &Path, mut spec: Value) -> Vec<String> {
    spec["dir"] = json!(dir.to_str().unwrap());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mkimage.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "mkimage.py failed");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

/// `builderd build SOURCE -o OUT EXTRA...`.
pub fn build(source: &str, out: &Path, extra: &[&str]) -> Output {
    super::builderd()
        .arg("build")
        .arg(source)
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// `build`, which must succeed with an image that passes `e2fsck -fn`;
/// answers its metadata (OUT.json).
pub fn built(source: &str, out: &Path, extra: &[&str]) -> Value {
    let o = build(source, out, extra);
    assert!(
        o.status.success(),
        "build failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    super::e2fsck(out);
    super::projects::metadata(out)
}

/// Checks a build failed and left neither the image nor its metadata;
/// returns its stderr.
pub fn assert_failed(o: &Output, out: &Path) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "the build should have failed:\n{err}");
    assert!(!out.exists(), "{} left behind", out.display());
    assert!(
        !Path::new(&format!("{}.json", out.display())).exists(),
        "metadata left behind"
    );
    err
}
