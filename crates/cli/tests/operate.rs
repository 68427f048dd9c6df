//! Operating `builderd serve`: retry policies, the artifact cache, signed
//! webhooks, metrics and traces, retention. A real server process, a real
//! registry on loopback with a proxy in front that records and disturbs.

mod common;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::registry::{Proxy, TestRegistry};
use common::server::{config, download_and_check, logs, num, push_app, python_client, Server};
use common::*;
use serde_json::{json, Value};

fn with_retry(mut c: Value, policy: Value) -> Value {
    c["config"]["retry_policy"] = policy;
    c
}

/// The causes and scopes of a status's retries.
fn retries(status: &Value) -> Vec<(&str, &str)> {
    status["retries"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| (r["cause"].as_str().unwrap(), r["scope"].as_str().unwrap()))
        .collect()
}

#[test]
fn registry_errors_are_retried_as_the_build_policy_says() {
    let dir = tmp();
    let reg = TestRegistry::start(None);
    push_app(&reg, dir.path(), "app", None);
    // Another image, whose blobs the server has not cached yet.
    push_app(&reg, dir.path(), "other", Some(100_000));
    let proxy = Proxy::start(&reg.addr);
    let server = Server::start(&dir.path().join("data"), &[]);
    let key = server.tenant("retrier", "pro");
    let image = format!("{}/app:v1", proxy.addr);
    let policy = json!({"max_retries": 3, "backoff_strategy": "fixed", "base_delay": "100ms",
                        "max_delay": "2s", "retry_on": ["NETWORK_ERROR", "REGISTRY_RATE_LIMIT"]});

    // 503 twice on the manifest, then 429 twice on a blob (Retry-After: 1).
    *proxy.faults.fail_on.lock().unwrap() = "/manifests/".into();
    proxy.faults.fail.store(2, Ordering::SeqCst);
    let id = server.create(&key, &with_retry(config(&image), policy.clone()));
    let s = server.wait_for(
        &key,
        &id,
        &["BUILD_STATE_COMPLETED", "BUILD_STATE_FAILED"],
        Duration::from_secs(60),
    );
    assert_eq!(s["state"], "BUILD_STATE_COMPLETED", "{s}");
    assert_eq!(retries(&s), [("NETWORK_ERROR", "request"); 2], "{s}");
    assert_eq!(s["retries"][1]["attempt"], 2);
    // Retry-After: 1 is honoured over the 100 ms of the policy.
    assert_eq!(num(&s["retries"][0]["delayMs"]), 1000);
    let log = logs(&server, &key, &id);
    assert_eq!(
        log.matches("503 Service Unavailable; retrying in 1.0 s")
            .count(),
        2,
        "{log}"
    );
    assert!(log.contains("(attempt 2/4, NETWORK_ERROR)"), "{log}");

    *proxy.faults.fail_on.lock().unwrap() = "/blobs/".into();
    *proxy.faults.fail_status.lock().unwrap() = "429 Too Many Requests".into();
    proxy.faults.fail.store(2, Ordering::SeqCst);
    let blobs_before = proxy.count("/blobs/");
    let other = format!("{}/other:v1", proxy.addr);
    let id = server.create(&key, &with_retry(config(&other), policy.clone()));
    let s = server.wait_for(
        &key,
        &id,
        &["BUILD_STATE_COMPLETED", "BUILD_STATE_FAILED"],
        Duration::from_secs(60),
    );
    assert_eq!(s["state"], "BUILD_STATE_COMPLETED", "{s}");
    let causes: Vec<&str> = retries(&s).into_iter().map(|r| r.0).collect();
    assert_eq!(causes, ["REGISTRY_RATE_LIMIT"; 2], "{s}");
    assert!(proxy.count("/blobs/") - blobs_before >= 2);

    // A cause the policy leaves out fails at once: one request, no retry.
    *proxy.faults.fail_on.lock().unwrap() = "/manifests/".into();
    *proxy.faults.fail_status.lock().unwrap() = "503 Service Unavailable".into();
    proxy.faults.fail.store(5, Ordering::SeqCst);
    let before = proxy.count("/manifests/");
    let only_rate = json!({"retry_on": ["REGISTRY_RATE_LIMIT"]});
    let id = server.create(&key, &with_retry(config(&image), only_rate));
    let s = server.wait_for(&key, &id, &["BUILD_STATE_FAILED"], Duration::from_secs(60));
    assert_eq!(proxy.count("/manifests/") - before, 1, "{s}");
    assert!(retries(&s).is_empty(), "{s}");
    let message = s["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("not retried: NETWORK_ERROR is not in the retry policy"),
        "{message}"
    );
    assert_eq!(s["error"]["category"], "ERROR_CATEGORY_SOURCE");
    proxy.faults.fail.store(0, Ordering::SeqCst);

    // A missing tag is no passing failure: at once, whatever the policy.
    let before = proxy.count("/manifests/nope");
    let missing = format!("{}/app:nope", proxy.addr);
    let id = server.create(&key, &with_retry(config(&missing), policy));
    let s = server.wait_for(&key, &id, &["BUILD_STATE_FAILED"], Duration::from_secs(60));
    assert_eq!(proxy.count("/manifests/nope") - before, 1);
    assert!(retries(&s).is_empty(), "{s}");
    assert!(
        s["error"]["message"]
            .as_str()
            .unwrap()
            .contains("app: tag nope not found (404"),
        "{s}"
    );

    // A policy that means nothing is refused when the build is created.
    let bad = server.call(
        "CreateBuild",
        Some(&key),
        &[],
        &with_retry(config(&image), json!({"backoff_strategy": "random"})).to_string(),
    );
    assert_eq!(bad.json()["code"], "invalid_argument", "{}", bad.json());
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root: run as root")]
fn a_full_disk_is_retried_by_running_the_build_again() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let reg = TestRegistry::start(None);
    // Busybox, a layer of 1 MB compressed: more than the 512 KiB the blob
    // cache gets.
    push_app(&reg, dir.path(), "app", None);
    let data = dir.path().join("data");
    let blobs = data.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(&blobs));
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(blobs.clone());
    let server = Server::start(&data, &[]);
    let key = server.tenant("full", "pro");
    let policy = json!({"max_retries": 2, "backoff_strategy": "fixed", "base_delay": "4s",
                        "retry_on": ["TEMPORARY_RESOURCE_ERROR"]});
    let id = server.create(
        &key,
        &with_retry(config(&format!("{}/app:v1", reg.addr)), policy),
    );
    // The first run fails for want of space and waits in the queue...
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let waiting = loop {
        let s = server.status(&key, &id);
        if !retries(&s).is_empty() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "no retry: {s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(retries(&waiting), [("TEMPORARY_RESOURCE_ERROR", "build")]);
    assert!(
        waiting["retries"][0]["message"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{waiting}"
    );
    assert_eq!(waiting["state"], "BUILD_STATE_QUEUED", "{waiting}");
    // ...while the operator makes room; the second run completes.
    run(Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&blobs));
    let done = server.wait_for(
        &key,
        &id,
        &["BUILD_STATE_COMPLETED", "BUILD_STATE_FAILED"],
        Duration::from_secs(60),
    );
    assert_eq!(done["state"], "BUILD_STATE_COMPLETED", "{done}");
    assert_eq!(done["attempts"], 2);
    let b = server.ok("GetBuild", &key, &json!({"build_id": id}).to_string())["build"].clone();
    let states: Vec<&str> = b["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states
            .iter()
            .filter(|s| **s == "BUILD_STATE_RUNNING")
            .count(),
        2,
        "{states:?}"
    );
    assert!(!states.contains(&"BUILD_STATE_FAILED"), "{states:?}");
    assert!(logs(&server, &key, &id).contains("TEMPORARY_RESOURCE_ERROR"));
}

