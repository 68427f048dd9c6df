//! `builderd build dir:PATH` and `git:PATH#REF`: a project built by its
//! Containerfile with buildah (FROM an image the test pushes to a registry
//! on loopback, RUN isolated as build steps are), then written as any image
//! is. Each image is e2fsck-checked. Needs root, buildah, runc and git.

mod common;

use std::path::Path;

use common::images::build;
use common::projects::{base_image, boot, busybox_image, debugfs_cat, git, metadata, owner};
use common::registry::TestRegistry;
use common::*;
use serde_json::json;

fn steps_dir(dir: &Path) -> String {
    dir.join("steps").display().to_string()
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn a_directory_and_a_git_ref_build_by_their_containerfile() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let reg = TestRegistry::start(None);
    let base = base_image(&reg, dir.path());
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(repo.join("app.txt"), "version one\n").unwrap();
    std::fs::write(
        repo.join("Dockerfile"),
        format!(
            "FROM {base}\nARG GREETING=unset\nCOPY app.txt /app/app.txt\n\
             RUN echo \"$GREETING\" > /app/greeting && id -u > /app/uid \
             && mkdir -p /srv/made && touch /app/owned && chown 1000:2000 /app/owned\n\
             CMD [\"cat\", \"/app/app.txt\"]\n"
        ),
    )
    .unwrap();

    // The directory as it is, with a build argument.
    let out = dir.path().join("dir.ext4");
    let o = build(
        &format!("dir:{}", repo.display()),
        &out,
        &[
            "--steps-dir",
            &steps_dir(dir.path()),
            "--build-arg",
            "GREETING=hello",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    e2fsck(&out);
    assert_eq!(debugfs_cat(&out, "/app/app.txt"), "version one\n");
    assert_eq!(debugfs_cat(&out, "/app/greeting"), "hello\n");
    // RUN ran as root in its namespace, and what it and COPY wrote is
    // owned as the image says (not by the namespace's host ids), without
    // the runtime's placeholders.
    assert_eq!(debugfs_cat(&out, "/app/uid"), "0\n");
    for path in ["/app", "/app/app.txt", "/app/greeting", "/srv/made"] {
        assert_eq!(owner(&out, path), Some((0, 0)), "{path}");
    }
    assert_eq!(owner(&out, "/app/owned"), Some((1000, 2000)));
    assert_eq!(owner(&out, "/etc/hostname"), None);
    let meta = metadata(&out);
    assert_eq!(meta["config"]["cmd"], json!(["cat", "/app/app.txt"]));
    assert!(meta.get("source_commit").is_none());

    // A Git repository: a tag and a later commit on its branch.
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    git(&repo, &["tag", "v1"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);
    std::fs::write(repo.join("app.txt"), "version two\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "two"]);
    let second = git(&repo, &["rev-parse", "HEAD"]);
    // Not committed: the build sees the commit, not the working tree.
    std::fs::write(repo.join("app.txt"), "uncommitted\n").unwrap();
    for (reference, text, commit) in [
        ("#v1", "version one\n", &first),
        ("#main", "version two\n", &second),
        ("", "version two\n", &second),
        (&format!("#{}", &first[..8]), "version one\n", &first),
    ] {
        let out = dir.path().join("git.ext4");
        let o = build(
            &format!("git:{}{reference}", repo.display()),
            &out,
            &["--steps-dir", &steps_dir(dir.path())],
        );
        assert!(
            o.status.success(),
            "{reference}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        e2fsck(&out);
        assert_eq!(debugfs_cat(&out, "/app/app.txt"), text, "{reference}");
        let meta = metadata(&out);
        assert_eq!(meta["source_commit"], commit.as_str(), "{reference}");
    }
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn bad_projects_fail_with_what_was_wrong() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let reg = TestRegistry::start(None);
    let base = base_image(&reg, dir.path());
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(repo.join("README"), "no Containerfile here\n").unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    let fails = |source: String, extra: &[&str], expected: &str| {
        let out = dir.path().join("bad.ext4");
        let mut args = vec!["--steps-dir".to_string(), steps_dir(dir.path())];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = build(&source, &out, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{source} built");
        assert!(
            err.contains(expected),
            "{source}: {expected:?} not in:\n{err}"
        );
        assert!(!out.exists(), "{source} left an image");
    };
    let git_source = format!("git:{}", repo.display());
    fails(
        git_source.clone(),
        &[],
        "looked for Dockerfile and Containerfile",
    );
    fails(
        format!("{git_source}#nope"),
        &[],
        "has no branch, tag or ref \"nope\"",
    );
    fails(
        format!("{git_source}#--upload-pack=touch"),
        &[],
        "is not a Git ref",
    );
    fails(
        format!("dir:{}", repo.display()),
        &["--dockerfile", "../outside"],
        "Containerfile \"../outside\"",
    );
    // A failing RUN: its command's exit code and output in the error.
    std::fs::write(
        repo.join("Dockerfile"),
        format!("FROM {base}\nRUN echo about-to-fail && exit 7\n"),
    )
    .unwrap();
    fails(format!("dir:{}", repo.display()), &[], "about-to-fail");
    // A cache mount named to climb out of the engine's cache directory
    // (buildah 1.28 would mount the host's /etc): refused before anything
    // runs, whether or not the layer cache is on.
    std::fs::write(
        repo.join("Dockerfile"),
        format!(
            "FROM {base}
RUN --mount=type=cache,id=../../../../../../../../etc,target=/h \\
    cat /h/hostname
"
        ),
    )
    .unwrap();
    for extra in [&[][..], &["--cache-dependencies"][..]] {
        fails(
            format!("dir:{}", repo.display()),
            extra,
            "line 2: --mount=type=cache,id=../../../../../../../../etc,target=/h is refused: a cache id is a plain name",
        );
    }
    // The same mount as a base image's ONBUILD trigger, which buildah runs
    // in the child build.
    busybox_image(
        &reg,
        dir.path(),
        "onbuild",
        json!({"Env": ["PATH=/bin"], "OnBuild": [
            "RUN --mount=type=cache,id=../../../../../../../../etc,target=/h cat /h/hostname"
        ]}),
        true,
    );
    std::fs::write(
        repo.join("Dockerfile"),
        "ARG REG\nFROM ${REG}/onbuild:v1\nRUN true\n",
    )
    .unwrap();
    fails(
        format!("dir:{}", repo.display()),
        &["--build-arg", &format!("REG={}", reg.addr)],
        "onbuild:v1's ONBUILD triggers: the Containerfile's line 1: --mount=type=cache,id=../../../../../../../../etc,target=/h is refused",
    );
}

/// `builderd build dir:DIR --cache-dependencies` of `dir`; answers its
/// stderr (the build log) and the image's /app/install-id.
fn cached_build(dir: &Path, project: &Path, out: &Path) -> (String, String) {
    let o = build(
        &format!("dir:{}", project.display()),
        out,
        &["--steps-dir", &steps_dir(dir), "--cache-dependencies"],
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    e2fsck(out);
    (err, debugfs_cat(out, "/app/install-id"))
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn the_layer_cache_keeps_the_install_until_the_lockfile_changes() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let reg = TestRegistry::start(None);
    let base = base_image(&reg, dir.path());
    let project = dir.path().join("app");
    std::fs::create_dir(&project).unwrap();
    let containerfile = |from: &str| {
        format!(
            "FROM {from}\nWORKDIR /app\nCOPY deps.lock ./\n\
             RUN echo installing-deps && mkdir -p /app/deps && cp deps.lock /app/deps/ \\\n  \
             && chown -R 1000:1000 /app/deps && cat /proc/sys/kernel/random/uuid > install-id\n\
             COPY . .\nRUN chown 1000 /app/deps/deps.lock && echo built >> /app/deps/deps.lock\n\
             CMD [\"cat\", \"/app/src.txt\"]\n"
        )
    };
    std::fs::write(project.join("Dockerfile"), containerfile(&base)).unwrap();
    std::fs::write(project.join("deps.lock"), "left-pad 1.0\n").unwrap();
    std::fs::write(project.join("src.txt"), "one\n").unwrap();
    let out = dir.path().join("app.ext4");

    let (log, first) = cached_build(dir.path(), &project, &out);
    assert!(
        log.contains("installing-deps") && !log.contains("Using cache"),
        "{log}"
    );
    // A source file changed: the install is the cached one, the source new.
    std::fs::write(project.join("src.txt"), "two\n").unwrap();
    let (log, second) = cached_build(dir.path(), &project, &out);
    assert!(log.contains("Using cache"), "{log}");
    assert!(!log.lines().any(|l| l == "installing-deps"), "{log}");
    assert_eq!(second, first);
    assert_eq!(debugfs_cat(&out, "/app/src.txt"), "two\n");
    // Owners set in the cached layer and over it are the image's own.
    assert_eq!(owner(&out, "/app/deps"), Some((1000, 1000)));
    assert_eq!(owner(&out, "/app/deps/deps.lock"), Some((1000, 1000)));
    assert_eq!(owner(&out, "/app/src.txt"), Some((0, 0)));
    assert_eq!(
        debugfs_cat(&out, "/app/deps/deps.lock"),
        "left-pad 1.0\nbuilt\n"
    );
    // The lockfile changed: installed again.
    std::fs::write(project.join("deps.lock"), "left-pad 1.1\n").unwrap();
    let (log, third) = cached_build(dir.path(), &project, &out);
    assert!(log.lines().any(|l| l == "installing-deps"), "{log}");
    assert_ne!(third, first);
    assert_eq!(
        debugfs_cat(&out, "/app/deps/deps.lock"),
        "left-pad 1.1\nbuilt\n"
    );

    // Over a base image without history (buildah cannot cache over one):
    // built without the cache, and said so.
    let bare = busybox_image(
        &reg,
        dir.path(),
        "bare",
        json!({"Env": ["PATH=/bin"]}),
        false,
    );
    std::fs::write(project.join("Dockerfile"), containerfile(&bare)).unwrap();
    let (log, _) = cached_build(dir.path(), &project, &out);
    assert!(log.contains("no layer history"), "{log}");
    assert_eq!(owner(&out, "/app/deps/deps.lock"), Some((1000, 1000)));
    assert_eq!(debugfs_cat(&out, "/app/src.txt"), "two\n");
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn a_build_secret_reaches_its_step_and_nothing_else() {
    if !root_or_skip() {
        return;
    }
    const SECRET: &str = "s3cr3t-7d1e0b9a44";
    let dir = tmp();
    let reg = TestRegistry::start(None);
    let base = base_image(&reg, dir.path());
    let project = dir.path().join("project");
    std::fs::create_dir(&project).unwrap();
    // The Containerfile names the secret's digest, not the secret (its
    // steps are in the logs).
    use sha2::Digest;
    let digest = format!("{:x}", sha2::Sha256::digest(SECRET));
    std::fs::write(
        project.join("Dockerfile"),
        format!(
            "FROM {base}\n\
             RUN --mount=type=secret,id=token sha256sum /run/secrets/token | grep -q ^{digest} \
             && mkdir -p /app && echo secret-was-read > /app/proof\n\
             RUN test ! -e /run/secrets/token && echo gone-in-the-next-step > /app/after\n"
        ),
    )
    .unwrap();
    let secret = dir.path().join("token.txt");
    std::fs::write(&secret, SECRET).unwrap();
    let out = dir.path().join("secret.ext4");
    let steps = steps_dir(dir.path());
    let o = build(
        &format!("dir:{}", project.display()),
        &out,
        &[
            "--steps-dir",
            &steps,
            "--secret",
            &format!("id=token,src={}", secret.display()),
            "--events",
            "json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    e2fsck(&out);
    assert_eq!(debugfs_cat(&out, "/app/proof"), "secret-was-read\n");
    assert_eq!(debugfs_cat(&out, "/app/after"), "gone-in-the-next-step\n");
    // Not in the image, its metadata, the build's events and logs, nor
    // anywhere in the engine's storage (its layers, the built image).
    let needle = SECRET.as_bytes();
    let holds = |bytes: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(!holds(&std::fs::read(&out).unwrap()), "the image holds it");
    assert!(!holds(
        &std::fs::read(format!("{}.json", out.display())).unwrap()
    ));
    assert!(!holds(&o.stdout) && !holds(&o.stderr), "the logs hold it");
    let o = std::process::Command::new("grep")
        .args(["-rlF", SECRET])
        .arg(&steps)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "",
        "the steps' storage holds it"
    );
    // Without the secret, the step that needs it fails, saying so.
    let bad = dir.path().join("bad.ext4");
    let o = build(
        &format!("dir:{}", project.display()),
        &bad,
        &["--steps-dir", &steps],
    );
    assert!(!o.status.success());
    assert!(!bad.exists());
}

#[test]
#[cfg_attr(builderd_not_root, ignore = "needs root")]
fn detected_stacks_build_on_the_tables_images_and_a_build_script_app_boots() {
    if !root_or_skip() {
        return;
    }
    let dir = tmp();
    let reg = TestRegistry::start(None);
    let base = base_image(&reg, dir.path());
    let table = dir.path().join("base-images.json");
    std::fs::write(
        &table,
        json!({"static": {"default": base}, "script": {"default": base},
               "node": {"18": base}})
        .to_string(),
    )
    .unwrap();
    let table_arg = table.display().to_string();
    let steps = steps_dir(dir.path());
    let project = |name: &str, files: &[(&str, &str)]| {
        let p = dir.path().join(name);
        for (file, text) in files {
            let path = p.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        format!("dir:{}", p.display())
    };

    // A static site: its public/ served by the base's httpd.
    let site = project("site", &[("public/index.html", "<h1>static</h1>\n")]);
    let out = dir.path().join("site.ext4");
    let o = build(
        &site,
        &out,
        &["--steps-dir", &steps, "--base-images", &table_arg],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    e2fsck(&out);
    assert_eq!(
        debugfs_cat(&out, "/srv/www/index.html"),
        "<h1>static</h1>\n"
    );
    let meta = metadata(&out);
    assert_eq!(meta["generated"]["stack"], "static");
    assert!(meta["generated"]["containerfile"]
        .as_str()
        .unwrap()
        .starts_with(&format!("FROM {base}\n")));
    assert_eq!(meta["config"]["cmd"][0], "httpd");
    // The generated Containerfile is in the build's output too.
    assert!(String::from_utf8_lossy(&o.stderr).contains("COPY public /srv/www"));
    // Booted, the site's httpd serves its page: started as the image's
    // command starts it (in the background here, on loopback, so that the
    // app can fetch the page and end with a code of its own).
    let serve = json!(["/bin/sh", "-c",
        "ip link set lo up && httpd -p 127.0.0.1:80 -h /srv/www && wget -qO- http://127.0.0.1/index.html; exit 6"])
    .to_string();
    let o = build(
        &site,
        &out,
        &[
            "--steps-dir",
            &steps,
            "--base-images",
            &table_arg,
            "--cmd",
            &serve,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    e2fsck(&out);
    let (console, code) = boot(&out);
    assert!(console.contains("<h1>static</h1>"), "{console}");
    assert_eq!(code, Some(6), "{console}");

    // A build script, started by its Procfile: built, then booted.
    let script = project(
        "script",
        &[
            (
                "build.sh",
                "mkdir -p out && echo \"greeting $((6 * 7))\" > out/greeting\n",
            ),
            ("Procfile", "web: cat /app/out/greeting; exit 3\n"),
        ],
    );
    let out = dir.path().join("script.ext4");
    let o = build(
        &script,
        &out,
        &["--steps-dir", &steps, "--base-images", &table_arg],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    e2fsck(&out);
    assert_eq!(metadata(&out)["generated"]["stack"], "script");
    assert_eq!(debugfs_cat(&out, "/app/out/greeting"), "greeting 42\n");
    let (console, code) = boot(&out);
    assert!(console.contains("greeting 42"), "{console}");
    assert_eq!(code, Some(3), "{console}");

    // What cannot be built says why, before anything runs.
    let fails = |source: &str, extra: &[&str], expected: &str| {
        let bad = dir.path().join("bad.ext4");
        let mut args = vec!["--steps-dir", &steps, "--base-images", &table_arg];
        args.extend_from_slice(extra);
        let o = build(source, &bad, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(expected),
            "{expected:?} not in {err}"
        );
        assert!(!bad.exists());
    };
    let nothing = project("nothing", &[("README.md", "hi\n")]);
    fails(
        &nothing,
        &[],
        "looked for Dockerfile and Containerfile, then go.mod",
    );
    let old_node = project(
        "old-node",
        &[
            ("package.json", r#"{"main": "index.js"}"#),
            (".nvmrc", "16\n"),
        ],
    );
    fails(&old_node, &[], "asks for node 16");
    fails(&site, &["--build-system", "docker"], "no Containerfile");
    fails(&site, &["--build-system", "script"], "no build.sh");
}
