//! What an archive's files need before they run (the seed's
//! `archive_strategy`): the runtime they run on (`runtime` and `version`,
//! or found from their files as a project's stack is), the dependencies to
//! install before the sources are copied (so that layer is reused while the
//! dependency files stay the same), the build to run (`build_script`, else
//! a `build.sh`, `package.json`'s build script or a Makefile), how the app
//! starts, and where its files go (`output_path`, its working directory).
//! With nothing to install and nothing to build, nothing runs: the files go
//! over the runtime's image as one more layer.

use std::path::Path;

use anyhow::Result;

use super::base_images::BaseImages;
use super::stack::{node_version, procfile_start, read, version_of};
use crate::error::SourceError;
use crate::request::ArchiveOptions;

/// Where the files go when the request does not say.
pub const DEFAULT_OUTPUT: &str = "/app";
/// Every name at the top of the files that `plan` reads or looks for, as a
/// file or (`node_modules`) a directory, besides a named build script or
/// dependency file, which make the build run anyway. A plan made from
/// these alone is the plan of the whole tree.
pub const LOOKS_AT: &[&str] = &[
    ".nvmrc",
    ".python-version",
    "GNUmakefile",
    "Makefile",
    "Pipfile",
    "Procfile",
    "app.py",
    "build.sh",
    "go.mod",
    "go.sum",
    "index.html",
    "index.js",
    "main.py",
    "makefile",
    "node_modules",
    "npm-shrinkwrap.json",
    "package-lock.json",
    "package.json",
    "pnpm-lock.yaml",
    "pyproject.toml",
    "requirements.txt",
    "server.js",
    "uv.lock",
    "yarn.lock",
];
/// The longest build script given as a command.
const MAX_SCRIPT: usize = 4096;

/// The dependency files builderd knows how to install.
const KNOWN: &str = "package.json (npm, or yarn and pnpm by their lockfiles), requirements.txt \
                     (or any requirements*.txt) and go.mod";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The base-image table's stack.
    pub runtime: String,
    pub version: Option<String>,
    pub installs: Vec<Install>,
    /// The build's command, as arguments.
    pub build: Option<Vec<String>>,
    pub start: Option<Vec<String>>,
    /// An absolute, plain path.
    pub output_path: String,
}

/// A dependency install: the files it needs, copied first, then its command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Install {
    pub files: Vec<String>,
    pub command: String,
    pub kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Node,
    Python,
    Go,
}

impl Plan {
    /// Whether anything runs: without, the files are one more layer.
    pub fn runs(&self) -> bool {
        !self.installs.is_empty() || self.build.is_some()
    }

    /// The Containerfile that builds it on `image`.
    pub fn containerfile(&self, image: &str) -> String {
        let json = |argv: &[String]| serde_json::to_string(argv).expect("strings");
        let mut text = format!("FROM {image}\n");
        let kinds: Vec<Kind> = self.installs.iter().map(|i| i.kind).collect();
        if kinds.contains(&Kind::Node) {
            text += "ARG NPM_CONFIG_REGISTRY\n";
        }
        if kinds.contains(&Kind::Python) {
            text += "ARG PIP_INDEX_URL\nARG PIP_EXTRA_INDEX_URL\nARG PIP_TRUSTED_HOST\n";
        }
        if kinds.contains(&Kind::Go) {
            text += "ARG GOPROXY\nARG GONOSUMDB\nARG GOPRIVATE\n";
        }
        text += &format!("WORKDIR {}\n", self.output_path);
        if kinds.contains(&Kind::Python) {
            text += "ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1\n";
        }
        if let Some(start) = &self.start {
            text += &format!("CMD {}\n", json(start));
        }
        for install in &self.installs {
            text += &format!(
                "COPY {} ./\nRUN {}\n",
                install.files.join(" "),
                install.command
            );
        }
        text += "COPY . .\n";
        if let Some(build) = &self.build {
            text += &format!("RUN {}\n", json(build));
        }
        text
    }

    /// The runtime's image, from the table.
    pub fn image(&self, bases: &BaseImages) -> Result<String> {
        bases.image(&self.runtime, "run", self.version.as_deref())
    }
}

