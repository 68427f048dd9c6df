//! Operating `builderd serve`: retry policies, the artifact cache, signed
//! webhooks, metrics and traces, retention. A real server process, a real
//! registry on loopback with a proxy in front that records and disturbs.

mod common;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::registry::{Proxy, TestRegistry};
use common::server::{config, num, push_app, Server};
use common::*;
use serde_json::{json, Value};

/// `builderd client logs ID`: the build's log lines.
fn logs(server: &Server, key: &str, id: &str) -> String {
    let out = builderd()
        .args(["client", "--server", &server.url, "--key", key, "logs", id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

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
            .contains("not found (404)"),
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