/// A build run to COMPLETED; its status.
fn completed(server: &Server, key: &str, config: &Value) -> Value {
    let id = server.create(key, config);
    let s = server.wait_for(
        key,
        &id,
        &["BUILD_STATE_COMPLETED", "BUILD_STATE_FAILED"],
        Duration::from_secs(120),
    );
    assert_eq!(s["state"], "BUILD_STATE_COMPLETED", "{s}");
    s
}

fn metadata(status: &Value) -> Value {
    serde_json::from_str(status["artifact"]["metadataJson"].as_str().unwrap()).unwrap()
}

#[test]
fn an_identical_build_is_a_cache_hit_that_fetches_no_blob() {
    let dir = tmp();
    let reg = TestRegistry::start(None);
    push_app(&reg, dir.path(), "app", None);
    let proxy = Proxy::start(&reg.addr);
    let server = Server::start(&dir.path().join("data"), &[]);
    let a = server.tenant("team-a", "pro");
    let b = server.tenant("team-b", "pro");
    let image = config(&format!("{}/app:v1", proxy.addr));

    let first = completed(&server, &a, &image);
    assert_ne!(first["cacheHit"], true);
    let (blobs, manifests) = (proxy.count("/blobs/"), proxy.count("/manifests/"));
    let second = completed(&server, &a, &image);
    assert_eq!(second["cacheHit"], true, "{second}");
    assert_eq!(proxy.count("/blobs/"), blobs, "a cache hit fetched a blob");
    assert!(
        proxy.count("/manifests/") > manifests,
        "the tag is resolved against the registry every time"
    );
    assert_eq!(second["artifact"]["sha256"], first["artifact"]["sha256"]);
    let id = second["buildId"].as_str().unwrap();
    download_and_check(&server, &a, id, dir.path());
    assert_eq!(metadata(&second)["cache_hit"], true);
    assert!(logs(&server, &a, id).contains("completed from the artifact cache"));

    // Another tenant, the same image: the blobs and the artifact are shared.
    let other = completed(&server, &b, &image);
    assert_eq!(other["cacheHit"], true, "{other}");
    assert_eq!(proxy.count("/blobs/"), blobs);

    // An option that changes the image is another artifact.
    let mut changed = image.clone();
    changed["config"]["target"]["microvm_rootfs"]["runtime_config"] = json!({"env": {"MODE": "x"}});
    let third = completed(&server, &a, &changed);
    assert_ne!(third["cacheHit"], true, "{third}");
    assert_ne!(third["artifact"]["sha256"], first["artifact"]["sha256"]);

    // Deleting the build that made it leaves the others' copies whole.
    let first_id = first["buildId"].as_str().unwrap();
    server.ok(
        "DeleteBuild",
        &a,
        &json!({"build_id": first_id}).to_string(),
    );
    download_and_check(&server, &b, other["buildId"].as_str().unwrap(), dir.path());
    let again = completed(&server, &a, &image);
    assert_eq!(again["cacheHit"], true, "the cache outlives the build");
}

