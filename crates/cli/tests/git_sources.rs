//! `builderd build git+http://…`, `git://…` and `git+ssh://…`: repositories
//! the tests make (a submodule, branches, an annotated tag, a pull-request
//! ref), served by real Git servers on loopback (`git http-backend` behind
//! basic auth, `git daemon`, `sshd` with a key), fetched into the source
//! cache, built by their Containerfile with buildah and written as images
//! (each e2fsck-checked). Needs root, buildah, runc, git and sshd.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::git_servers::{GitDaemon, GitHttp, Sshd};
use common::images::build;
use common::projects::{base_image, boot, debugfs_cat, git, make_repos, metadata};
use common::registry::TestRegistry;
use common::*;

const TOKEN: &str = "tok-3f9a7c2e51d8";

fn steps_dir(dir: &Path) -> String {
    dir.join("steps").display().to_string()
}

/// Builds `source` with the environment `env` set.
fn build_with(source: &str, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = builderd();
    cmd.arg("build").arg(source).arg("-o").arg(out).args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn assert_built(o: &Output, out: &Path, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    e2fsck(out);
}

/// Fails with `expected` in its error, leaving no image and no build
/// directory in the steps' storage.
fn assert_fails(o: &Output, out: &Path, steps: &Path, expected: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "it built; expected {expected:?}");
    assert!(err.contains(expected), "{expected:?} not in:\n{err}");
    assert!(!out.exists(), "an image was left");
    if let Ok(entries) = std::fs::read_dir(steps) {
        for e in entries.flatten() {
            let name = e.file_name();
            assert!(
                !name.to_string_lossy().starts_with("project-"),
                "{name:?} was left in the steps' storage"
            );
        }
    }
    err
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                if let Ok(bytes) = std::fs::read(&path) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        found.push(path);
                    }
                }
            }
        }
    }
    found
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn https_style_auth_refs_submodules_templates_and_the_source_cache() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let reg = TestRegistry::start(None);
    let base = base_image(&reg, dir.path());
    let repos = make_repos(dir.path(), &base);
    let server = GitHttp::start(&repos.srv, Some(("x-access-token", TOKEN)));
    let url = format!("git+http://{}/app.git", server.addr);
    let steps = steps_dir(dir.path());
    let token = [("BUILDERD_GIT_TOKEN", TOKEN)];
    let out = dir.path().join("app.ext4");
    let args = [
        "--steps-dir",
        &steps,
        "--build-arg",
        "COMMIT={{.GitCommit}}",
        "--build-arg",
        "TAG={{ .GitTag }}",
    ];

    // The annotated tag: its commit, the submodule at its recorded commit.
    let o = build_with(&format!("{url}#v1"), &out, &args, &token);
    assert_built(&o, &out, "v1");
    assert_eq!(debugfs_cat(&out, "/app/app.txt"), "one\n");
    assert_eq!(
        debugfs_cat(&out, "/app/vendor/lib/lib.txt"),
        "library one\n"
    );
    assert_eq!(debugfs_cat(&out, "/app/commit"), format!("{}\n", repos.v1));
    assert_eq!(debugfs_cat(&out, "/app/tag"), "v1\n");
    // The build sees files, not a repository.
    assert_eq!(debugfs_cat(&out, "/app/.git/HEAD"), "");
    assert_eq!(metadata(&out)["source_commit"], repos.v1.as_str());
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let first_fetch = server.bytes();
    assert!(
        first_fetch > 1 << 20,
        "the first fetch was {first_fetch} bytes"
    );

    // A fetch killed at its deadline leaves git's lock files behind: the
    // next fetch is not stopped by them.
    let sources = Path::new(&steps).join("sources");
    for cache in std::fs::read_dir(&sources).unwrap().flatten() {
        if cache.path().extension().is_some_and(|e| e == "git") {
            std::fs::write(cache.path().join("shallow.lock"), "").unwrap();
        }
    }

    // The default branch, one commit later: only what changed comes over.
    let o = build_with(&url, &out, &args, &token);
    assert_built(&o, &out, "HEAD");
    assert_eq!(debugfs_cat(&out, "/app/app.txt"), "main two\n");
    assert_eq!(debugfs_cat(&out, "/app/tag"), "\n");
    assert_eq!(metadata(&out)["source_commit"], repos.main.as_str());
    let second_fetch = server.bytes() - first_fetch;
    assert!(
        second_fetch < 256 << 10,
        "the second fetch was {second_fetch} bytes: the source cache was not used"
    );

    // A pull request's ref.
    let o = build_with(&format!("{url}#refs/pull/7/head"), &out, &args, &token);
    assert_built(&o, &out, "refs/pull/7/head");
    assert_eq!(debugfs_cat(&out, "/app/app.txt"), "pull seven\n");
    assert_eq!(metadata(&out)["source_commit"], repos.pull.as_str());

    // A user and password, and a short commit id.
    let other = GitHttp::start(&repos.srv, Some(("bob", "pw:with@odd/chars")));
    let o = build_with(
        &format!("git+http://{}/app.git#{}", other.addr, &repos.feature[..10]),
        &out,
        &["--steps-dir", &steps],
        &[("BUILDERD_GIT_CREDS", "bob:pw:with@odd/chars")],
    );
    assert_built(&o, &out, "short id");
    assert_eq!(debugfs_cat(&out, "/app/app.txt"), "feature\n");
    assert_eq!(metadata(&out)["source_commit"], repos.feature.as_str());

    // The token is nowhere: logs, metadata, the steps' storage (the source
    // cache, the engine's layers).
    let all_logs = format!("{logs}{}", String::from_utf8_lossy(&o.stderr));
    assert!(!all_logs.contains(TOKEN));
    assert!(!std::fs::read_to_string(format!("{}.json", out.display()))
        .unwrap()
        .contains(TOKEN));
    assert_eq!(
        files_holding(Path::new(&steps), TOKEN.as_bytes()),
        Vec::<PathBuf>::new()
    );

    // Bad input: each a clear error, nothing left behind.
    let bad = dir.path().join("bad.ext4");
    let steps_path = Path::new(&steps);
    let o = build_with(
        &url,
        &bad,
        &["--steps-dir", &steps],
        &[("BUILDERD_GIT_TOKEN", "wrong")],
    );
    assert_fails(&o, &bad, steps_path, "refused the credentials");
    assert!(server
        .served()
        .iter()
        .any(|s| s.status == 401 && s.authorized));
    let o = build_with(&url, &bad, &["--steps-dir", &steps], &[]);
    assert_fails(&o, &bad, steps_path, "refused the credentials");
    let missing = format!("git+http://{}/missing.git", server.addr);
    let in_url = format!("git+http://x:{TOKEN}@{}/app.git", server.addr);
    for (source, extra, expected) in [
        (&missing, &[][..], "does not exist"),
        (
            &format!("{url}#nope"),
            &[],
            "has no branch, tag or ref \"nope\"",
        ),
        (
            &url,
            &["--dockerfile", "missing/Dockerfile"],
            "\"missing/Dockerfile\"",
        ),
        (
            &url,
            &["--build-arg", "X={{.GitSecret}}"],
            "{{.GitSecret}} is not a name",
        ),
    ] {
        let mut args = vec!["--steps-dir", &steps];
        args.extend_from_slice(extra);
        let o = build_with(source, &bad, &args, &token);
        assert_fails(&o, &bad, steps_path, expected);
    }
    let o = build_with(&in_url, &bad, &["--steps-dir", &steps], &[]);
    let err = assert_fails(&o, &bad, steps_path, "--git-creds");
    assert!(!err.contains(TOKEN), "{err}");
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn git_daemon_commit_ids_and_submodule_urls_the_policy_refuses() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let reg = TestRegistry::start(None);
    let base = base_image(&reg, dir.path());
    let repos = make_repos(dir.path(), &base);
    let daemon = GitDaemon::start(&repos.srv);
    let steps = steps_dir(dir.path());
    let steps_path = Path::new(&steps);
    let out = dir.path().join("app.ext4");

    // A full commit id, and the submodule's relative URL on git:// too.
    let o = build(
        &format!("git://{}/app.git#{}", daemon.addr, repos.feature),
        &out,
        &["--steps-dir", &steps],
    );
    assert_built(&o, &out, "git://");
    assert_eq!(debugfs_cat(&out, "/app/app.txt"), "feature\n");
    assert_eq!(
        debugfs_cat(&out, "/app/vendor/lib/lib.txt"),
        "library one\n"
    );
    assert_eq!(metadata(&out)["source_commit"], repos.feature.as_str());

    let bad = dir.path().join("bad.ext4");
    let o = build(
        &format!("git://{}/missing.git", daemon.addr),
        &bad,
        &["--steps-dir", &steps],
    );
    assert_fails(&o, &bad, steps_path, "does not exist");

    // A repository whose submodule is a path on the server's machine.
    let sneaky = dir.path().join("sneaky");
    std::fs::create_dir(&sneaky).unwrap();
    std::fs::write(sneaky.join("Dockerfile"), format!("FROM {base}\n")).unwrap();
    git(&sneaky, &["init", "-q"]);
    let lib_path = format!("file://{}", repos.srv.join("lib.git").display());
    git(&sneaky, &["submodule", "add", "-q", &lib_path, "lib"]);
    git(&sneaky, &["commit", "-q", "-am", "sneaky"]);
    let o = build(
        &format!("git:{}", sneaky.display()),
        &bad,
        &["--steps-dir", &steps],
    );
    assert_fails(&o, &bad, steps_path, "local paths and file:// are refused");

    // A submodule on loopback, where the build may reach public addresses
    // only.
    let inward = dir.path().join("inward");
    std::fs::create_dir(&inward).unwrap();
    std::fs::write(inward.join("Dockerfile"), format!("FROM {base}\n")).unwrap();
    git(&inward, &["init", "-q"]);
    let lib_url = format!("git://{}/lib.git", daemon.addr);
    git(&inward, &["submodule", "add", "-q", &lib_url, "lib"]);
    git(&inward, &["commit", "-q", "-am", "inward"]);
    let o = build(
        &format!("git:{}", inward.display()),
        &bad,
        &["--steps-dir", &steps, "--public-only"],
    );
    assert_fails(&o, &bad, steps_path, "--allow-private-git");
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn ssh_with_a_key_and_the_operators_known_hosts() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let reg = TestRegistry::start(None);
    let base = base_image(&reg, dir.path());
    let repos = make_repos(dir.path(), &base);
    let sshd = Sshd::start(&dir.path().join("sshd"));
    let steps = steps_dir(dir.path());
    let steps_path = Path::new(&steps);
    let url = format!(
        "git+ssh://root@{}{}/app.git",
        sshd.addr,
        repos.srv.display()
    );
    let key = sshd.key.display().to_string();
    let known = sshd.known_hosts.display().to_string();
    let out = dir.path().join("app.ext4");
    let o = build(
        &format!("{url}#v1"),
        &out,
        &[
            "--steps-dir",
            &steps,
            "--ssh-key",
            &key,
            "--ssh-known-hosts",
            &known,
        ],
    );
    assert_built(&o, &out, "ssh");
    assert_eq!(debugfs_cat(&out, "/app/app.txt"), "one\n");
    // The submodule (../lib.git) is on the same server: the key goes there too.
    assert_eq!(
        debugfs_cat(&out, "/app/vendor/lib/lib.txt"),
        "library one\n"
    );
    assert_eq!(metadata(&out)["source_commit"], repos.v1.as_str());

    let bad = dir.path().join("bad.ext4");
    let o = build(&url, &bad, &["--steps-dir", &steps, "--ssh-key", &key]);
    assert_fails(&o, &bad, steps_path, "host key is not known");
    let stranger = dir.path().join("stranger");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .status()
        .unwrap();
    assert!(made.success());
    let o = build(
        &url,
        &bad,
        &[
            "--steps-dir",
            &steps,
            "--ssh-key",
            stranger.to_str().unwrap(),
            "--ssh-known-hosts",
            &known,
        ],
    );
    assert_fails(&o, &bad, steps_path, "refused the credentials");
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn a_monorepo_apps_multi_stage_build_boots_and_prints_its_commit() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let reg = TestRegistry::start(None);
    let base = base_image(&reg, dir.path());
    let srv = dir.path().join("srv");
    std::fs::create_dir(&srv).unwrap();
    git(&srv, &["init", "-q", "--bare", "mono.git"]);
    let work = dir.path().join("mono");
    let app = work.join("services/api");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::create_dir_all(work.join("services/web")).unwrap();
    std::fs::write(work.join("services/web/Dockerfile"), "FROM scratch\n").unwrap();
    std::fs::write(
        app.join("Dockerfile"),
        format!(
            "FROM {base} AS build\nARG COMMIT=unset\n\
             RUN mkdir -p /out && echo \"api built from $COMMIT\" > /out/version\n\
             FROM {base}\nCOPY --from=build /out/version /app/version\nCOPY run.sh /app/run.sh\n\
             CMD [\"/bin/sh\", \"/app/run.sh\"]\n"
        ),
    )
    .unwrap();
    std::fs::write(app.join("run.sh"), "cat /app/version\nexit 4\n").unwrap();
    git(&work, &["init", "-q"]);
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "mono"]);
    let commit = git(&work, &["rev-parse", "HEAD"]);
    git(
        &work,
        &["push", "-q", srv.join("mono.git").to_str().unwrap(), "main"],
    );
    let daemon = GitDaemon::start(&srv);
    let out = dir.path().join("api.ext4");
    let o = build(
        &format!("git://{}/mono.git#main", daemon.addr),
        &out,
        &[
            "--steps-dir",
            &steps_dir(dir.path()),
            "--context",
            "services/api",
            "--build-arg",
            "COMMIT={{.GitCommit}}",
        ],
    );
    assert_built(&o, &out, "monorepo");
    // The builder stage's tools stay behind: only what was copied over.
    assert_eq!(debugfs_cat(&out, "/out/version"), "");
    let (console, code) = boot(&out);
    assert!(
        console.contains(&format!("api built from {commit}")),
        "{console}"
    );
    assert_eq!(code, Some(4), "{console}");
}