/// The plan for the archive's files at `dir`.
pub fn plan(dir: &Path, opts: &ArchiveOptions) -> Result<Plan> {
    let has = |name: &str| dir.join(name).is_file();
    let package = match has("package.json") {
        true => Some(
            serde_json::from_str::<serde_json::Value>(&read(dir, "package.json")?)
                .map_err(|e| SourceError(format!("package.json is not JSON: {e}")))?,
        ),
        false => None,
    };
    let found_runtime = if has("go.mod") {
        Some("go")
    } else if ["requirements.txt", "pyproject.toml", "Pipfile", "uv.lock"]
        .iter()
        .any(|f| has(f))
    {
        Some("python")
    } else if package.is_some() {
        Some("node")
    } else if has("index.html") {
        Some("static")
    } else {
        None
    };
    let runtime = match (&opts.runtime, found_runtime) {
        (Some(r), _) => checked_word(r, "runtime")?,
        (None, Some(r)) => r.to_string(),
        (None, None) => {
            return Err(SourceError(
                "nothing says which runtime the archive's files run on: give one (runtime, \
                 --runtime), or a base image; looked for go.mod, requirements.txt, \
                 pyproject.toml, Pipfile, package.json and index.html"
                    .into(),
            )
            .into())
        }
    };
    let version = match &opts.version {
        Some(v) => Some(checked_word(v, "version")?),
        None => found_version(dir, &runtime, package.as_ref())?,
    };
    let output_path = output_path(opts.output_path.as_deref())?;
    let installs = match opts.dependencies.is_empty() {
        true => found_installs(dir, package.as_ref())?,
        false => opts
            .dependencies
            .iter()
            .map(|f| named_install(dir, f))
            .collect::<Result<_>>()?,
    };
    let build = match &opts.build_script {
        Some(script) => Some(build_script(dir, script)?),
        None => found_build(dir, package.as_ref()),
    };
    let start = match procfile_start(dir)? {
        Some(p) => Some(p),
        None => found_start(dir, &runtime, package.as_ref(), &output_path),
    };
    Ok(Plan {
        runtime,
        version,
        installs,
        build,
        start,
        output_path,
    })
}

fn found_version(
    dir: &Path,
    runtime: &str,
    package: Option<&serde_json::Value>,
) -> Result<Option<String>> {
    let has = |name: &str| dir.join(name).is_file();
    let v = match runtime {
        "node" if has(".nvmrc") => Some(node_version(&read(dir, ".nvmrc")?)),
        "node" => package
            .and_then(|p| p["engines"]["node"].as_str())
            .map(node_version),
        "python" if has(".python-version") => read(dir, ".python-version")?
            .lines()
            .next()
            .map(|l| version_of(l.trim())),
        "go" => read(dir, "go.mod")?
            .lines()
            .find_map(|l| Some(version_of(l.trim().strip_prefix("go ")?.trim()))),
        _ => None,
    };
    Ok(v.filter(|v| !v.is_empty()))
}

/// What the files found ask to have installed.
fn found_installs(dir: &Path, package: Option<&serde_json::Value>) -> Result<Vec<Install>> {
    let mut installs = Vec::new();
    if let Some(package) = package {
        let wants = ["dependencies", "devDependencies"]
            .iter()
            .any(|k| package[k].as_object().is_some_and(|o| !o.is_empty()));
        // node_modules shipped in the archive: installed already.
        if wants && !dir.join("node_modules").is_dir() {
            installs.push(node_install(dir));
        }
    }
    if dir.join("requirements.txt").is_file() {
        let text = read(dir, "requirements.txt")?;
        if text
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim().starts_with('#'))
        {
            installs.push(python_install("requirements.txt"));
        }
    }
    if dir.join("go.mod").is_file() && dir.join("go.sum").is_file() {
        installs.push(go_install());
    }
    Ok(installs)
}

