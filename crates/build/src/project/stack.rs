//! A project without a Containerfile: its stack found by the files the
//! common detectors key on (Railpack's order: Go, Python, Node, then a
//! static site, then a build script), its runtime's version read from the
//! project's own files, and the Containerfile builderd generates for it
//! (multi-stage where the build's tools need not ship; dependency
//! installs before the sources are copied, so their layer is reused; the
//! last stage's settings before its copies, so that with the layer cache
//! a source change commits as few new layers as it can;
//! `RUN --mount=type=cache` for the package manager's downloads when asked;
//! the package index from the usual variables, given as build args:
//! `NPM_CONFIG_REGISTRY`, `PIP_INDEX_URL`, `GOPROXY` and their kin).

use std::path::Path;

use anyhow::{Context, Result};

use super::base_images::BaseImages;
use crate::error::SourceError;

/// What the detection looks for, in order, for its error.
pub const LOOKED_FOR: &str = "go.mod (Go); requirements.txt, pyproject.toml, Pipfile or uv.lock \
     (Python); package.json (Node); index.html or public/ (a static site); build.sh (a build script)";

/// Most bytes of a project file read to decide (package.json, go.mod…).
const MAX_READ: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stack {
    Go {
        version: Option<String>,
    },
    Python {
        installer: PythonInstaller,
        version: Option<String>,
        start: Vec<String>,
    },
    Node {
        manager: NodeManager,
        version: Option<String>,
        build: bool,
        start: Vec<String>,
    },
    /// Files served as they are, from `dir` of the project.
    Static {
        dir: String,
    },
    /// `build.sh` makes the app; the start command from a Procfile, if any.
    Script {
        start: Option<Vec<String>>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PythonInstaller {
    Requirements,
    Pyproject,
    Pipfile,
    Uv,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeManager {
    Npm { locked: bool },
    Yarn,
    Pnpm,
}

impl Stack {
    /// The base-image table's name for it.
    pub fn name(&self) -> &'static str {
        match self {
            Stack::Go { .. } => "go",
            Stack::Python { .. } => "python",
            Stack::Node { .. } => "node",
            Stack::Static { .. } => "static",
            Stack::Script { .. } => "script",
        }
    }

    pub fn version(&self) -> Option<&str> {
        match self {
            Stack::Go { version } | Stack::Python { version, .. } | Stack::Node { version, .. } => {
                version.as_deref()
            }
            _ => None,
        }
    }
}

/// How the stack is chosen: by its files (`Auto`), or only a build script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Auto,
    Script,
}

/// The stack of the project at `dir`.
pub fn detect(dir: &Path, want: Want) -> Result<Stack> {
    let has = |name: &str| dir.join(name).is_file();
    let procfile = procfile_start(dir)?;
    if want == Want::Script {
        if !has("build.sh") {
            return Err(SourceError(format!(
                "the build system is script, but {} has no build.sh",
                dir.display()
            ))
            .into());
        }
        return Ok(Stack::Script { start: procfile });
    }
    if has("go.mod") {
        let go_mod = read(dir, "go.mod")?;
        let version = go_mod.lines().find_map(|l| {
            let v = l.trim().strip_prefix("go ")?.trim();
            Some(version_of(v))
        });
        return Ok(Stack::Go { version });
    }
    let python = [
        ("uv.lock", PythonInstaller::Uv),
        ("Pipfile", PythonInstaller::Pipfile),
        ("pyproject.toml", PythonInstaller::Pyproject),
        ("requirements.txt", PythonInstaller::Requirements),
    ];
    if let Some((_, installer)) = python.iter().find(|(f, _)| has(f)) {
        let version = has(".python-version")
            .then(|| read(dir, ".python-version"))
            .transpose()?
            .and_then(|v| v.lines().next().map(|l| version_of(l.trim())))
            .filter(|v| !v.is_empty());
        let start = match procfile {
            Some(p) => p,
            None => ["main.py", "app.py"]
                .iter()
                .find(|f| has(f))
                .map(|f| vec!["python".to_string(), f.to_string()])
                .ok_or_else(|| {
                    SourceError(
                        "a Python project, but nothing says how it starts: looked for a \
                         Procfile's web: line, main.py and app.py"
                            .into(),
                    )
                })?,
        };
        return Ok(Stack::Python {
            installer: *installer,
            version,
            start,
        });
    }
    if has("package.json") {
        let package: serde_json::Value = serde_json::from_str(&read(dir, "package.json")?)
            .map_err(|e| SourceError(format!("package.json is not JSON: {e}")))?;
        let manager = if has("pnpm-lock.yaml") {
            NodeManager::Pnpm
        } else if has("yarn.lock") {
            NodeManager::Yarn
        } else {
            NodeManager::Npm {
                locked: has("package-lock.json") || has("npm-shrinkwrap.json"),
            }
        };
        let version = match has(".nvmrc") {
            true => Some(read(dir, ".nvmrc")?),
            false => package["engines"]["node"].as_str().map(str::to_string),
        }
        .map(|v| node_version(&v))
        .filter(|v| !v.is_empty());
        let scripts = &package["scripts"];
        let start = match procfile {
            Some(p) => p,
            None if scripts["start"].is_string() => vec!["npm".into(), "start".into()],
            None => match package["main"].as_str() {
                Some(main) => vec!["node".into(), main.to_string()],
                None if has("index.js") => vec!["node".into(), "index.js".into()],
                None => {
                    return Err(SourceError(
                        "a Node project, but nothing says how it starts: looked for a \
                         Procfile's web: line, package.json's scripts.start and main, and \
                         index.js"
                            .into(),
                    )
                    .into())
                }
            },
        };
        return Ok(Stack::Node {
            manager,
            version,
            build: scripts["build"].is_string(),
            start,
        });
    }
    if has("index.html") {
        return Ok(Stack::Static { dir: ".".into() });
    }
    if dir.join("public").is_dir() && dir.join("public/index.html").is_file() {
        return Ok(Stack::Static {
            dir: "public".into(),
        });
    }
    if has("build.sh") {
        return Ok(Stack::Script { start: procfile });
    }
    Err(SourceError(format!(
        "nothing to build {} with: looked for Dockerfile and Containerfile, then {LOOKED_FOR}",
        dir.display()
    ))
    .into())
}

/// The Containerfile builderd builds `stack` with.
pub fn containerfile(stack: &Stack, bases: &BaseImages, cache: bool) -> Result<String> {
    let base = |role: &str| bases.image(stack.name(), role, stack.version());
    let cached = |target: &str| match cache {
        true => format!("--mount=type=cache,target={target} "),
        false => String::new(),
    };
    let cmd = |argv: &[String]| serde_json::to_string(argv).expect("strings");
    let text = match stack {
        Stack::Go { .. } => format!(
            "FROM {build} AS build\n\
             ARG GOPROXY\n\
             ARG GONOSUMDB\n\
             ARG GOPRIVATE\n\
             WORKDIR /src\n\
             COPY go.mod go.sum* ./\n\
             RUN {mod_cache}go mod download\n\
             COPY . .\n\
             RUN {build_cache}CGO_ENABLED=0 go build -trimpath -o /out/app .\n\
             \n\
             FROM {run}\n\
             WORKDIR /app\n\
             CMD [\"/app/app\"]\n\
             COPY --from=build /out/app /app/app\n",
            build = base("build")?,
            run = base("run")?,
            mod_cache = cached("/root/go/pkg/mod"),
            build_cache = cached("/root/.cache/go-build"),
        ),
        Stack::Python {
            installer, start, ..
        } => {
            let (files, install) = match installer {
                PythonInstaller::Requirements => (
                    "requirements.txt",
                    "/opt/venv/bin/pip install -r requirements.txt",
                ),
                PythonInstaller::Pyproject => ("pyproject.toml", "/opt/venv/bin/pip install ."),
                PythonInstaller::Pipfile => (
                    "Pipfile Pipfile.lock*",
                    "/opt/venv/bin/pip install pipenv && PIPENV_VENV_IN_PROJECT=0 \
                     VIRTUAL_ENV=/opt/venv /opt/venv/bin/pipenv sync --system",
                ),
                PythonInstaller::Uv => (
                    "pyproject.toml uv.lock",
                    "/opt/venv/bin/pip install uv && UV_PROJECT_ENVIRONMENT=/opt/venv \
                     /opt/venv/bin/uv sync --frozen --no-install-project",
                ),
            };
            // pyproject's install needs the sources; the others do not.
            let sources = match installer {
                PythonInstaller::Pyproject => "COPY . .\n",
                _ => "",
            };
            format!(
                "FROM {build} AS build\n\
                 ARG PIP_INDEX_URL\n\
                 ARG PIP_EXTRA_INDEX_URL\n\
                 ARG PIP_TRUSTED_HOST\n\
                 WORKDIR /app\n\
                 RUN python3 -m venv /opt/venv\n\
                 COPY {files} ./\n\
                 {sources}\
                 RUN {pip_cache}{install}\n\
                 \n\
                 FROM {run}\n\
                 WORKDIR /app\n\
                 ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1\n\
                 CMD {cmd}\n\
                 COPY --from=build /opt/venv /opt/venv\n\
                 COPY . .\n",
                build = base("build")?,
                run = base("run")?,
                pip_cache = cached("/root/.cache/pip"),
                cmd = cmd(start),
            )
        }
        Stack::Node {
            manager,
            build,
            start,
            ..
        } => {
            let (lockfiles, install, prune, cache_dir) = match manager {
                NodeManager::Npm { locked: true } => (
                    "package.json package-lock.json* npm-shrinkwrap.json*",
                    "npm ci",
                    "npm prune --omit=dev",
                    "/root/.npm",
                ),
                NodeManager::Npm { locked: false } => (
                    "package.json",
                    "npm install",
                    "npm prune --omit=dev",
                    "/root/.npm",
                ),
                NodeManager::Yarn => (
                    "package.json yarn.lock",
                    "yarn install --frozen-lockfile",
                    "yarn install --frozen-lockfile --production",
                    "/usr/local/share/.cache/yarn",
                ),
                NodeManager::Pnpm => (
                    "package.json pnpm-lock.yaml",
                    "corepack enable && pnpm install --frozen-lockfile",
                    "pnpm prune --prod",
                    "/root/.local/share/pnpm/store",
                ),
            };
            // Without a build script the last stage takes the installed
            // dependencies from a stage that ends with their install (an
            // image the layer cache keeps) and the sources straight from
            // the context; a build script needs its stage to hold both.
            let stages = match build {
                true => format!(
                    "RUN {cache}{install}\n\
                     COPY . .\n\
                     RUN npm run build\n\
                     RUN {prune}\n\
                     \n\
                     FROM {run}\n\
                     WORKDIR /app\n\
                     ENV NODE_ENV=production\n\
                     CMD {cmd}\n\
                     COPY --from=build /app /app\n",
                    cache = cached(cache_dir),
                    run = base("run")?,
                    cmd = cmd(start),
                ),
                false => format!(
                    "RUN {cache}{install} && {prune}\n\
                     \n\
                     FROM {run}\n\
                     WORKDIR /app\n\
                     ENV NODE_ENV=production\n\
                     CMD {cmd}\n\
                     COPY --from=build /app /app\n\
                     COPY . .\n",
                    cache = cached(cache_dir),
                    run = base("run")?,
                    cmd = cmd(start),
                ),
            };
            format!(
                "FROM {build_base} AS build\n\
                 ARG NPM_CONFIG_REGISTRY\n\
                 WORKDIR /app\n\
                 COPY {lockfiles} ./\n\
                 {stages}",
                build_base = base("build")?,
            )
        }
        Stack::Static { dir } => format!(
            "FROM {run}\n\
             CMD [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/srv/www\"]\n\
             COPY {dir} /srv/www\n",
            run = base("run")?,
            dir = if dir == "." { "." } else { dir.as_str() },
        ),
        Stack::Script { start } => {
            let cmd = match start {
                Some(argv) => format!("CMD {}\n", cmd(argv)),
                None => String::new(),
            };
            format!(
                "FROM {run}\n\
                 WORKDIR /app\n\
                 {cmd}\
                 COPY . .\n\
                 RUN sh ./build.sh\n",
                run = base("run")?,
            )
        }
    };
    Ok(text)
}

/// A Procfile's `web:` line (else its first), as a shell command.
pub(super) fn procfile_start(dir: &Path) -> Result<Option<Vec<String>>> {
    if !dir.join("Procfile").is_file() {
        return Ok(None);
    }
    let text = read(dir, "Procfile")?;
    let entries: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let web = entries
        .iter()
        .find(|(k, _)| *k == "web")
        .or(entries.first());
    Ok(web.map(|(_, command)| vec!["/bin/sh".into(), "-c".into(), command.to_string()]))
}

pub(super) fn read(dir: &Path, name: &str) -> Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(dir.join(name))
        .with_context(|| format!("reading the project's {name}"))?
        .take(MAX_READ)
        .read_to_string(&mut text)
        .with_context(|| format!("reading the project's {name}"))?;
    Ok(text)
}

