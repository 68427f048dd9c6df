//! `builderd build docker://…` against a real registry on loopback, with
//! images the tests make and push: equal to umoci's flatten, cached, with
//! auth, retries, and clear failures.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;

use common::images::{assert_failed, build, make_image};
use common::registry::{Proxy, TestHost, TestRegistry, TokenServer};
use common::*;
use serde_json::{json, Value};

fn image_spec() -> Value {
    json!({"tag": "v1", "layers": [
        {"entries": [{"name": "etc", "type": "dir"}, {"name": "etc/os-release", "data": "ID=test\n"},
                     {"name": "lib", "type": "dir"}, {"name": "lib/big", "size": 3_000_000},
                     {"name": "old", "data": "x"}, {"name": "link", "type": "hardlink", "link": "old"}]},
        {"compression": "zstd", "entries": [{"name": ".wh.old", "data": ""}, {"name": "lib/big", "size": 1_000_000}]},
        {"compression": "none", "entries": [{"name": "app", "data": "#!/bin/sh\necho hi\n", "mode": 0o755}]},
    ], "config": {"Entrypoint": ["/app"]}})
}

/// The digest of the image's largest layer.
fn registry_layer_digest(layout: &Path) -> String {
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: Value = serde_json::from_slice(
        &fs::read(layout.join("blobs/sha256").join(&manifest_digest[7..])).unwrap(),
    )
    .unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    layers
        .iter()
        .max_by_key(|l| l["size"].as_u64().unwrap())
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root: run as root")]
fn pulls_match_umoci_and_a_second_build_downloads_no_blob() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let layout = dir.path().join("layout");
    make_image(&layout, image_spec());
    let registry = TestRegistry::start(None);
    registry.push(&layout, "v1", "team/app:v1", None);
    let proxy = Proxy::start(&registry.addr);
    let cache = dir.path().join("cache");
    let source = format!("docker://{}/team/app:v1", proxy.addr);

    let out = dir.path().join("one.ext4");
    let o = build(&source, &out, &["--cache-dir", cache.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    e2fsck(&out);
    assert_eq!(
        proxy.count("/blobs/"),
        4,
        "three layers and the config: {:?}",
        proxy.requests.lock().unwrap()
    );

    // umoci reads only gzip and plain layers: its reference is the same
    // image with gzip layers.
    let reference_layout = dir.path().join("reference");
    let mut gz = image_spec();
    gz["layers"][1]["compression"] = json!("gzip");
    make_image(&reference_layout, gz);
    let bundle = dir.path().join("bundle");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:v1", reference_layout.display()))
        .arg(&bundle));
    let mut expected = snapshot(&bundle.join("rootfs"));
    let m = Mount::new(&out);
    let mut got = without_builderd(snapshot(m.path()));
    for s in [&mut expected, &mut got] {
        s.get_mut(&b""[..]).unwrap().mtime = (0, 0); // umoci: the unpack time
    }
    assert_same(&expected, &got);
    drop(m);

    let before = proxy.requests.lock().unwrap().len();
    let again = dir.path().join("two.ext4");
    let o = build(&source, &again, &["--cache-dir", cache.to_str().unwrap()]);
    assert!(o.status.success());
    let second: Vec<String> = proxy.requests.lock().unwrap()[before..].to_vec();
    assert!(
        second.iter().all(|r| !r.contains("/blobs/")),
        "the second build fetched blobs: {second:?}"
    );
    assert!(
        second.iter().any(|r| r.contains("/manifests/v1")),
        "the tag is always resolved: {second:?}"
    );
    assert_eq!(
        fs::read(&out).unwrap(),
        fs::read(&again).unwrap(),
        "the same image gives the same bytes"
    );

    // --no-cache neither reads nor writes the cache.
    let before = proxy.count("/blobs/");
    let fresh = dir.path().join("three.ext4");
    let o = build(&source, &fresh, &["--no-cache"]);
    assert!(o.status.success());
    assert_eq!(proxy.count("/blobs/") - before, 4);
}

#[test]
fn registry_with_htpasswd_needs_the_right_credentials() {
    let dir = tmp();
    let layout = dir.path().join("layout");
    make_image(&layout, image_spec());
    let registry = TestRegistry::start(Some(("builder", "s3cret")));
    registry.push(&layout, "v1", "private/app:v1", Some("builder:s3cret"));
    let source = format!("{}/private/app:v1", registry.addr);
    let cache = dir.path().join("cache");
    let cache_arg = ["--cache-dir", cache.to_str().unwrap()];

    let out = dir.path().join("ok.ext4");
    let o = build(
        &source,
        &out,
        &[&cache_arg[..], &["--creds", "builder:s3cret"]].concat(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    e2fsck(&out);

    let bad = dir.path().join("bad.ext4");
    let err = assert_failed(
        &build(
            &source,
            &bad,
            &[&cache_arg[..], &["--creds", "builder:wrong"]].concat(),
        ),
        &bad,
    );
    assert!(err.contains("401") && err.contains("credentials"), "{err}");
    let err = assert_failed(&build(&source, &bad, &cache_arg), &bad);
    assert!(err.contains("credentials"), "{err}");

    // Credentials from ~/.docker/config.json.
    let docker = dir.path().join("docker");
    fs::create_dir(&docker).unwrap();
    fs::write(
        docker.join("config.json"),
        json!({"auths": {registry.addr.clone(): {"auth": "YnVpbGRlcjpzM2NyZXQ="}}}).to_string(),
    )
    .unwrap();
    let o = builderd()
        .env("DOCKER_CONFIG", &docker)
        .arg("build")
        .arg(&source)
        .arg("-o")
        .arg(dir.path().join("cfg.ext4"))
        .args(cache_arg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn transient_errors_are_retried_and_permanent_ones_are_not() {
    let dir = tmp();
    let layout = dir.path().join("layout");
    make_image(&layout, image_spec());
    let registry = TestRegistry::start(None);
    registry.push(&layout, "v1", "flaky/app:v1", None);
    let proxy = Proxy::start(&registry.addr);
    // A build through the proxy that must succeed: what it logged.
    let through_proxy = |out: &Path, extra: &[&str]| {
        let o = build(
            &format!("{}/flaky/app:v1", proxy.addr),
            out,
            &[&["--no-cache"], extra].concat(),
        );
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{err}");
        err
    };

    // 503 twice on the manifest, then 200.
    *proxy.faults.fail_on.lock().unwrap() = "/manifests/".into();
    proxy.faults.fail.store(2, Ordering::SeqCst);
    let out = dir.path().join("retried.ext4");
    let err = through_proxy(&out, &[]);
    assert_eq!(
        err.matches("503 Service Unavailable; retrying").count(),
        2,
        "{err}"
    );
    e2fsck(&out);

    // 429 with Retry-After on a blob, then 200.
    *proxy.faults.fail_on.lock().unwrap() = "/blobs/".into();
    *proxy.faults.fail_status.lock().unwrap() = "429 Too Many Requests".into();
    proxy.faults.fail.store(1, Ordering::SeqCst);
    let limited = dir.path().join("limited.ext4");
    let err = through_proxy(&limited, &[]);
    assert!(
        err.contains("429 Too Many Requests; retrying in 1.0 s"),
        "Retry-After is honoured: {err}"
    );

    // A download cut off in the middle resumes where it stopped.
    let big = registry_layer_digest(&layout);
    *proxy.faults.cut_on.lock().unwrap() = format!("/blobs/{big}");
    proxy.faults.cut.store(1000, Ordering::SeqCst);
    let resumed = dir.path().join("resumed.ext4");
    let before = proxy.count(&big);
    let err = through_proxy(&resumed, &[]);
    assert!(err.contains("resuming"), "{err}");
    assert_eq!(
        proxy.count(&big) - before,
        2,
        "one cut request and one ranged request"
    );
    assert_eq!(fs::read(&resumed).unwrap(), fs::read(&out).unwrap());

    // A download that stalls (the connection open, nothing more coming) is
    // given up after --stall-timeout and resumed.
    proxy.faults.stall.store(true, Ordering::SeqCst);
    proxy.faults.cut.store(1000, Ordering::SeqCst);
    let unstuck = dir.path().join("unstuck.ext4");
    let before = proxy.count(&big);
    let err = through_proxy(&unstuck, &["--stall-timeout", "1s"]);
    assert!(
        err.contains("nothing came for 1s after 1000 of") && err.contains("resuming"),
        "{err}"
    );
    assert_eq!(
        proxy.count(&big) - before,
        2,
        "the stalled request and a ranged one"
    );
    assert_eq!(fs::read(&unstuck).unwrap(), fs::read(&out).unwrap());

    // A missing tag fails at once: one request for it, no retries.
    let missing = dir.path().join("missing.ext4");
    let before = proxy.count("/manifests/nope");
    let err = assert_failed(
        &build(
            &format!("{}/flaky/app:nope", proxy.addr),
            &missing,
            &["--no-cache"],
        ),
        &missing,
    );
    assert!(err.contains("flaky/app: tag nope not found (404"), "{err}");
    assert_eq!(proxy.count("/manifests/nope") - before, 1);

    // No registry at all.
    let gone = dir.path().join("gone.ext4");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = assert_failed(
        &build(&format!("127.0.0.1:{port}/x:v1"), &gone, &["--no-cache"]),
        &gone,
    );
    assert!(err.contains("gave up after"), "{err}");
}

/// The `log` lines of a `--events json` run, in order.
fn logged(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["log"]["message"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn upper_layers_are_written_while_lower_ones_still_download() {
    let dir = tmp();
    let layout = dir.path().join("layout");
    let digests = make_image(&layout, image_spec());
    let registry = TestRegistry::start(None);
    registry.push(&layout, "v1", "slow/app:v1", None);
    let proxy = Proxy::start(&registry.addr);
    let source = format!("{}/slow/app:v1", proxy.addr);
    let reference = dir.path().join("reference.ext4");
    let o = build(&source, &reference, &["--no-cache"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The bottom layer takes 1.5 s more to come.
    let bottom = &digests[0];
    *proxy.faults.slow_on.lock().unwrap() = format!("/blobs/{bottom}");
    proxy.faults.slow_ms.store(1500, Ordering::SeqCst);
    let out = dir.path().join("overlapped.ext4");
    let o = build(&source, &out, &["--no-cache", "--events", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = logged(&o.stderr);
    let at = |what: &dyn Fn(&str) -> bool| {
        lines
            .iter()
            .position(|l| what(l))
            .unwrap_or_else(|| panic!("not in {lines:#?}"))
    };
    // The layers are written top down; the first is another than the bottom.
    let first_written = at(&|l| l.ends_with(" written"));
    assert!(!lines[first_written].contains(bottom.as_str()));
    let bottom_fetched = at(&|l| l.starts_with(&format!("layer {bottom} (")));
    assert!(
        first_written < bottom_fetched,
        "the top layer was written only after the bottom one had come: {lines:#?}"
    );
    assert!(
        lines[bottom_fetched].contains("downloaded in"),
        "{lines:#?}"
    );
    e2fsck(&out);
    assert!(fs::read(&out).unwrap() == fs::read(&reference).unwrap());
}

#[test]
fn a_lower_layer_that_fails_to_download_fails_the_build_with_its_own_error() {
    let dir = tmp();
    let layout = dir.path().join("layout");
    let digests = make_image(&layout, image_spec());
    let registry = TestRegistry::start(None);
    registry.push(&layout, "v1", "gone/app:v1", None);
    let proxy = Proxy::start(&registry.addr);
    let bottom = &digests[0];
    *proxy.faults.fail_on.lock().unwrap() = format!("/blobs/{bottom}");
    *proxy.faults.fail_status.lock().unwrap() = "404 Not Found".into();
    proxy.faults.fail.store(1, Ordering::SeqCst);
    let cache = dir.path().join("cache");
    let out = dir.path().join("gone.ext4");
    let err = assert_failed(
        &build(
            &format!("{}/gone/app:v1", proxy.addr),
            &out,
            &["--cache-dir", cache.to_str().unwrap()],
        ),
        &out,
    );
    assert!(
        err.contains(&format!("blob {bottom}: not found (404)")),
        "{err}"
    );
    assert_eq!(
        proxy.count(&format!("/blobs/{bottom}")),
        1,
        "no retries of a 404"
    );
    let hex = &bottom[7..];
    assert!(!cache.join("blobs/sha256").join(hex).exists());
    assert!(!cache.join("partial").join(hex).exists());
}

#[test]
fn a_corrupt_blob_fails_and_leaves_nothing_in_the_cache() {
    let dir = tmp();
    let layout = dir.path().join("layout");
    let digests = make_image(&layout, image_spec());
    let registry = TestRegistry::start(None);
    registry.push(&layout, "v1", "bad/app:v1", None);
    // The registry serves what is on its disk: corrupt one layer there.
    let file = registry.blob_file(&digests[0]);
    let mut data = fs::read(&file).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x55;
    fs::write(&file, &data).unwrap();
    let cache = dir.path().join("cache");
    let out = dir.path().join("bad.ext4");
    let err = assert_failed(
        &build(
            &format!("{}/bad/app:v1", registry.addr),
            &out,
            &["--cache-dir", cache.to_str().unwrap()],
        ),
        &out,
    );
    assert!(err.contains("digest") && err.contains(&digests[0]), "{err}");
    let hex = &digests[0][7..];
    assert!(
        !cache.join("blobs/sha256").join(hex).exists(),
        "the corrupt blob is in the cache"
    );
    assert!(
        !cache.join("partial").join(hex).exists(),
        "a partial of the corrupt blob is kept"
    );
}

#[test]
fn a_cached_blob_that_fails_its_check_leaves_the_cache_and_is_downloaded_again() {
    let dir = tmp();
    let layout = dir.path().join("layout");
    make_image(&layout, image_spec());
    let registry = TestRegistry::start(None);
    registry.push(&layout, "v1", "cached/app:v1", None);
    let cache = dir.path().join("cache");
    let cache_arg = ["--cache-dir", cache.to_str().unwrap()];
    let source = format!("{}/cached/app:v1", registry.addr);
    let first = dir.path().join("first.ext4");
    let o = build(&source, &first, &cache_arg);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The cached copy of the largest layer goes bad on the disk.
    let digest = registry_layer_digest(&layout);
    let cached = cache.join("blobs/sha256").join(&digest[7..]);
    let mut data = fs::read(&cached).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0x55;
    fs::write(&cached, &data).unwrap();
    let bad = dir.path().join("bad.ext4");
    let err = assert_failed(&build(&source, &bad, &cache_arg), &bad);
    assert!(err.contains("digest") && err.contains(&digest), "{err}");
    assert!(!cached.exists(), "the bad blob is still in the cache");

    let again = dir.path().join("again.ext4");
    let o = build(&source, &again, &cache_arg);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        cached.exists(),
        "the blob was not downloaded into the cache again"
    );
    assert_eq!(fs::read(&first).unwrap(), fs::read(&again).unwrap());
}

#[test]
fn bearer_token_auth_through_a_token_server() {
    let dir = tmp();
    let layout = dir.path().join("layout");
    make_image(&layout, image_spec());
    let tokens = TokenServer::start("builder", "t0ken-pass");
    let registry = TestRegistry::start_with_tokens(&tokens);
    registry.push(&layout, "v1", "secure/app:v1", Some("builder:t0ken-pass"));
    let source = format!("{}/secure/app:v1", registry.addr);

    let before = tokens.requests.load(Ordering::SeqCst);
    let out = dir.path().join("ok.ext4");
    let o = build(
        &source,
        &out,
        &["--no-cache", "--creds", "builder:t0ken-pass"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    e2fsck(&out);
    assert_eq!(
        tokens.requests.load(Ordering::SeqCst) - before,
        1,
        "one token serves the whole pull"
    );

    let bad = dir.path().join("bad.ext4");
    let err = assert_failed(
        &build(&source, &bad, &["--no-cache", "--creds", "builder:nope"]),
        &bad,
    );
    assert!(
        err.contains("token server refused the credentials"),
        "{err}"
    );
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root: run as root")]
fn plain_http_only_for_loopback_and_insecure_registries() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let layout = dir.path().join("layout");
    make_image(&layout, image_spec());
    // A registry on a test host of our own (a network namespace), not on
    // loopback: builderd speaks HTTPS to it unless told otherwise.
    let host = TestHost::create();
    let registry = TestRegistry::start_in(&host);
    registry.push(&layout, "v1", "remote/app:v1", None);
    let source = format!("{}/remote/app:v1", registry.addr);

    let refused = dir.path().join("refused.ext4");
    let err = assert_failed(&build(&source, &refused, &["--no-cache"]), &refused);
    assert!(
        err.contains(&format!("https://{}", registry.addr)),
        "it must have tried HTTPS: {err}"
    );
    assert!(
        err.contains("--insecure-registry") && !err.contains("retrying"),
        "a TLS failure fails at once, with a hint: {err}"
    );

    let out = dir.path().join("insecure.ext4");
    let o = build(
        &source,
        &out,
        &["--no-cache", "--insecure-registry", &registry.addr],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    e2fsck(&out);
}
