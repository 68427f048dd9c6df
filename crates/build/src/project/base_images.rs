//! Which image a detected stack builds and runs on: a table from stack
//! and version to image, builderd's own (Docker Hub's official images)
//! unless the operator gives one (`--base-images FILE`, JSON:
//! `{"node": {"18": "REF", "default": "REF"}, "go": {"default": "REF",
//! "run": "REF"}, …}`; a stack the file names replaces builderd's entry for
//! it), or one image for the whole build (`--base-image REF`).
//!
//! A version is looked up as written, then by its major part; `*` (in
//! builderd's table) fills `{version}` into a pattern; with no version,
//! `default`. A version the table does not have is an error that lists
//! what it has: building on another version than the project asks for
//! would break it later and quietly. `run` names the final stage's image
//! where it needs no toolchain (Go); otherwise the final stage runs on the
//! build's image.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

use crate::error::SourceError;

type Table = BTreeMap<String, BTreeMap<String, String>>;

#[derive(Clone, Debug)]
pub struct BaseImages {
    table: Table,
    /// One image for every stage (`--base-image`).
    only: Option<String>,
}

impl BaseImages {
    /// builderd's own table.
    pub fn builtin() -> BaseImages {
        let entry = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let hub = "docker.io/library";
        let table = [
            (
                "node",
                entry(&[
                    ("*", &format!("{hub}/node:{{version}}-bookworm-slim")),
                    ("default", &format!("{hub}/node:22-bookworm-slim")),
                ]),
            ),
            (
                "python",
                entry(&[
                    ("*", &format!("{hub}/python:{{version}}-slim-bookworm")),
                    ("default", &format!("{hub}/python:3.12-slim-bookworm")),
                ]),
            ),
            (
                "go",
                entry(&[
                    ("*", &format!("{hub}/golang:{{version}}-bookworm")),
                    ("default", &format!("{hub}/golang:1.23-bookworm")),
                    ("run", &format!("{hub}/debian:bookworm-slim")),
                ]),
            ),
            (
                "static",
                entry(&[("default", &format!("{hub}/busybox:1.36"))]),
            ),
            (
                "script",
                entry(&[("default", &format!("{hub}/debian:bookworm-slim"))]),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        BaseImages { table, only: None }
    }

    /// builderd's table with the operator's `file` over it, and `only`
    /// for every stage when given.
    pub fn load(file: Option<&Path>, only: Option<&str>) -> Result<BaseImages> {
        let mut images = BaseImages::builtin();
        if let Some(path) = file {
            let text = std::fs::read(path)
                .with_context(|| format!("the base-image table {}", path.display()))?;
            let given: Table = serde_json::from_slice(&text).with_context(|| {
                format!(
                    "the base-image table {}: give {{\"STACK\": {{\"VERSION\": \"IMAGE\", \"default\": \"IMAGE\"}}}}",
                    path.display()
                )
            })?;
            for (stack, entry) in given {
                for image in entry.values() {
                    check_image(image)
                        .with_context(|| format!("the base-image table's {stack}"))?;
                }
                images.table.insert(stack, entry);
            }
        }
        if let Some(image) = only {
            check_image(image).context("--base-image")?;
            images.only = Some(image.to_string());
        }
        Ok(images)
    }

    /// The image of `stack`'s `role` stage ("build" or "run") for `version`.
    pub fn image(&self, stack: &str, role: &str, version: Option<&str>) -> Result<String> {
        if let Some(only) = &self.only {
            return Ok(only.clone());
        }
        let entry = self
            .table
            .get(stack)
            .ok_or_else(|| SourceError(format!("the base-image table has no entry for {stack}")))?;
        if role == "run" {
            if let Some(run) = entry.get("run") {
                return Ok(run.clone());
            }
        }
        let found = match version {
            None => entry.get("default").cloned(),
            Some(v) => {
                let major = v.split('.').next().unwrap_or(v);
                entry
                    .get(v)
                    .or_else(|| entry.get(major))
                    .cloned()
                    .or_else(|| entry.get("*").map(|p| p.replace("{version}", v)))
            }
        };
        let image = found.ok_or_else(|| {
            let has: Vec<&str> = entry
                .keys()
                .map(String::as_str)
                .filter(|k| !["run", "*"].contains(k))
                .collect();
            SourceError(format!(
                "the project asks for {stack} {}, and the base-image table has {stack} {} \
                 (add it, or give one image with --base-image)",
                version.unwrap_or("(any version)"),
                has.join(", ")
            ))
        })?;
        check_image(&image)?;
        Ok(image)
    }
}

/// A registry reference, and nothing a Containerfile line could take for
/// more.
fn check_image(image: &str) -> Result<()> {
    match builderd_oci::Source::parse(image) {
        Ok(builderd_oci::Source::Registry(_)) if !image.contains(char::is_whitespace) => Ok(()),
        _ => Err(SourceError(format!("{image:?} is not an image reference")).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_looked_up_and_a_missing_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bases.json");
        std::fs::write(
            &file,
            r#"{"node": {"18": "reg.local/node:18", "default": "reg.local/node:20"}}"#,
        )
        .unwrap();
        let t = BaseImages::load(Some(&file), None).unwrap();
        assert_eq!(
            t.image("node", "build", Some("18")).unwrap(),
            "reg.local/node:18"
        );
        assert_eq!(
            t.image("node", "run", Some("18.2")).unwrap(),
            "reg.local/node:18"
        );
        assert_eq!(t.image("node", "build", None).unwrap(), "reg.local/node:20");
        let err = t
            .image("node", "build", Some("16"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("node 16") && err.contains("18, default"),
            "{err}"
        );
        // Stacks the file leaves out keep builderd's entry.
        assert_eq!(
            t.image("python", "build", Some("3.11")).unwrap(),
            "docker.io/library/python:3.11-slim-bookworm"
        );
        assert_eq!(
            t.image("go", "run", Some("1.22")).unwrap(),
            "docker.io/library/debian:bookworm-slim"
        );
        let one = BaseImages::load(Some(&file), Some("reg.local/all:1")).unwrap();
        assert_eq!(one.image("go", "run", None).unwrap(), "reg.local/all:1");
        std::fs::write(&file, r#"{"node": {"default": "x\nRUN evil"}}"#).unwrap();
        assert!(BaseImages::load(Some(&file), None).is_err());
        assert!(BaseImages::load(None, Some("oci:/etc")).is_err());
    }
}