#[test]
fn a_cached_artifact_goes_only_to_tenants_whose_credentials_resolve_the_image() {
    let dir = tmp();
    let reg = TestRegistry::start(Some(("puller", "s3cret")));
    let open = TestRegistry::start(None);
    push_app(&open, dir.path(), "app", None);
    // The same image in the private registry.
    let layout = dir.path().join("layout-app");
    reg.push(&layout, "v1", "private/app:v1", Some("puller:s3cret"));
    let server = Server::start(&dir.path().join("data"), &[]);
    let image = format!("{}/private/app:v1", reg.addr);
    let with_auth = |user: &str, pass: &str| {
        let mut c = config(&image);
        c["config"]["source"]["docker_image"]["registry_auth"] =
            json!({"username": user, "password": pass});
        c
    };
    let owner = server.tenant("owner", "pro");
    let first = completed(&server, &owner, &with_auth("puller", "s3cret"));
    assert_ne!(first["cacheHit"], true);

    // No credentials, wrong ones: the registry says no, and so does the cache.
    let nobody = server.tenant("nobody", "pro");
    for c in [config(&image), with_auth("puller", "guess")] {
        let id = server.create(&nobody, &c);
        let s = server.wait_for(
            &nobody,
            &id,
            &["BUILD_STATE_FAILED", "BUILD_STATE_COMPLETED"],
            Duration::from_secs(60),
        );
        assert_eq!(s["state"], "BUILD_STATE_FAILED", "{s}");
        assert_ne!(s["cacheHit"], true);
        assert!(s["artifact"].is_null(), "{s}");
        assert_eq!(s["error"]["category"], "ERROR_CATEGORY_SOURCE", "{s}");
    }
    // The right ones: a hit.
    let friend = server.tenant("friend", "pro");
    let hit = completed(&server, &friend, &with_auth("puller", "s3cret"));
    assert_eq!(hit["cacheHit"], true, "{hit}");
    assert_eq!(hit["artifact"]["sha256"], first["artifact"]["sha256"]);
    // The same content offered by another repository is no hit: only a
    // download from there shows that it has those blobs. It makes the same
    // image, and then is a hit for that repository.
    let elsewhere = completed(&server, &nobody, &config(&format!("{}/app:v1", open.addr)));
    assert_ne!(elsewhere["cacheHit"], true, "{elsewhere}");
    assert_eq!(elsewhere["artifact"]["sha256"], first["artifact"]["sha256"]);
    let again = completed(&server, &friend, &config(&format!("{}/app:v1", open.addr)));
    assert_eq!(again["cacheHit"], true, "{again}");
    assert_eq!(
        metadata(&again)["source"],
        format!("{}/app:v1", open.addr),
        "the metadata names this build's source, not the one first built"
    );
}

