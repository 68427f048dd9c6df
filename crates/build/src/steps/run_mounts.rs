//! The `RUN --mount` flags of a Containerfile, checked before the engine
//! reads it. buildah 1.28 joins a cache mount's `id` (or, without one, its
//! target) onto its cache directory without confining the result
//! (CVE-2024-9675, fixed upstream in 1.38, not in Debian 12's package):
//! `--mount=type=cache,id=../../../etc,target=/h` mounts the host's /etc
//! into the step. So every mount's names are checked here and anything
//! the engine would expand (`$`) or unquote is refused. The cache
//! directories are made here too, owned by the steps' root, which could
//! not write to a directory the engine made as the host's root.

use anyhow::Result;

use crate::error::SourceError;

/// A cache mount's directory, relative to the engine's cache directory,
/// and the owner (in the step's namespace) it is made for.
#[derive(Debug, PartialEq, Eq)]
pub struct CacheDir {
    pub path: String,
    pub uid: u32,
    pub gid: u32,
}

/// Checks the `--mount` flags of each `RUN` in `text` (owners below
/// `ids`, those of the steps' namespace); answers the cache directories
/// they use.
pub fn check(text: &str, ids: u32) -> Result<Vec<CacheDir>> {
    let mut caches = Vec::new();
    for (line, instruction) in super::instructions::instructions(text) {
        let mut words = instruction.split_whitespace();
        let mut keyword = words.next().unwrap_or_default().to_ascii_uppercase();
        if keyword == "ONBUILD" {
            keyword = words.next().unwrap_or_default().to_ascii_uppercase();
        }
        if keyword != "RUN" {
            continue;
        }
        for flag in words.take_while(|w| w.starts_with("--")) {
            if let Some(spec) = flag.strip_prefix("--mount=") {
                if let Some(cache) = mount(spec, ids).map_err(|why| {
                    SourceError(format!(
                        "the Containerfile's line {line}: --mount={spec} is refused: {why}"
                    ))
                })? {
                    caches.push(cache);
                }
            }
        }
    }
    Ok(caches)
}

/// One mount's spec checked: its cache directory, if it is a cache mount.
fn mount(spec: &str, ids: u32) -> Result<Option<CacheDir>, String> {
    if let Some(c) = spec.chars().find(|c| matches!(c, '$' | '"' | '\'' | '\\')) {
        return Err(format!(
            "{c:?} in a mount (variables and quoting are not taken there)"
        ));
    }
    let mut kind = "bind";
    let (mut id, mut target, mut from) = (None, None, None);
    let (mut uid, mut gid) = (0, 0);
    for field in spec.split(',') {
        let (key, value) = field.split_once('=').unwrap_or((field, ""));
        match key {
            "type" => kind = value,
            "id" => id = Some(value),
            "target" | "dst" | "destination" => target = Some(value),
            "from" => from = Some(value),
            "uid" => uid = number(key, value, ids)?,
            "gid" => gid = number(key, value, ids)?,
            _ => {}
        }
        if matches!(key, "source" | "src" | "target" | "dst" | "destination")
            && value.split('/').any(|c| c == "..")
        {
            return Err(format!("{key} climbs out with \"..\""));
        }
    }
    if kind != "cache" {
        return Ok(None);
    }
    if from.is_some() {
        return Err("a cache mount from another image or stage is not supported".into());
    }
    let path = match (id, target) {
        (Some(id), _) => {
            let plain = !id.is_empty()
                && id.len() <= 128
                && id != "."
                && id != ".."
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !plain {
                return Err("a cache id is a plain name (letters, digits, '.', '_', '-')".into());
            }
            id.to_string()
        }
        (None, Some(target)) => {
            let rel = target.trim_start_matches('/');
            if !target.starts_with('/') || rel.is_empty() || rel.split('/').any(|c| c == ".") {
                return Err("a cache target is an absolute path of plain names".into());
            }
            rel.to_string()
        }
        (None, None) => return Err("a cache mount needs a target".into()),
    };
    Ok(Some(CacheDir { path, uid, gid }))
}

fn number(key: &str, value: &str, ids: u32) -> Result<u32, String> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| *n < ids)
        .ok_or_else(|| format!("{key}={value:?} is not an id of the step's namespace"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(path: &str, uid: u32) -> CacheDir {
        CacheDir {
            path: path.into(),
            uid,
            gid: uid,
        }
    }

    #[test]
    fn cache_mounts_give_their_directories() {
        let text = "# syntax=docker/dockerfile:1\nFROM x\n\
                    RUN --mount=type=cache,target=/root/.npm npm ci\n\
                    run --mount=type=secret,id=tok \\\n  # a comment\n  \
                    --mount=type=cache,id=pip-1,target=/c,uid=1000,gid=1000 pip install\n\
                    RUN echo --mount=type=cache,id=../x,target=/y\n";
        assert_eq!(
            check(text, 65536).unwrap(),
            vec![dir("root/.npm", 0), dir("pip-1", 1000)]
        );
    }

    #[test]
    fn mounts_that_would_reach_the_host_are_refused() {
        for (bad, why) in [
            (
                "RUN --mount=type=cache,id=../../../etc,target=/h ls",
                "plain name",
            ),
            ("RUN --mount=type=cache,id=..,target=/h ls", "plain name"),
            ("RUN --mount=type=cache,id=a/b,target=/h ls", "plain name"),
            (
                "RUN --mount=type=cache,target=/a/../../../etc ls",
                "climbs out",
            ),
            ("RUN --mount=type=cache,target=/./a ls", "plain names"),
            ("RUN --mount=type=cache,id=$X,target=/h ls", "variables"),
            ("RUN --mount=type=cache,id=\"a\",target=/h ls", "quoting"),
            (
                "RUN --mount=type=bind,source=../../etc,target=/h ls",
                "climbs out",
            ),
            (
                "RUN --mount=type=cache,from=img,source=/etc,target=/h ls",
                "another image",
            ),
            ("RUN --mount=type=cache,target=/h,uid=70000 ls", "namespace"),
            (
                "ONBUILD RUN --mount=type=cache,id=../e,target=/h ls",
                "plain name",
            ),
            (
                "RUN \\\n --mount=type=cache,id=../e,target=/h ls",
                "plain name",
            ),
            (
                "# escape=`\nFROM x\nRUN `\n --mount=type=cache,id=../e,target=/h ls",
                "plain name",
            ),
        ] {
            let text = match bad.starts_with('#') {
                true => format!("{bad}\n"),
                false => format!("FROM x\n{bad}\n"),
            };
            let err = check(&text, 65536).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.contains("line"), "{bad}: {err}");
        }
    }
}