/// `1.22.3` → `1.22`; `3.11` stays.
pub(super) fn version_of(v: &str) -> String {
    let parts: Vec<&str> = v.split('.').take(2).collect();
    parts.join(".")
}

/// What `.nvmrc` or `engines.node` name, as a major version: `v18.17.0`,
/// `>=18`, `^20.1`, `lts/hydrogen` (left as written: the table may name it).
pub(super) fn node_version(v: &str) -> String {
    let v = v.trim().trim_start_matches(['v', '>', '=', '^', '~', ' ']);
    match v.split(['.', ' ', '<', '|']).next() {
        Some(major) if major.bytes().all(|b| b.is_ascii_digit()) => major.to_string(),
        _ => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn stack(files: &[(&str, &str)]) -> Result<Stack> {
        detect(project(files).path(), Want::Auto)
    }

    #[test]
    fn stacks_are_found_in_order_with_their_versions() {
        assert_eq!(
            stack(&[
                ("go.mod", "module x\n\ngo 1.22.3\n"),
                ("package.json", "{}")
            ])
            .unwrap(),
            Stack::Go {
                version: Some("1.22".into())
            }
        );
        assert_eq!(
            stack(&[
                ("requirements.txt", "flask\n"),
                (".python-version", "3.11.4\n"),
                ("app.py", "")
            ])
            .unwrap(),
            Stack::Python {
                installer: PythonInstaller::Requirements,
                version: Some("3.11".into()),
                start: vec!["python".into(), "app.py".into()]
            }
        );
        assert_eq!(
            stack(&[
                ("pyproject.toml", ""),
                ("uv.lock", ""),
                ("Procfile", "worker: x\nweb: gunicorn app:app\n")
            ])
            .unwrap(),
            Stack::Python {
                installer: PythonInstaller::Uv,
                version: None,
                start: vec!["/bin/sh".into(), "-c".into(), "gunicorn app:app".into()]
            }
        );
        assert_eq!(
            stack(&[
                (
                    "package.json",
                    r#"{"engines": {"node": ">=18.0"}, "scripts": {"start": "node s.js", "build": "tsc"}}"#
                ),
                ("package-lock.json", "{}")
            ])
            .unwrap(),
            Stack::Node {
                manager: NodeManager::Npm { locked: true },
                version: Some("18".into()),
                build: true,
                start: vec!["npm".into(), "start".into()]
            }
        );
        let node = stack(&[
            ("package.json", r#"{"main": "server.js"}"#),
            ("yarn.lock", ""),
            (".nvmrc", "v20.11.1\n"),
        ])
        .unwrap();
        assert_eq!(
            node,
            Stack::Node {
                manager: NodeManager::Yarn,
                version: Some("20".into()),
                build: false,
                start: vec!["node".into(), "server.js".into()]
            }
        );
        assert_eq!(
            stack(&[("public/index.html", "<p>hi</p>")]).unwrap(),
            Stack::Static {
                dir: "public".into()
            }
        );
        assert_eq!(
            stack(&[("build.sh", "make"), ("Procfile", "web: ./serve")]).unwrap(),
            Stack::Script {
                start: Some(vec!["/bin/sh".into(), "-c".into(), "./serve".into()])
            }
        );
    }

    #[test]
    fn what_cannot_be_built_says_what_was_looked_for() {
        let err = stack(&[("README.md", "hi")]).unwrap_err().to_string();
        for name in [
            "Dockerfile",
            "go.mod",
            "requirements.txt",
            "package.json",
            "index.html",
            "build.sh",
        ] {
            assert!(err.contains(name), "{name} not in {err}");
        }
        let err = stack(&[("package.json", "{}")]).unwrap_err().to_string();
        assert!(err.contains("scripts.start"), "{err}");
        let err = stack(&[("package.json", "{nope")]).unwrap_err().to_string();
        assert!(err.contains("not JSON"), "{err}");
        let err = detect(project(&[("index.html", "")]).path(), Want::Script)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no build.sh"), "{err}");
    }

    #[test]
    fn generated_containerfiles_install_dependencies_before_the_sources() {
        let bases = BaseImages::builtin();
        let node = Stack::Node {
            manager: NodeManager::Npm { locked: true },
            version: Some("18".into()),
            build: false,
            start: vec!["npm".into(), "start".into()],
        };
        let text = containerfile(&node, &bases, true).unwrap();
        let at = |s: &str| {
            text.find(s)
                .unwrap_or_else(|| panic!("{s:?} not in\n{text}"))
        };
        assert!(
            at("FROM docker.io/library/node:18-bookworm-slim AS build")
                < at("RUN --mount=type=cache,target=/root/.npm npm ci")
        );
        // Without a build script the prune goes with the install; the last
        // stage's settings come before its copy, which ends the file.
        assert!(text.contains("npm ci && npm prune --omit=dev\n"), "{text}");
        assert!(at("CMD [\"npm\",\"start\"]") < at("COPY --from=build /app /app"));
        assert!(
            text.ends_with("COPY --from=build /app /app\nCOPY . .\n"),
            "{text}"
        );
        let built = Stack::Node {
            manager: NodeManager::Npm { locked: true },
            version: Some("18".into()),
            build: true,
            start: vec!["npm".into(), "start".into()],
        };
        let text = containerfile(&built, &bases, false).unwrap();
        assert!(
            text.contains("RUN npm ci\nCOPY . .\nRUN npm run build\nRUN npm prune --omit=dev\n"),
            "{text}"
        );
        assert!(text.ends_with("COPY --from=build /app /app\n"), "{text}");
        let uncached = containerfile(&node, &bases, false).unwrap();
        assert!(!uncached.contains("--mount"), "{uncached}");
        let go = containerfile(&Stack::Go { version: None }, &bases, false).unwrap();
        assert!(
            go.contains("FROM docker.io/library/golang:1.23-bookworm AS build"),
            "{go}"
        );
        assert!(
            go.contains("\nFROM docker.io/library/debian:bookworm-slim\n"),
            "{go}"
        );
    }
}