/// `builderd cache ARGS --data-dir DATA`: its output.
fn cache_cmd(data: &std::path::Path, args: &[&str]) -> String {
    let out = builderd()
        .arg("cache")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_cache_keeps_under_its_bound_and_spares_what_a_running_build_reads() {
    let dir = tmp();
    let reg = TestRegistry::start(None);
    for name in ["one", "two", "three"] {
        push_app(&reg, dir.path(), name, Some(2_000_000));
    }
    let proxy = Proxy::start(&reg.addr);
    let data = dir.path().join("data");
    // An artifact is about 9 MB, the busybox layer 1 MB: room for one build.
    let server = Server::start(&data, &["--cache-max-bytes", "16M"]);
    let key = server.tenant("lru", "pro");
    for name in ["one", "two", "three"] {
        completed(&server, &key, &config(&format!("{}/{name}:v1", proxy.addr)));
        // The runner evicts just after it records the build's end, which
        // the client may see first: the bound must hold a moment later.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let mut held = store_bytes(&data);
        while held > 16 << 20 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
            held = store_bytes(&data);
        }
        assert!(held <= 16 << 20, "the cache holds {held} bytes, over 16M");
    }
    let ls = cache_cmd(&data, &["ls"]);
    assert_eq!(
        ls.lines().filter(|l| l.starts_with("artifact ")).count(),
        1,
        "room for one artifact: {ls}"
    );
    // The newest build's artifact is what stayed.
    let three = completed(&server, &key, &config(&format!("{}/three:v1", proxy.addr)));
    assert_eq!(three["cacheHit"], true, "{three}");
    let one = completed(&server, &key, &config(&format!("{}/one:v1", proxy.addr)));
    assert_ne!(one["cacheHit"], true, "the oldest was evicted first");

    // A slow build holds its blobs while `cache prune` empties the rest.
    proxy.faults.delay_ms.store(1500, Ordering::SeqCst);
    let slow = server.create(&key, &config(&format!("{}/two:v1", proxy.addr)));
    server.wait_for(
        &key,
        &slow,
        &["BUILD_STATE_DOWNLOADING", "BUILD_STATE_BUILDING"],
        Duration::from_secs(60),
    );
    let ls = cache_cmd(&data, &["ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("blob ") && l.ends_with(" yes")),
        "{ls}"
    );
    assert!(
        ls.lines()
            .any(|l| l.starts_with("artifact ") && l.ends_with(" no")),
        "{ls}"
    );
    let pruned = cache_cmd(&data, &["prune"]);
    assert!(pruned.contains("evicted artifact "), "{pruned}");
    assert!(pruned.contains("entries evicted"), "{pruned}");
    let left = cache_cmd(&data, &["ls"]);
    assert!(
        left.lines()
            .filter(|l| l.starts_with("blob ") || l.starts_with("artifact "))
            .all(|l| l.ends_with(" yes")),
        "only blobs in use are left: {left}"
    );
    proxy.faults.delay_ms.store(0, Ordering::SeqCst);
    let s = server.wait_for(
        &key,
        &slow,
        &["BUILD_STATE_COMPLETED", "BUILD_STATE_FAILED"],
        Duration::from_secs(120),
    );
    assert_eq!(s["state"], "BUILD_STATE_COMPLETED", "{s}");
}

/// Bytes under the data directory's caches (blobs and artifacts).
fn store_bytes(data: &std::path::Path) -> u64 {
    fn walk(p: &std::path::Path) -> u64 {
        std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        let m = e.metadata().unwrap();
                        if m.is_dir() {
                            walk(&e.path())
                        } else {
                            m.len()
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&data.join("blobs/blobs")) + walk(&data.join("cache/artifacts"))
}

/// One request a webhook receiver got, and what it answered.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
    answered: u16,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A webhook receiver on loopback: records every request; answers 503
/// while `down` is set, 200 otherwise.
struct Receiver {
    url: String,
    got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    fn start() -> Receiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, d) = (got.clone(), down.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut r = BufReader::new(conn);
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.trim_end().split_once(':') {
                        headers.push((k.trim().to_string(), v.trim().to_string()));
                    }
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                if r.read_exact(&mut body).is_err() {
                    continue;
                }
                let answered = if d.load(Ordering::SeqCst) { 503 } else { 200 };
                g.lock().unwrap().push(Received {
                    path,
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                    answered,
                });
                let _ = r.get_mut().write_all(
                    format!(
                        "HTTP/1.1 {answered} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                );
            }
        });
        Receiver { url, got, down }
    }

    /// Waits until `done` holds of what was received; answers it all.
    fn wait(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.got.lock().unwrap().clone();
            if done(&got) {
                return got;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: got {got:#?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The events delivered (answered 200) at `path`, in order.
fn events_at(got: &[Received], path: &str) -> Vec<String> {
    got.iter()
        .filter(|r| r.path == path && r.answered == 200)
        .map(|r| r.json()["event"].as_str().unwrap().to_string())
        .collect()
}

/// Checks a delivery's signature with openssl: HMAC-SHA256 of TIMESTAMP.BODY.
fn assert_signed(r: &Received, secret: &str) {
    use std::io::Write;
    let mut openssl = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let signed = format!("{}.{}", r.header("X-Builderd-Timestamp"), r.body);
    openssl
        .stdin
        .take()
        .unwrap()
        .write_all(signed.as_bytes())
        .unwrap();
    let out = String::from_utf8(openssl.wait_with_output().unwrap().stdout).unwrap();
    let hex = out.trim().rsplit(' ').next().unwrap();
    assert_eq!(
        r.header("X-Builderd-Signature"),
        format!("v1={hex}"),
        "a bad signature on {r:?}"
    );
    let age = now_s() - r.header("X-Builderd-Timestamp").parse::<i64>().unwrap();
    assert!((0..60).contains(&age), "the timestamp is {age} s old");
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `builderd tenant webhook NAME ARGS`: the tenant's webhook as JSON.
fn tenant_webhook(data: &std::path::Path, name: &str, args: &[&str]) -> Value {
    let out = run(builderd()
        .args(["tenant", "webhook", name])
        .args(args)
        .arg("--data-dir")
        .arg(data));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn with_webhook(mut c: Value, hook: Value) -> Value {
    c["config"]["webhook"] = hook;
    c
}

#[test]
fn webhooks_are_signed_and_every_event_arrives() {
    let dir = tmp();
    let reg = TestRegistry::start(None);
    push_app(&reg, dir.path(), "app", None);
    let recv = Receiver::start();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--allow-private-webhooks"]);
    let key = server.tenant("hooks", "pro");
    let tenant = tenant_webhook(
        &data,
        "hooks",
        &[
            "--url",
            &format!("{}/tenant", recv.url),
            "--events",
            "build.completed,build.failed",
            "--header",
            "X-Team: alpha",
        ],
    );
    let secret = tenant["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{tenant}");
    let hook = json!({"url": format!("{}/build", recv.url), "headers": {"X-Custom": "yes"}});

    let id = server.create(
        &key,
        &with_webhook(config(&format!("{}/app:v1", reg.addr)), hook.clone()),
    );
    let status = server.wait_for(
        &key,
        &id,
        &["BUILD_STATE_COMPLETED"],
        Duration::from_secs(60),
    );
    let got = recv.wait("the completed build's events", |g| {
        events_at(g, "/build").len() >= 3 && !events_at(g, "/tenant").is_empty()
    });
    assert_eq!(
        events_at(&got, "/build"),
        ["build.queued", "build.started", "build.completed"]
    );
    assert_eq!(events_at(&got, "/tenant"), ["build.completed"]);
    for r in &got {
        assert_signed(r, &secret);
        let body = r.json();
        assert_eq!(
            r.header("X-Builderd-Event"),
            body["event"].as_str().unwrap()
        );
        assert_eq!(
            r.header("X-Builderd-Delivery"),
            body["id"].as_str().unwrap()
        );
        assert_eq!(body["build"]["build_id"], id.as_str());
        assert_eq!(r.header("Content-Type"), "application/json");
        let custom = if r.path == "/build" {
            ("X-Custom", "yes")
        } else {
            ("X-Team", "alpha")
        };
        assert_eq!(r.header(custom.0), custom.1, "{r:?}");
    }
    let completed = got.iter().find(|r| r.path == "/tenant").unwrap().json();
    assert_eq!(completed["build"]["state"], "BUILD_STATE_COMPLETED");
    assert_eq!(
        completed["build"]["artifact"]["sha256"],
        status["artifact"]["sha256"]
    );
    assert_eq!(
        completed["build"]["artifact"]["size_bytes"]
            .as_i64()
            .unwrap(),
        num(&status["artifact"]["sizeBytes"])
    );
    let timings: Vec<&str> = completed["build"]["timings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(timings.first(), Some(&"BUILD_STATE_QUEUED"));
    assert_eq!(timings.last(), Some(&"BUILD_STATE_COMPLETED"));

    // A failure: its event to both, with the error.
    let missing = server.create(
        &key,
        &with_webhook(config(&format!("{}/app:gone", reg.addr)), hook),
    );
    server.wait_for(
        &key,
        &missing,
        &["BUILD_STATE_FAILED"],
        Duration::from_secs(60),
    );
    let got = recv.wait("the failed build's events", |g| {
        g.iter()
            .filter(|r| {
                r.json()["build"]["build_id"] == missing.as_str()
                    && r.json()["event"] == "build.failed"
            })
            .count()
            == 2
    });
    let failed = got
        .iter()
        .find(|r| r.path == "/tenant" && r.json()["event"] == "build.failed")
        .unwrap()
        .json();
    assert_eq!(
        failed["build"]["error"]["category"],
        "ERROR_CATEGORY_SOURCE"
    );
    assert!(failed["build"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not found"));
    let ids: std::collections::HashSet<&str> = got
        .iter()
        .map(|r| r.header("X-Builderd-Delivery"))
        .collect();
    assert_eq!(ids.len(), got.len(), "every delivery has its own id");
}

#[test]
fn pending_webhook_deliveries_survive_a_restart() {
    let dir = tmp();
    let reg = TestRegistry::start(None);
    push_app(&reg, dir.path(), "app", None);
    let recv = Receiver::start();
    recv.down.store(true, Ordering::SeqCst);
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &["--allow-private-webhooks"]);
    let key = server.tenant("durable", "pro");
    let secret = tenant_webhook(&data, "durable", &[])["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let hook = json!({"url": format!("{}/hook", recv.url), "events": ["build.completed"]});
    let id = server.create(
        &key,
        &with_webhook(config(&format!("{}/app:v1", reg.addr)), hook),
    );
    server.wait_for(
        &key,
        &id,
        &["BUILD_STATE_COMPLETED"],
        Duration::from_secs(60),
    );
    // Refused while the receiver is down; then the server dies.
    let refused = recv.wait("a first attempt", |g| !g.is_empty());
    assert_eq!(refused[0].answered, 503);
    server.kill9();
    recv.down.store(false, Ordering::SeqCst);
    server.restart();
    let got = recv.wait("the delivery after the restart", |g| {
        g.iter().any(|r| r.answered == 200)
    });
    let ok = got.iter().find(|r| r.answered == 200).unwrap();
    assert_signed(ok, &secret);
    assert_eq!(ok.json()["event"], "build.completed");
    assert_eq!(
        ok.header("X-Builderd-Delivery"),
        refused[0].header("X-Builderd-Delivery"),
        "the same delivery, tried again"
    );
    assert_eq!(ok.body, refused[0].body, "the same body, tried again");
    std::thread::sleep(Duration::from_secs(2));
    let after = recv.got.lock().unwrap().clone();
    assert_eq!(
        after.iter().filter(|r| r.answered == 200).count(),
        1,
        "delivered once: {after:#?}"
    );
}

#[test]
fn webhooks_to_private_addresses_are_refused() {
    let dir = tmp();
    let reg = TestRegistry::start(None);
    push_app(&reg, dir.path(), "app", None);
    let recv = Receiver::start();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let key = server.tenant("careful", "pro");
    let image = config(&format!("{}/app:v1", reg.addr));
    for url in [
        format!("{}/hook", recv.url),
        "http://169.254.169.254/latest/meta-data".to_string(),
        "http://10.1.2.3/hook".to_string(),
        "http://[::1]:8080/hook".to_string(),
        "http://localhost:8080/hook".to_string(),
    ] {
        let a = server.call(
            "CreateBuild",
            Some(&key),
            &[],
            &with_webhook(image.clone(), json!({"url": url})).to_string(),
        );
        let v = a.json();
        assert_eq!(v["code"], "invalid_argument", "{url}: {v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("--allow-private-webhooks"),
            "{v}"
        );
    }
    // A tenant's webhook set outside the API is checked when it is sent.
    tenant_webhook(
        &data,
        "careful",
        &["--url", &format!("{}/tenant", recv.url)],
    );
    let id = server.create(&key, &image);
    server.wait_for(
        &key,
        &id,
        &["BUILD_STATE_COMPLETED"],
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        recv.got.lock().unwrap().is_empty(),
        "a delivery reached a loopback address"
    );
}

/// One sample of a scrape, as the Prometheus client's parser read it.
#[derive(Debug, serde::Deserialize)]
struct Sample {
    family: String,
    name: String,
    labels: std::collections::BTreeMap<String, String>,
    value: f64,
}

/// Scrapes `url` and parses it with the Python Prometheus client's
/// OpenMetrics parser (which fails on anything malformed).
fn scrape(url: &str) -> Vec<Sample> {
    let out = Command::new("curl")
        .args(["-sf", "-H", "Accept: application/openmetrics-text", url])
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {url}: {out:?}");
    let mut parser = python_client("parse_metrics.py")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut parser.stdin.take().unwrap(), &out.stdout).unwrap();
    let parsed = parser.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "the scrape does not parse: {}\n{}",
        String::from_utf8_lossy(&parsed.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&parsed.stdout).unwrap()
}

/// The value of sample `name` with (at least) `labels`; 0 when absent.
fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[test]
fn metrics_show_the_counters_moving_as_builds_run() {
    let dir = tmp();
    let reg = TestRegistry::start(None);
    push_app(&reg, dir.path(), "app", None);
    let proxy = Proxy::start(&reg.addr);
    let recv = Receiver::start();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--allow-private-webhooks"]);
    let key = server.tenant("watched", "pro");
    let metrics = format!("{}/metrics", server.url);
    let completed_pro = [
        ("state", "COMPLETED"),
        ("source_type", "docker_image"),
        ("tier", "pro"),
    ];

    // No key needed; every series is builderd's.
    let before = scrape(&metrics);
    assert!(!before.is_empty());
    for s in &before {
        assert!(s.family.starts_with("builderd_"), "{s:?}");
    }
    assert_eq!(
        sample(&before, "builderd_builds_total", &completed_pro),
        0.0
    );
    assert_eq!(sample(&before, "builderd_cache_misses_total", &[]), 0.0);

    // A build that needs one retry (503 on the manifest) and pulls its layers.
    *proxy.faults.fail_on.lock().unwrap() = "/manifests/".into();
    proxy.faults.fail.store(1, Ordering::SeqCst);
    let image = config(&format!("{}/app:v1", proxy.addr));
    let first = completed(&server, &key, &image);
    let layer_bytes: u64 = metadata(&first)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    let after_one = scrape(&metrics);
    assert_eq!(
        sample(&after_one, "builderd_builds_total", &completed_pro),
        1.0
    );
    assert_eq!(
        sample(&after_one, "builderd_builds_total", &[("state", "QUEUED")]),
        1.0
    );
    assert_eq!(sample(&after_one, "builderd_cache_misses_total", &[]), 1.0);
    assert_eq!(sample(&after_one, "builderd_cache_hits_total", &[]), 0.0);
    assert_eq!(
        sample(&after_one, "builderd_pulled_bytes_total", &[]),
        layer_bytes as f64
    );
    assert_eq!(
        sample(
            &after_one,
            "builderd_retries_total",
            &[("cause", "NETWORK_ERROR"), ("scope", "request")]
        ),
        1.0
    );
    for stage in [
        "QUEUED",
        "RUNNING",
        "PREPARING",
        "DOWNLOADING",
        "BUILDING",
        "PACKAGING",
    ] {
        assert_eq!(
            sample(
                &after_one,
                "builderd_stage_duration_seconds_count",
                &[("stage", stage)]
            ),
            1.0,
            "{stage}"
        );
    }
    assert!(sample(&after_one, "builderd_stage_duration_seconds_sum", &[]) > 0.0);
    assert!(sample(&after_one, "builderd_artifacts_bytes", &[]) > 0.0);
    assert!(sample(&after_one, "builderd_cache_bytes", &[("kind", "blob")]) >= layer_bytes as f64);

    // The same again, with a webhook: a cache hit, nothing pulled, one delivery.
    let hook = json!({"url": format!("{}/hook", recv.url), "events": ["build.completed"]});
    let second = completed(&server, &key, &with_webhook(image.clone(), hook));
    assert_eq!(second["cacheHit"], true);
    recv.wait("the delivery", |g| !events_at(g, "/hook").is_empty());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let after_two = loop {
        let s = scrape(&metrics);
        if sample(
            &s,
            "builderd_webhook_deliveries_total",
            &[("outcome", "delivered")],
        ) >= 1.0
            || std::time::Instant::now() > deadline
        {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        sample(&after_two, "builderd_builds_total", &completed_pro),
        2.0
    );
    assert_eq!(sample(&after_two, "builderd_cache_hits_total", &[]), 1.0);
    assert_eq!(sample(&after_two, "builderd_cache_misses_total", &[]), 1.0);
    assert_eq!(
        sample(&after_two, "builderd_pulled_bytes_total", &[]),
        layer_bytes as f64
    );
    assert_eq!(
        sample(
            &after_two,
            "builderd_webhook_deliveries_total",
            &[("outcome", "delivered")]
        ),
        1.0
    );
    assert_eq!(
        sample(&after_two, "builderd_webhook_deliveries_pending", &[]),
        0.0
    );

    // Queue depth and the builds in each state, now: one waits on a
    // registry that never answers.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stuck = server.create(
        &key,
        &config(&format!("{}/app:v1", hole.local_addr().unwrap())),
    );
    server.wait_for(
        &key,
        &stuck,
        &["BUILD_STATE_PREPARING"],
        Duration::from_secs(30),
    );
    let busy = scrape(&metrics);
    assert_eq!(
        sample(
            &busy,
            "builderd_builds_current",
            &[("state", "PREPARING"), ("tier", "pro")]
        ),
        1.0
    );
    assert_eq!(sample(&busy, "builderd_queue_depth", &[]), 0.0);
    server.ok("CancelBuild", &key, &json!({"build_id": stuck}).to_string());
    server.wait_for(
        &key,
        &stuck,
        &["BUILD_STATE_CANCELLED"],
        Duration::from_secs(10),
    );
    let done = scrape(&metrics);
    assert_eq!(sample(&done, "builderd_builds_current", &[]), 0.0);
    assert_eq!(
        sample(&done, "builderd_builds_total", &[("state", "CANCELLED")]),
        1.0
    );
}

#[test]
fn metrics_listen_moves_the_metrics_off_the_api_port() {
    let dir = tmp();
    let port = common::server::free_port();
    let addr = format!("127.0.0.1:{port}");
    let server = Server::start(&dir.path().join("data"), &["--metrics-listen", &addr]);
    assert_eq!(server.curl("/metrics", &[]).status, 404);
    let samples = scrape(&format!("http://{addr}/metrics"));
    assert_eq!(sample(&samples, "builderd_queue_depth", &[]), 0.0);
    assert!(samples.iter().any(|s| s.name == "builderd_queue_depth"));
}

#[test]
fn a_build_records_what_it_used() {
    let dir = tmp();
    let reg = TestRegistry::start(None);
    push_app(&reg, dir.path(), "app", None);
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let key = server.tenant("frugal", "pro");
    let s = completed(&server, &key, &config(&format!("{}/app:v1", reg.addr)));
    let u = &s["resourceUsage"];
    assert!(u["cpuSeconds"].as_f64().unwrap() > 0.0, "{s}");
    let peak = num(&u["peakMemoryBytes"]);
    assert!(peak > 1 << 20 && peak < 256 << 20, "{s}");
    let artifact = data
        .join("artifacts/frugal")
        .join(s["buildId"].as_str().unwrap());
    // The image's size as the tenant's storage counts it.
    let image = std::fs::metadata(artifact.join("rootfs.ext4"))
        .unwrap()
        .len();
    assert_eq!(num(&u["diskBytes"]) as u64, image, "{s}");
    // Bytes sent to storage: none on a tmpfs.
    let fs = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(&data)
        .output()
        .unwrap();
    if String::from_utf8_lossy(&fs.stdout).trim() != "tmpfs" {
        assert!(num(&u["diskWrittenBytes"]) > 0, "{s}");
    }
    // A cache hit runs no build process.
    let hit = completed(&server, &key, &config(&format!("{}/app:v1", reg.addr)));
    assert_eq!(hit["cacheHit"], true);
    assert_eq!(num(&hit["resourceUsage"]["peakMemoryBytes"]), 0);
}

#[test]
fn retention_deletes_old_artifacts_and_logs_and_usage_follows() {
    let dir = tmp();
    let reg = TestRegistry::start(None);
    push_app(&reg, dir.path(), "app", None);
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--retention", "3s"]);
    let key = server.tenant("forgetful", "pro");
    let quotas = || server.ok("GetTenantQuotas", &key, "{}");
    let s = completed(&server, &key, &config(&format!("{}/app:v1", reg.addr)));
    let id = s["buildId"].as_str().unwrap().to_string();
    let artifact = data.join("artifacts/forgetful").join(&id);
    assert!(artifact.join("rootfs.ext4").exists());
    let used = num(&quotas()["usage"]["storageBytes"]);
    assert!(used > 0);
    assert!(!logs(&server, &key, &id).is_empty());
    download_and_check(&server, &key, &id, dir.path());

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let expired = loop {
        let s = server.status(&key, &id);
        if s.get("expiredAt").is_some() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "never expired: {s}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // The record stays; the files, the logs and their bytes go.
    assert_eq!(expired["state"], "BUILD_STATE_COMPLETED");
    assert_eq!(expired["artifact"]["sha256"], s["artifact"]["sha256"]);
    assert_eq!(num(&expired["resourceUsage"]["diskBytes"]), 0);
    assert!(!artifact.exists());
    assert_eq!(num(&quotas()["usage"]["storageBytes"]), 0);
    assert_eq!(logs(&server, &key, &id), "");
    let download = server.curl(
        &format!("/builder.v1.BuilderService/GetBuildArtifact/{id}"),
        &["-H", &format!("Authorization: Bearer {key}")],
    );
    assert_eq!(download.status, 404);
    assert!(String::from_utf8_lossy(&download.body).contains("retention"));
    let stats = server.ok("GetBuildStats", &key, "{}");
    assert_eq!(num(&stats["completedBuilds"]), 1, "{stats}");
}

#[test]
fn grpc_health_is_serving_until_shutdown() {
    use std::io::BufRead;
    let dir = tmp();
    let mut server = Server::start(&dir.path().join("data"), &[]);
    let mut client = python_client("health_client.py")
        .arg(server.url.trim_start_matches("http://"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(client.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        first,
        json!({"server": "SERVING", "builder": "SERVING", "unknown": "NOT_FOUND", "watch": "SERVING"})
    );
    // SIGTERM: the watcher hears NOT_SERVING before the server goes.
    assert!(server.terminate().success());
    let rest: Vec<Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert_eq!(
        rest.first(),
        Some(&json!({"watch": "NOT_SERVING"})),
        "{rest:?}"
    );
    assert!(client.wait().unwrap().success());
}

#[test]
fn log_format_json_writes_one_object_a_line() {
    let dir = tmp();
    let reg = TestRegistry::start(None);
    push_app(&reg, dir.path(), "app", None);
    let log = dir.path().join("server.log");
    let mut server =
        Server::start_logged(&dir.path().join("data"), &["--log-format", "json"], &log);
    let key = server.tenant("logged", "pro");
    let s = completed(&server, &key, &config(&format!("{}/app:v1", reg.addr)));
    assert!(server.terminate().success());
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
    }
    let find = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} in {lines:#?}"))
    };
    assert_eq!(find("serving builder.v1")["url"], server.url.as_str());
    let ended = find("build ended");
    assert_eq!(ended["build_id"], s["buildId"]);
    assert_eq!(ended["tenant_id"], "logged");
    assert_eq!(ended["level"], "INFO");
    find("stopped");
}

/// The spans an OTLP/HTTP JSON export request carries, with the resource's
/// service.name beside each.
fn otlp_spans(body: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for rs in body["resourceSpans"].as_array().into_iter().flatten() {
        let service = rs["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .map(|a| a["value"]["stringValue"].as_str().unwrap().to_string())
            .unwrap_or_default();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for span in ss["spans"].as_array().into_iter().flatten() {
                out.push((service.clone(), span.clone()));
            }
        }
    }
    out
}

/// A span attribute's value, whatever its type.
fn attribute<'a>(span: &'a Value, key: &str) -> &'a Value {
    let a = span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .unwrap_or_else(|| panic!("no {key} in {span}"));
    a["value"].as_object().unwrap().values().next().unwrap()
}

#[test]
fn each_build_is_a_trace_with_a_span_per_stage_sent_over_otlp() {
    let dir = tmp();
    let reg = TestRegistry::start(None);
    push_app(&reg, dir.path(), "app", None);
    let collector = Receiver::start();
    let server = Server::start(
        &dir.path().join("data"),
        &["--otlp-endpoint", &collector.url],
    );
    let key = server.tenant("traced", "pro");
    let built = completed(&server, &key, &config(&format!("{}/app:v1", reg.addr)));
    let missing = server.create(&key, &config(&format!("{}/app:gone", reg.addr)));
    server.wait_for(
        &key,
        &missing,
        &["BUILD_STATE_FAILED"],
        Duration::from_secs(60),
    );
    let trace_of = |id: &str| id.trim_start_matches("build_").to_string();
    let (built_trace, failed_trace) = (
        trace_of(built["buildId"].as_str().unwrap()),
        trace_of(&missing),
    );
    let spans_of = |got: &[Received], trace: &str| -> Vec<(String, Value)> {
        got.iter()
            .filter(|r| r.path == "/v1/traces")
            .flat_map(|r| otlp_spans(&r.json()))
            .filter(|(_, s)| s["traceId"].as_str().unwrap().eq_ignore_ascii_case(trace))
            .collect()
    };
    let got = collector.wait("both builds' traces", |g| {
        spans_of(g, &built_trace)
            .iter()
            .any(|(_, s)| s["name"] == "build")
            && spans_of(g, &failed_trace)
                .iter()
                .any(|(_, s)| s["name"] == "build")
    });

    let spans = spans_of(&got, &built_trace);
    assert!(spans.iter().all(|(service, _)| service == "builderd"));
    let root = &spans.iter().find(|(_, s)| s["name"] == "build").unwrap().1;
    assert_eq!(attribute(root, "builderd.build_id"), &built["buildId"]);
    assert_eq!(attribute(root, "builderd.state"), "COMPLETED");
    assert_eq!(attribute(root, "builderd.tenant_id"), "traced");
    let mut stages: Vec<&Value> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s["name"] != "build")
        .collect();
    stages.sort_by_key(|s| num(&s["startTimeUnixNano"]));
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    // The states the build passed through, as its record has them.
    let job = server.ok(
        "GetBuild",
        &key,
        &json!({"build_id": built["buildId"]}).to_string(),
    );
    let passed: Vec<String> = job["build"]["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t["state"]
                .as_str()
                .unwrap()
                .trim_start_matches("BUILD_STATE_")
                .to_ascii_lowercase()
        })
        .filter(|s| s != "completed")
        .collect();
    assert_eq!(names, passed);
    assert!(names.starts_with(&["queued", "running", "preparing", "downloading", "building"]));
    for (i, s) in stages.iter().enumerate() {
        assert_eq!(s["parentSpanId"], root["spanId"], "{s}");
        assert!(num(&s["endTimeUnixNano"]) >= num(&s["startTimeUnixNano"]));
        match stages.get(i + 1) {
            Some(next) => assert_eq!(s["endTimeUnixNano"], next["startTimeUnixNano"]),
            None => assert_eq!(s["endTimeUnixNano"], root["endTimeUnixNano"]),
        }
    }
    assert_eq!(stages[0]["startTimeUnixNano"], root["startTimeUnixNano"]);

    let failed = spans_of(&got, &failed_trace);
    let root = &failed.iter().find(|(_, s)| s["name"] == "build").unwrap().1;
    assert_eq!(attribute(root, "builderd.state"), "FAILED");
    assert_eq!(num(&root["status"]["code"]), 2, "an error status: {root}");
    assert!(
        root["status"]["message"]
            .as_str()
            .unwrap()
            .contains("not found"),
        "{root}"
    );
}
