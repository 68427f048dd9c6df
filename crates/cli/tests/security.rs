//! `builderd serve` against a hostile tenant: caches that serve only what a
//! tenant could fetch itself, an outbound policy that keeps builds out of
//! the server's own network, and bounded work. Real parts: docker-registry
//! with htpasswd, registries and listeners of the tests' own, the server as
//! a process.

mod common;

use std::time::Duration;

use common::fake::{
    add_blob, manifest_of, registry_of, tag_manifest, Counter, Fake, LocalAddress, Reply,
};
use common::images::make_image;
use common::registry::{Proxy, TestRegistry};
use common::server::{config, push_app, Server};
use common::*;
use serde_json::{json, Value};

const ENDED: [&str; 4] = [
    "BUILD_STATE_COMPLETED",
    "BUILD_STATE_FAILED",
    "BUILD_STATE_CANCELLED",
    "BUILD_STATE_TIMEOUT",
];

fn ended(server: &Server, key: &str, config: &Value) -> Value {
    let id = server.create(key, config);
    server.wait_for(key, &id, &ENDED, Duration::from_secs(120))
}

fn with_auth(image: &str, user: &str, pass: &str) -> Value {
    let mut c = config(image);
    c["config"]["source"]["docker_image"]["registry_auth"] =
        json!({"username": user, "password": pass});
    c
}

/// CreateBuild's answer for `config` (status and JSON body).
fn create_answer(server: &Server, key: &str, config: &Value) -> (u16, Value) {
    let a = server.call("CreateBuild", Some(key), &[], &config.to_string());
    (a.status, a.json())
}

#[test]
fn a_private_layer_never_reaches_another_tenant_through_the_caches() {
    let dir = tmp();
    let private = TestRegistry::start(Some(("owner", "s3cret")));
    let open = TestRegistry::start(None);
    // The app image; its top layer holds /etc/app.conf, "name=secret".
    push_app(&open, dir.path(), "secret", None);
    let layout = dir.path().join("layout-secret");
    private.push(&layout, "v1", "team-a/app:v1", Some("owner:s3cret"));
    let proxy = Proxy::start(&private.addr);
    let (a_manifest, a_manifest_path) = manifest_of(&layout, "v1");
    let a_layers = a_manifest["layers"].clone();

    // Tenant B's own registry: it has none of A's blobs, only manifests
    // naming them: one with B's own config, and A's manifest byte for byte.
    let b_layout = dir.path().join("b-layout");
    std::fs::create_dir_all(b_layout.join("blobs/sha256")).unwrap();
    std::fs::write(
        b_layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        b_layout.join("index.json"),
        r#"{"schemaVersion":2,"manifests":[]}"#,
    )
    .unwrap();
    let b_config = json!({"architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/sh", "-c", "cat /etc/app.conf"]},
        "rootfs": {"type": "layers", "diff_ids": []}})
    .to_string();
    let b_config_digest = add_blob(&b_layout, b_config.as_bytes());
    let forged = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": b_config_digest, "size": b_config.len()},
        "layers": a_layers});
    tag_manifest(&b_layout, "forged", forged.to_string().as_bytes());
    tag_manifest(
        &b_layout,
        "exact",
        &std::fs::read(&a_manifest_path).unwrap(),
    );
    let fake = Fake::on("127.0.0.1", registry_of(&b_layout, |_| None));

    let server = Server::start(&dir.path().join("data"), &[]);
    let owner = server.tenant("team-a", "pro");
    let image = format!("{}/team-a/app:v1", proxy.addr);
    let first = ended(&server, &owner, &with_auth(&image, "owner", "s3cret"));
    assert_eq!(first["state"], "BUILD_STATE_COMPLETED", "{first}");

    // B: refused by the registry, then through its own with a forged manifest
    // and with A's exact manifest. Every way fails; no artifact, no hit.
    let b = server.tenant("team-b", "pro");
    let refused = ended(&server, &b, &config(&image));
    assert_eq!(refused["state"], "BUILD_STATE_FAILED", "{refused}");
    for tag in ["forged", "exact"] {
        let s = ended(&server, &b, &config(&format!("{}/b/app:{tag}", fake.addr)));
        assert_eq!(s["state"], "BUILD_STATE_FAILED", "{tag}: {s}");
        assert_eq!(
            s["error"]["category"], "ERROR_CATEGORY_SOURCE",
            "{tag}: {s}"
        );
        assert_ne!(s["cacheHit"], true, "{tag}: {s}");
        assert!(s["artifact"].is_null(), "{tag}: {s}");
        let message = s["error"]["message"].as_str().unwrap();
        assert!(message.contains("not found"), "{tag}: {message}");
    }
    // B's registry was asked for the blobs it does not have: builderd
    // wanted them from B's own source, not from its cache.
    let asked = fake.count("/blobs/");
    assert!(asked >= 2, "B's registry saw {asked} blob requests");
    // Nothing of B's reached its artifact directory.
    let b_artifacts = dir.path().join("data/artifacts/team-b");
    let kept: Vec<_> = std::fs::read_dir(&b_artifacts)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(kept.is_empty(), "{kept:?}");

    // The legitimate hits: A again, and C with credentials of its own for
    // the same repository; neither downloads a blob.
    let blobs_before = proxy.count("/blobs/");
    let again = ended(&server, &owner, &with_auth(&image, "owner", "s3cret"));
    assert_eq!(again["cacheHit"], true, "{again}");
    let c = server.tenant("team-c", "pro");
    let friend = ended(&server, &c, &with_auth(&image, "owner", "s3cret"));
    assert_eq!(friend["cacheHit"], true, "{friend}");
    assert_eq!(friend["artifact"]["sha256"], first["artifact"]["sha256"]);
    assert_eq!(
        proxy.count("/blobs/"),
        blobs_before,
        "a hit downloads no blob"
    );
}