/// The install a dependency file the request names calls for.
fn named_install(dir: &Path, file: &str) -> Result<Install> {
    let name = checked_file(dir, file, "dependencies")?;
    let base = name.rsplit('/').next().unwrap_or(&name);
    Ok(match base {
        "package.json"
        | "package-lock.json"
        | "npm-shrinkwrap.json"
        | "yarn.lock"
        | "pnpm-lock.yaml"
            if !name.contains('/') =>
        {
            node_install(dir)
        }
        "go.mod" | "go.sum" if !name.contains('/') => go_install(),
        _ if base.starts_with("requirements") && base.ends_with(".txt") => python_install(&name),
        _ => {
            return Err(SourceError(format!(
                "dependencies: builderd does not know how to install {file:?}: it installs \
                 {KNOWN} (at the archive's top), or give a build_script"
            ))
            .into())
        }
    })
}

fn node_install(dir: &Path) -> Install {
    let has = |name: &str| dir.join(name).is_file();
    let (files, command) = if has("pnpm-lock.yaml") {
        (
            "package.json pnpm-lock.yaml",
            "corepack enable && pnpm install --frozen-lockfile",
        )
    } else if has("yarn.lock") {
        ("package.json yarn.lock", "yarn install --frozen-lockfile")
    } else if has("package-lock.json") || has("npm-shrinkwrap.json") {
        (
            "package.json package-lock.json* npm-shrinkwrap.json*",
            "npm ci",
        )
    } else {
        ("package.json", "npm install")
    };
    Install {
        files: files.split(' ').map(str::to_string).collect(),
        command: command.into(),
        kind: Kind::Node,
    }
}

fn python_install(file: &str) -> Install {
    // COPY puts it in the working directory under its own name.
    let name = file.rsplit('/').next().unwrap_or(file);
    Install {
        files: vec![file.to_string()],
        command: format!("python3 -m venv /opt/venv && /opt/venv/bin/pip install -r {name}"),
        kind: Kind::Python,
    }
}

fn go_install() -> Install {
    Install {
        files: vec!["go.mod".into(), "go.sum".into()],
        command: "go mod download".into(),
        kind: Kind::Go,
    }
}

/// `build_script`: a file of the archive, run with `sh`, or else a command
/// for `sh -c`.
fn build_script(dir: &Path, script: &str) -> Result<Vec<String>> {
    let script = script.trim();
    if script.is_empty() || script.len() > MAX_SCRIPT || script.chars().any(char::is_control) {
        return Err(SourceError(format!(
            "build_script: give a file of the archive or one line of shell, at most \
             {MAX_SCRIPT} bytes, without control characters"
        ))
        .into());
    }
    if let Ok(file) = checked_file(dir, script, "build_script") {
        return Ok(vec!["/bin/sh".into(), format!("./{file}")]);
    }
    Ok(vec!["/bin/sh".into(), "-c".into(), script.to_string()])
}

fn found_build(dir: &Path, package: Option<&serde_json::Value>) -> Option<Vec<String>> {
    let argv = |a: &[&str]| Some(a.iter().map(|s| s.to_string()).collect());
    if dir.join("build.sh").is_file() {
        return argv(&["/bin/sh", "./build.sh"]);
    }
    if package.is_some_and(|p| p["scripts"]["build"].is_string()) {
        return argv(&["npm", "run", "build"]);
    }
    if ["Makefile", "makefile", "GNUmakefile"]
        .iter()
        .any(|m| dir.join(m).is_file())
    {
        return argv(&["make"]);
    }
    None
}

fn found_start(
    dir: &Path,
    runtime: &str,
    package: Option<&serde_json::Value>,
    output: &str,
) -> Option<Vec<String>> {
    let has = |name: &str| dir.join(name).is_file();
    let argv = |a: &[&str]| Some(a.iter().map(|s| s.to_string()).collect());
    match runtime {
        "node" => match package {
            Some(p) if p["scripts"]["start"].is_string() => argv(&["npm", "start"]),
            Some(p) if p["main"].is_string() => argv(&["node", p["main"].as_str()?]),
            _ if has("index.js") => argv(&["node", "index.js"]),
            _ if has("server.js") => argv(&["node", "server.js"]),
            _ => None,
        },
        "python" => ["main.py", "app.py"]
            .iter()
            .find(|f| has(f))
            .and_then(|f| argv(&["python3", f])),
        "static" => argv(&["httpd", "-f", "-p", "80", "-h", output]),
        _ => None,
    }
}