#[test]
fn registries_at_internal_addresses_are_refused_before_any_connection() {
    let dir = tmp();
    let server = Server::start_public_only(&dir.path().join("data"), &[]);
    let key = server.tenant("t", "pro");
    let loopback = Counter::on("127.0.0.1");
    let port = loopback.addr.rsplit_once(':').unwrap().1.to_string();
    let mut targets = vec![
        (loopback.addr.clone(), "loopback"),
        (format!("localhost:{port}"), "loopback"),
        (format!("[::1]:{port}"), "loopback"),
        ("169.254.169.254".to_string(), "link-local"),
        ("[::ffff:127.0.0.1]:80".to_string(), "loopback"),
        ("[fe80::1]:80".to_string(), "link-local"),
    ];
    // As root, real listeners on a private and a link-local address too.
    let mut extra = Vec::new();
    if is_root() {
        for (prefix, kind, n) in [("10.77.77", "private", 1), ("169.254.77", "link-local", 2)] {
            let a = LocalAddress::add(prefix, n);
            let c = Counter::on(&a.ip);
            targets.push((c.addr.clone(), kind));
            extra.push((a, c));
        }
    }
    for (registry, kind) in &targets {
        let (status, body) = create_answer(&server, &key, &config(&format!("{registry}/x/app:1")));
        assert_eq!(status, 400, "{registry}: {body}");
        assert_eq!(body["code"], "invalid_argument", "{registry}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(kind) && message.contains("--allow-private-registries"),
            "{registry}: {message}"
        );
    }
    assert_eq!(loopback.count(), 0);
    for (_, c) in &extra {
        assert_eq!(c.count(), 0, "{}", c.addr);
    }
    // A closed port and an open one get the same answer: nothing says
    // which ports listen.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let answer = |addr: &str| {
        let (_, body) = create_answer(&server, &key, &config(&format!("{addr}/x/app:1")));
        body["message"]
            .as_str()
            .unwrap()
            .replace(addr.rsplit_once(':').unwrap().1, "PORT")
    };
    assert_eq!(answer(&closed.to_string()), answer(&loopback.addr));

    // References outside the grammar never reach a registry.
    for bad in [
        "reg.example.com/../x:1",
        "reg.example.com/a//b:1",
        "reg.example.com/a/%2e%2e:1",
    ] {
        let (status, body) = create_answer(&server, &key, &config(bad));
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["code"], "invalid_argument", "{bad}: {body}");
    }
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root: run as root")]
fn redirects_and_token_realms_cannot_lead_inward_nor_credentials_go_over_plain_http() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    // A public-looking address of this machine's stands in for a registry
    // on the internet; the counter is what must stay unreached.
    let public = LocalAddress::add("192.0.1", 3);
    let inside = Counter::on("127.0.0.1");
    let inside_port = inside.addr.rsplit_once(':').unwrap().1.to_string();
    let layout = dir.path().join("layout");
    make_image(
        &layout,
        json!({"tag": "v1", "layers": [{"entries": [{"name": "etc/ok", "data": "ok\n"}]}],
               "config": {"Cmd": ["/bin/true"]}}),
    );
    let (inside_addr, port) = (inside.addr.clone(), inside_port.clone());
    let fake = Fake::on(
        &public.ip,
        registry_of(&layout, move |req| {
            let to = |url: String| {
                Some(Reply::new("307 Temporary Redirect", "").header("Location", &url))
            };
            if req.path.starts_with("/v2/redirect/") {
                return to(format!("http://{inside_addr}{}", req.path));
            }
            if req.path.starts_with("/v2/redirect-name/") {
                return to(format!("http://localhost:{port}{}", req.path));
            }
            if req.path.starts_with("/v2/realm/") {
                return Some(Reply::new("401 Unauthorized", "").header(
                    "WWW-Authenticate",
                    &format!(r#"Bearer realm="http://{inside_addr}/token",service="x""#),
                ));
            }
            if req.path.starts_with("/v2/basic/") && !req.headers.contains_key("authorization") {
                return Some(
                    Reply::new("401 Unauthorized", "")
                        .header("WWW-Authenticate", r#"Basic realm="x""#),
                );
            }
            None
        }),
    );
    let server = Server::start_public_only(
        &dir.path().join("data"),
        &["--insecure-registry", &fake.addr],
    );
    let key = server.tenant("t", "pro");

    // The public registry itself is allowed: a build from it completes.
    let ok = ended(
        &server,
        &key,
        &config(&format!("{}/plain/app:v1", fake.addr)),
    );
    assert_eq!(ok["state"], "BUILD_STATE_COMPLETED", "{ok}");

    for (repo, expect) in [
        ("redirect", "loopback"),
        ("redirect-name", "loopback"),
        ("realm", "the token realm"),
    ] {
        let s = ended(
            &server,
            &key,
            &with_auth(&format!("{}/{repo}/app:v1", fake.addr), "user", "pw"),
        );
        assert_eq!(s["state"], "BUILD_STATE_FAILED", "{repo}: {s}");
        assert_eq!(
            s["error"]["category"], "ERROR_CATEGORY_SOURCE",
            "{repo}: {s}"
        );
        let message = s["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(expect) && message.contains("--allow-private-registries"),
            "{repo}: {message}"
        );
        assert!(
            s["retries"].as_array().is_none_or(Vec::is_empty),
            "{repo}: not retried: {s}"
        );
    }
    assert_eq!(inside.count(), 0, "no connection reached the inside");

    // A registry on plain HTTP that asks for a password does not get it.
    let s = ended(
        &server,
        &key,
        &with_auth(&format!("{}/basic/app:v1", fake.addr), "user", "pw"),
    );
    assert_eq!(s["state"], "BUILD_STATE_FAILED", "{s}");
    let message = s["error"]["message"].as_str().unwrap();
    assert!(message.contains("plain HTTP"), "{message}");
    assert!(
        fake.seen()
            .iter()
            .all(|r| !r.headers.contains_key("authorization")),
        "credentials were sent over plain HTTP"
    );
}

/// A registry that is there and always busy: 503 to everything.
fn busy_registry() -> Fake {
    Fake::on("127.0.0.1", |_| Reply::new("503 Service Unavailable", ""))
}

/// A config whose registry requests wait an hour between tries.
fn patient(image: &str) -> Value {
    let mut c = config(image);
    c["config"]["retry_policy"] = json!({"max_retries": 10, "backoff_strategy": "fixed",
        "base_delay": "1h", "max_delay": "1h", "retry_on": ["NETWORK_ERROR"]});
    c
}

fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The server's thread count once it has settled (tokio lets idle blocking
/// threads go after 10 s): the lowest seen within `within`.
fn settled_threads(pid: u32, within: Duration) -> usize {
    let deadline = std::time::Instant::now() + within;
    let mut low = threads(pid);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        low = low.min(threads(pid));
    }
    low
}