/// `output_path` as an absolute, plain path.
fn output_path(given: Option<&str>) -> Result<String> {
    let path = given.unwrap_or(DEFAULT_OUTPUT).trim_end_matches('/');
    let plain = path.starts_with('/')
        && path.len() <= 256
        && path.split('/').skip(1).all(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-+@".contains(&b))
        });
    if !plain {
        return Err(SourceError(format!(
            "output_path {:?}: give an absolute directory below / such as /app (letters, \
             digits and ._-+@ in its names)",
            given.unwrap_or_default()
        ))
        .into());
    }
    Ok(path.to_string())
}

/// A runtime or version name: a word of the base-image table.
fn checked_word(word: &str, what: &str) -> Result<String> {
    let fine = !word.is_empty()
        && word.len() <= 64
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !fine {
        return Err(SourceError(format!(
            "{what} {word:?}: give a name of letters, digits and ._- (at most 64)"
        ))
        .into());
    }
    Ok(word.to_string())
}

/// `name`, a plain relative path of a file in `dir` (links not followed out).
fn checked_file(dir: &Path, name: &str, what: &str) -> Result<String> {
    let plain = !name.is_empty()
        && name.len() <= 256
        && name.split('/').all(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-+@".contains(&b))
        });
    let inside = plain
        && dir
            .join(name)
            .canonicalize()
            .is_ok_and(|p| p.starts_with(dir) && p.is_file());
    if !inside {
        return Err(SourceError(format!(
            "{what}: {name:?} is not a file of the archive (a relative path of letters, digits \
             and ._-+@)"
        ))
        .into());
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in list {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn plan_of(list: &[(&str, &str)], opts: ArchiveOptions) -> Result<Plan> {
        let dir = files(list);
        plan(&dir.path().canonicalize().unwrap(), &opts)
    }

    /// The tree at `dir` cut to what `LOOKS_AT` names at its top (what
    /// `builderd_archive::top` gives), in a new directory.
    fn cut(dir: &Path) -> tempfile::TempDir {
        let out = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            if !LOOKS_AT.contains(&name.as_str()) {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                std::fs::create_dir(out.path().join(&name)).unwrap();
            } else {
                std::fs::copy(e.path(), out.path().join(&name)).unwrap();
            }
        }
        out
    }

    #[test]
    fn a_plan_from_what_looks_at_names_is_the_whole_trees_plan() {
        let trees: &[&[(&str, &str)]] = &[
            &[("index.html", "<p>hi</p>"), ("css/a.css", "p {}")],
            &[
                (
                    "package.json",
                    r#"{"main": "a.js", "engines": {"node": "20"}}"#,
                ),
                ("node_modules/x/index.js", ""),
                ("a.js", ""),
            ],
            &[
                (
                    "package.json",
                    r#"{"dependencies": {"x": "1"}, "scripts": {"build": "b"}}"#,
                ),
                ("yarn.lock", ""),
            ],
            &[
                ("server.js", ""),
                ("package.json", "{}"),
                (".nvmrc", "v18.2\n"),
            ],
            &[
                ("requirements.txt", "flask\n"),
                (".python-version", "3.11\n"),
                ("app.py", ""),
            ],
            &[
                ("pyproject.toml", ""),
                ("main.py", ""),
                ("Procfile", "web: python3 main.py\n"),
            ],
            &[
                ("go.mod", "module x\n\ngo 1.22\n"),
                ("go.sum", ""),
                ("main.go", ""),
            ],
            &[("index.html", ""), ("build.sh", "echo\n")],
            &[("index.html", ""), ("GNUmakefile", "all:\n")],
            &[("Pipfile", ""), ("uv.lock", ""), ("src/app.py", "")],
        ];
        for list in trees {
            let whole = files(list);
            let part = cut(whole.path());
            let opts = ArchiveOptions::default();
            let (a, b) = (
                plan(&whole.path().canonicalize().unwrap(), &opts),
                plan(&part.path().canonicalize().unwrap(), &opts),
            );
            assert_eq!(
                a.as_ref().map_err(|e| e.to_string()),
                b.as_ref().map_err(|e| e.to_string()),
                "{list:?}"
            );
        }
    }

    #[test]
    fn a_static_site_runs_nothing_and_a_node_app_installs_then_builds() {
        let site = plan_of(&[("index.html", "<p>hi</p>")], ArchiveOptions::default()).unwrap();
        assert!(!site.runs());
        assert_eq!(site.runtime, "static");
        assert_eq!(site.start.unwrap().last().unwrap(), "/app");
        let node = plan_of(
            &[
                (
                    "package.json",
                    r#"{"dependencies": {"x": "1"}, "scripts": {"build": "tsc", "start": "node s.js"}, "engines": {"node": ">=18"}}"#,
                ),
                ("package-lock.json", "{}"),
            ],
            ArchiveOptions::default(),
        )
        .unwrap();
        assert!(node.runs());
        assert_eq!(node.version.as_deref(), Some("18"));
        let text = node.containerfile("reg/node:18");
        let at = |s: &str| {
            text.find(s)
                .unwrap_or_else(|| panic!("{s:?} not in\n{text}"))
        };
        assert!(at("RUN npm ci") < at("COPY . .\n"));
        assert!(at("COPY . .\n") < at("RUN [\"npm\",\"run\",\"build\"]"));
        assert!(at("WORKDIR /app") < at("CMD [\"npm\",\"start\"]"));
        // A prebuilt app: node_modules shipped, nothing to build.
        let prebuilt = plan_of(
            &[
                (
                    "package.json",
                    r#"{"dependencies": {"x": "1"}, "main": "a.js"}"#,
                ),
                ("node_modules/x/index.js", ""),
            ],
            ArchiveOptions {
                output_path: Some("/srv/app/".into()),
                ..ArchiveOptions::default()
            },
        )
        .unwrap();
        assert!(!prebuilt.runs());
        assert_eq!(prebuilt.output_path, "/srv/app");
        assert_eq!(prebuilt.start, Some(vec!["node".into(), "a.js".into()]));
    }

    #[test]
    fn what_the_request_names_is_checked() {
        let py = plan_of(
            &[
                ("requirements.txt", "flask\n"),
                ("app.py", ""),
                ("tools/build.sh", ""),
            ],
            ArchiveOptions {
                runtime: Some("python".into()),
                version: Some("3.11".into()),
                build_script: Some("tools/build.sh".into()),
                ..ArchiveOptions::default()
            },
        )
        .unwrap();
        assert_eq!(
            py.build,
            Some(vec!["/bin/sh".into(), "./tools/build.sh".into()])
        );
        let text = py.containerfile("py");
        assert!(text.contains("ARG PIP_INDEX_URL\n"), "{text}");
        assert!(
            text.contains("/opt/venv/bin/pip install -r requirements.txt"),
            "{text}"
        );
        let cmd = plan_of(
            &[("a.txt", "")],
            ArchiveOptions {
                runtime: Some("script".into()),
                build_script: Some("echo \"hi\" > out".into()),
                ..ArchiveOptions::default()
            },
        )
        .unwrap();
        // A command is one JSON argument: it cannot start an instruction.
        assert!(cmd
            .containerfile("x")
            .ends_with("RUN [\"/bin/sh\",\"-c\",\"echo \\\"hi\\\" > out\"]\n"));
        for bad in [
            ArchiveOptions {
                runtime: Some("node\nRUN x".into()),
                ..ArchiveOptions::default()
            },
            ArchiveOptions {
                runtime: Some("script".into()),
                output_path: Some("/app/../etc".into()),
                ..ArchiveOptions::default()
            },
            ArchiveOptions {
                runtime: Some("script".into()),
                build_script: Some("a\nFROM evil".into()),
                ..ArchiveOptions::default()
            },
            ArchiveOptions {
                runtime: Some("script".into()),
                dependencies: vec!["../package.json".into()],
                ..ArchiveOptions::default()
            },
            ArchiveOptions {
                runtime: Some("script".into()),
                dependencies: vec!["a.txt".into()],
                ..ArchiveOptions::default()
            },
        ] {
            assert!(plan_of(&[("a.txt", "")], bad.clone()).is_err(), "{bad:?}");
        }
        let e = plan_of(&[("a.txt", "")], ArchiveOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("which runtime"), "{e}");
    }
}