#[test]
fn sigterm_with_a_build_stuck_resolving_exits_within_the_grace() {
    let dir = tmp();
    // Takes connections (the kernel's backlog) and never answers.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut server = Server::start(&dir.path().join("data"), &["--shutdown-grace", "2"]);
    let key = server.tenant("t", "pro");
    let id = server.create(
        &key,
        &config(&format!("{}/x/app:1", hole.local_addr().unwrap())),
    );
    server.wait_for(
        &key,
        &id,
        &["BUILD_STATE_PREPARING"],
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(500));
    let t = std::time::Instant::now();
    let status = server.terminate();
    let took = t.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(2 + 5), "exited after {took:?}");
}

#[test]
fn cancelled_builds_leave_no_threads_behind_and_retry_policies_are_bounded() {
    let dir = tmp();
    let busy = busy_registry();
    let server = Server::start(&dir.path().join("data"), &[]);
    let key = server.tenant("t", "dedicated");
    let image = format!("{}/x/app:1", busy.addr);
    let cycle = || {
        let asked = busy.seen().len();
        let id = server.create(&key, &patient(&image));
        // The build process is waiting out its hour before the next try.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while busy.seen().len() == asked {
            assert!(
                std::time::Instant::now() < deadline,
                "the build never asked"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let c = server.ok("CancelBuild", &key, &format!(r#"{{"build_id":"{id}"}}"#));
        assert_eq!(c["state"], "BUILD_STATE_CANCELLED", "{c}");
        server.ok("DeleteBuild", &key, &format!(r#"{{"build_id":"{id}"}}"#));
    };
    for _ in 0..3 {
        cycle();
    }
    let before = settled_threads(server.pid(), Duration::from_secs(12));
    for _ in 0..100 {
        cycle();
    }
    let after = settled_threads(server.pid(), Duration::from_secs(12));
    assert!(
        after <= before,
        "threads: {before} before, {after} after 100 cycles"
    );

    for (policy, field) in [
        (
            json!({"max_retries": 11}),
            "max_retries is 11, more than the 10 allowed",
        ),
        (
            json!({"base_delay": "0s"}),
            "base_delay is 0ms, outside the allowed 100ms to 1h",
        ),
        (
            json!({"max_delay": "2h"}),
            "max_delay is 7200s, outside the allowed 100ms to 1h",
        ),
    ] {
        let mut c = config(&image);
        c["config"]["retry_policy"] = policy;
        let (status, body) = create_answer(&server, &key, &c);
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_argument")),
            "{body}"
        );
        assert!(body["message"].as_str().unwrap().contains(field), "{body}");
    }
}

#[test]
fn deleting_builds_gives_no_daily_quota_back() {
    let dir = tmp();
    let busy = busy_registry();
    let server = Server::start(&dir.path().join("data"), &[]);
    let key = server.tenant("f", "free");
    for _ in 0..5 {
        let id = server.create(&key, &patient(&format!("{}/x/app:1", busy.addr)));
        let body = format!(r#"{{"build_id":"{id}","force":true}}"#);
        server.ok("DeleteBuild", &key, &body);
    }
    let (status, body) = create_answer(&server, &key, &config(&format!("{}/x/app:1", busy.addr)));
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("resource_exhausted")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("5 of 5 builds today"),
        "{body}"
    );
    let q = server.ok("GetTenantQuotas", &key, "{}");
    assert_eq!(q["usage"]["buildsToday"], 5, "{q}");
}

/// A registry of the test's own serving `manifest` (JSON) under tag v1 and
/// nothing else.
fn manifest_only(manifest: Value) -> Fake {
    let body = manifest.to_string();
    Fake::on("127.0.0.1", move |req| {
        if req.path.contains("/manifests/") {
            Reply::new("200 OK", body.clone())
                .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        } else {
            Reply::new("404 Not Found", "")
        }
    })
}

#[test]
fn an_oversized_config_is_refused_before_it_is_fetched_and_long_messages_are_cut() {
    let dir = tmp();
    let huge = format!("sha256:{}", "ab".repeat(32));
    let fake = manifest_only(json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": huge, "size": 150_000_000u64},
        "layers": []}));
    let server = Server::start(&dir.path().join("data"), &[]);
    let key = server.tenant("t", "pro");
    let s = ended(&server, &key, &config(&format!("{}/x/app:v1", fake.addr)));
    assert_eq!(s["state"], "BUILD_STATE_FAILED", "{s}");
    let message = s["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("150000000 bytes, more than the 16777216"),
        "{message}"
    );
    assert_eq!(fake.count("/blobs/"), 0, "the config was not asked for");

    // A manifest whose media type is a megabyte long: the error names it,
    // cut short.
    let long = "x".repeat(1 << 20);
    let fake = manifest_only(json!({"schemaVersion": 2, "mediaType": long,
        "config": {"mediaType": "a", "digest": huge, "size": 1}, "layers": []}));
    let s = ended(&server, &key, &config(&format!("{}/x/app:v1", fake.addr)));
    assert_eq!(s["state"], "BUILD_STATE_FAILED", "{s}");
    let message = s["error"]["message"].as_str().unwrap();
    assert!(message.len() < 5000, "{} bytes", message.len());
    assert!(message.contains("more bytes not shown"), "{message}");
}

/// Runs `builderd mkfs SOURCE -o OUT` from a Python process of its own,
/// whose only child it is: (success, stderr, the mkfs's peak RSS in KiB).
fn mkfs_peak(source: &std::path::Path, out: &std::path::Path) -> (bool, String, u64) {
    let script = "import resource, subprocess, sys\n\
        r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n\
        print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
        sys.stderr.write(r.stderr)\n";
    let o = std::process::Command::new("python3")
        .args(["-c", script, env!("CARGO_BIN_EXE_builderd"), "mkfs"])
        .arg(source)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut f = text.split_whitespace();
    let code: i32 = f.next().unwrap().parse().unwrap();
    let rss: u64 = f.next().unwrap().parse().unwrap();
    (
        code == 0,
        String::from_utf8_lossy(&o.stderr).into_owned(),
        rss,
    )
}

/// A .tar.gz of `count` PAX global headers (one key each time, or a new
/// key each time), then one file.
fn pax_bomb(path: &std::path::Path, count: usize, distinct: bool) {
    let script = format!(
        "import gzip, tarfile\n\
         out = gzip.open({path:?}, 'wb', compresslevel=6)\n\
         for i in range({count}):\n\
         \x20   key = 'k%d' % i if {distinct} else 'comment'\n\
         \x20   out.write(tarfile.TarInfo._create_pax_generic_header({{key: 'v' * 400}}, tarfile.XGLTYPE, 'utf-8'))\n\
         t = tarfile.TarInfo('file'); t.size = 2\n\
         out.write(t.tobuf(tarfile.USTAR_FORMAT)); out.write(b'x\\n' + b'\\0' * 510)\n\
         out.write(b'\\0' * 1024); out.close()\n",
        path = path.display().to_string(),
        distinct = if distinct { "True" } else { "False" },
    );
    run(std::process::Command::new("python3").args(["-c", &script]));
}

#[test]
fn extension_headers_cannot_pile_up_in_memory() {
    let dir = tmp();
    let same = dir.path().join("same.tar.gz");
    pax_bomb(&same, 200_000, false);
    let (ok, err, rss) = mkfs_peak(&same, &dir.path().join("same.ext4"));
    assert!(ok, "{err}");
    assert!(
        rss < 64 << 10,
        "peak RSS {rss} KiB for 200000 repeated global headers"
    );
    e2fsck(&dir.path().join("same.ext4"));

    let distinct = dir.path().join("distinct.tar.gz");
    pax_bomb(&distinct, 5_000, true);
    let (ok, err, rss) = mkfs_peak(&distinct, &dir.path().join("distinct.ext4"));
    assert!(
        !ok && err.contains("global PAX records hold more than 16384 bytes"),
        "{err}"
    );
    assert!(rss < 64 << 10, "peak RSS {rss} KiB");
    assert!(!dir.path().join("distinct.ext4").exists());
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root: run as root")]
fn a_build_over_its_memory_limit_is_stopped_as_a_resource_failure() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let reg = TestRegistry::start(None);
    push_app(&reg, dir.path(), "app", Some(8 << 20));
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--max-build-memory", "16M"]);
    let key = server.tenant("t", "pro");
    let s = ended(&server, &key, &config(&format!("{}/app:v1", reg.addr)));
    assert_eq!(s["state"], "BUILD_STATE_FAILED", "{s}");
    assert_eq!(s["error"]["category"], "ERROR_CATEGORY_RESOURCE", "{s}");
    let message = s["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("more memory than its limit of 16777216 bytes"),
        "{message}"
    );
    // The same build without the bound completes (it was the bound).
    let server = {
        drop(server);
        Server::start(&data, &[])
    };
    let s = ended(&server, &key, &config(&format!("{}/app:v1", reg.addr)));
    assert_eq!(s["state"], "BUILD_STATE_COMPLETED", "{s}");
}

/// An image with one file of `size` bytes of a repeating pattern: a small
/// gzip layer that expands to `size`.
fn expanding_image(dir: &std::path::Path, size: usize) -> std::path::PathBuf {
    let src = dir.join("pattern");
    let unit = b"builderd expands this layer; ";
    let mut data = Vec::with_capacity(size);
    while data.len() < size {
        data.extend_from_slice(unit);
    }
    data.truncate(size);
    std::fs::write(&src, &data).unwrap();
    let layout = dir.join("layout-big");
    make_image(
        &layout,
        json!({"tag": "v1", "layers": [{"entries": [
            {"name": "big", "src": src.to_str().unwrap()}]}], "config": {"Cmd": ["/big"]}}),
    );
    layout
}

#[test]
fn the_size_limit_and_the_storage_left_stop_the_writing_as_content_comes() {
    let dir = tmp();
    let layout = expanding_image(dir.path(), 160 << 20);
    let reg = TestRegistry::start(None);
    reg.push(&layout, "v1", "big:v1", None);
    let server = Server::start(&dir.path().join("data"), &[]);
    let key = server.tenant("t", "pro");
    let mut c = config(&format!("{}/big:v1", reg.addr));
    c["config"]["target"]["microvm_rootfs"]["size_limit_bytes"] = json!(16 << 20);
    let s = ended(&server, &key, &c);
    assert_eq!(s["state"], "BUILD_STATE_FAILED", "{s}");
    assert_eq!(s["error"]["category"], "ERROR_CATEGORY_RESOURCE", "{s}");
    let message = s["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("grew past the limit")
            && message.contains("raise config.target.microvm_rootfs.size_limit_bytes"),
        "{message}"
    );
    // It stopped near the limit: not 160 MiB written.
    let written = common::server::num(&s["resourceUsage"]["diskWrittenBytes"]);
    assert!(written < 48 << 20, "{written} bytes written");

    // What is left of a tenant's storage bounds the image the same way.
    let out = dir.path().join("out.ext4");
    let o = builderd()
        .args(["build", &format!("oci:{}:v1", layout.display()), "-o"])
        .arg(&out)
        .args(["--storage-left", &(16u64 << 20).to_string()])
        .output()
        .unwrap();
    let err = images::assert_failed(&o, &out);
    assert!(err.contains("left of the tenant's storage quota"), "{err}");
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn silent_and_slow_clients_are_cut_off_and_connections_are_bounded() {
    use std::io::{Read, Write};
    let dir = tmp();
    let server = Server::start(
        &dir.path().join("data"),
        &["--header-timeout", "2s", "--max-connections", "20"],
    );
    let pid = server.pid();
    let base = open_files(pid);
    let addr = server.url.trim_start_matches("http://").to_string();
    // Half a request each, or nothing at all.
    let mut held: Vec<std::net::TcpStream> = (0..60)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            if i % 2 == 0 {
                s.write_all(b"POST /builder.v1.BuilderService/ListBuilds HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
            }
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = open_files(pid);
    assert!(
        during <= base + 20 + 2,
        "{during} descriptors open, {base} before"
    );
    // Within the header timeout (and the time the last ones waited for a
    // slot), every one of them is closed by the server.
    let t = std::time::Instant::now();
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "the server answered a half request");
    }
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());
    // And the server still answers.
    assert_eq!(server.curl("/healthz", &[]).status, 200);
}

/// The database's rows as a Python sqlite3 query prints them.
fn query(db: &std::path::Path, sql: &str) -> String {
    let script = "import sqlite3, sys\n\
        c = sqlite3.connect(sys.argv[1])\n\
        print(c.execute(sys.argv[2]).fetchall())\n";
    let o = run(std::process::Command::new("python3")
        .args(["-c", script])
        .arg(db)
        .arg(sql));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn registry_passwords_leave_the_database_and_it_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp();
    let reg = TestRegistry::start(Some(("puller", "pa55word")));
    let open = TestRegistry::start(None);
    push_app(&open, dir.path(), "app", None);
    reg.push(
        &dir.path().join("layout-app"),
        "v1",
        "app:v1",
        Some("puller:pa55word"),
    );
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let key = server.tenant("t", "pro");
    let ok = ended(
        &server,
        &key,
        &with_auth(&format!("{}/app:v1", reg.addr), "puller", "pa55word"),
    );
    assert_eq!(ok["state"], "BUILD_STATE_COMPLETED", "{ok}");
    let bad = ended(
        &server,
        &key,
        &with_auth(&format!("{}/app:v1", reg.addr), "puller", "guess"),
    );
    assert_eq!(bad["state"], "BUILD_STATE_FAILED", "{bad}");
    let db = data.join("builderd.db");
    assert_eq!(query(&db, "SELECT COUNT(*) FROM builds").trim(), "[(2,)]");
    assert_eq!(
        query(&db, "SELECT creds FROM builds").trim(),
        "[(None,), (None,)]"
    );
    for name in ["builderd.db", "builderd.db-wal", "builderd.db-shm"] {
        let mode = std::fs::metadata(data.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}: {mode:o}");
    }
}

/// `builderd ARGS --data-dir DATA`: stdout; asserts success.
fn admin(data: &std::path::Path, args: &[&str]) -> String {
    let o = run(builderd().args(args).arg("--data-dir").arg(data));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn keys_are_revoked_and_rotated_at_once() {
    let dir = tmp();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let works = |key: &str, tenant: Option<&str>| {
        let h = tenant.map(|t| format!("X-Tenant-ID: {t}"));
        let headers: Vec<&str> = h.iter().map(String::as_str).collect();
        server
            .call("GetTenantQuotas", Some(key), &headers, "{}")
            .status
            == 200
    };
    let k1 = server.tenant("acme", "pro");
    let k2 = admin(&data, &["tenant", "add-key", "acme"])
        .trim()
        .to_string();
    assert!(works(&k1, None) && works(&k2, None));
    let listed = admin(&data, &["tenant", "keys", "acme"]);
    let ids: Vec<&str> = listed
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids.len(), 2, "{listed}");
    // Which id is k1's: its hash's first digits.
    let k1_id = &common::server::sha256_hex(k1.as_bytes())[..12];
    assert!(ids.contains(&k1_id), "{listed}");
    admin(&data, &["tenant", "revoke-key", "acme", k1_id]);
    assert!(!works(&k1, None), "a revoked key still works");
    assert!(works(&k2, None));
    let k3 = admin(&data, &["tenant", "rotate-key", "acme"])
        .trim()
        .to_string();
    assert!(!works(&k2, None) && works(&k3, None));

    let operator = std::fs::read_to_string(data.join("operator.key"))
        .unwrap()
        .trim()
        .to_string();
    assert!(works(&operator, Some("acme")));
    admin(&data, &["operator", "rotate-key"]);
    let new_operator = std::fs::read_to_string(data.join("operator.key"))
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(operator, new_operator);
    assert!(
        !works(&operator, Some("acme")),
        "the old operator key still works"
    );
    assert!(works(&new_operator, Some("acme")));
    // A restart keeps it so.
    server.terminate();
    server.restart();
    let works = |key: &str| {
        server
            .call("GetTenantQuotas", Some(key), &["X-Tenant-ID: acme"], "{}")
            .status
            == 200
    };
    assert!(!works(&operator) && works(&new_operator));
}

#[test]
fn one_tenants_slow_webhook_does_not_delay_anothers() {
    let dir = tmp();
    let slow = Fake::on("127.0.0.1", |_| {
        std::thread::sleep(Duration::from_secs(8));
        Reply::new("200 OK", "")
    });
    let fast = Fake::on("127.0.0.1", |_| Reply::new("200 OK", ""));
    let server = Server::start(&dir.path().join("data"), &["--allow-private-webhooks"]);
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    drop(std::net::TcpListener::bind(gone));
    // Builds that fail at once (nothing listens): three events each.
    let failing = |hook: &str| {
        let mut c = config(&format!("{gone}/x/app:1"));
        c["config"]["retry_policy"] = json!({"max_retries": 0});
        c["config"]["webhook"] = json!({"url": format!("http://{hook}/hook")});
        c
    };
    let noisy = server.tenant("noisy", "enterprise");
    let ids: Vec<String> = (0..12)
        .map(|_| server.create(&noisy, &failing(&slow.addr)))
        .collect();
    for id in &ids {
        server.wait_for(&noisy, id, &ENDED, Duration::from_secs(60));
    }
    // The slow endpoint now has a backlog of some 36 deliveries.
    let quiet = server.tenant("quiet", "pro");
    let id = server.create(&quiet, &failing(&fast.addr));
    server.wait_for(&quiet, &id, &ENDED, Duration::from_secs(60));
    let t = std::time::Instant::now();
    while fast.seen().len() < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "the quiet tenant's deliveries waited behind the noisy one's: {} of 3 after {:?}",
            fast.seen().len(),
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        slow.seen().len() <= 2 * 2,
        "the noisy tenant had more than its slots at once"
    );
}

#[test]
fn followed_log_streams_are_bounded_per_tenant() {
    let dir = tmp();
    let busy = busy_registry();
    let server = Server::start(&dir.path().join("data"), &[]);
    let key = server.tenant("t", "pro");
    let id = server.create(&key, &patient(&format!("{}/x/app:1", busy.addr)));
    let follow = || {
        builderd()
            .args([
                "client",
                "--server",
                &server.url,
                "--key",
                &key,
                "logs",
                &id,
                "--follow",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut held: Vec<std::process::Child> = (0..16).map(|_| follow()).collect();
    std::thread::sleep(Duration::from_secs(2));
    for c in &mut held {
        assert!(c.try_wait().unwrap().is_none(), "a follower ended early");
    }
    let extra = follow().wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&extra.stderr);
    assert!(
        !extra.status.success() && err.contains("follows 16 log streams already"),
        "{err}"
    );
    // One closed: room for another.
    let mut first = held.remove(0);
    first.kill().unwrap();
    first.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut again = follow();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        again.try_wait().unwrap().is_none(),
        "no room after one closed"
    );
    // The followers end when the build does, without polling for it.
    server.ok("CancelBuild", &key, &format!(r#"{{"build_id":"{id}"}}"#));
    held.push(again);
    for mut c in held {
        let t = std::time::Instant::now();
        while c.try_wait().unwrap().is_none() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "a follower did not end"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
