//! What a project is built with: its Containerfile (`Dockerfile`, else
//! `Containerfile`, or the one the build names). Paths the build names
//! stay inside the project, links included.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The names looked for, in order, when the build names none.
const CONTAINERFILES: [&str; 2] = ["Dockerfile", "Containerfile"];

/// The directory `sub` of the project at `root` (a monorepo's app).
pub fn subdirectory(root: &Path, sub: &str) -> Result<PathBuf> {
    let path = inside(root, sub, "context")?;
    if !path.is_dir() {
        anyhow::bail!("the context {sub:?} is not a directory of the project");
    }
    Ok(path)
}

/// The Containerfile of the project whose build context is `context`.
pub fn containerfile(context: &Path, named: Option<&str>) -> Result<PathBuf> {
    if let Some(name) = named {
        let path = inside(context, name, "Containerfile")?;
        if !path.is_file() {
            anyhow::bail!("the Containerfile {name:?} is not a file of the project");
        }
        return Ok(path);
    }
    CONTAINERFILES
        .iter()
        .map(|name| context.join(name))
        .find(|path| path.is_file())
        .and_then(|path| path.canonicalize().ok())
        .filter(|path| path.starts_with(context))
        .with_context(|| {
            format!(
                "no Containerfile to build {} with: looked for {}",
                context.display(),
                CONTAINERFILES.join(" and ")
            )
        })
}

/// `name`, a relative path, under `root` once every link in it is
/// followed; refused if it leaves `root`.
fn inside(root: &Path, name: &str, what: &str) -> Result<PathBuf> {
    let relative = Path::new(name);
    if name.is_empty() || relative.is_absolute() {
        anyhow::bail!("the {what} {name:?}: give a path relative to the project");
    }
    let path = root
        .join(relative)
        .canonicalize()
        .with_context(|| format!("the {what} {name:?} is not in the project"))?;
    if !path.starts_with(root) {
        anyhow::bail!("the {what} {name:?} leads out of the project");
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_containerfile_is_found_or_the_error_says_what_was_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let err = containerfile(&root, None).unwrap_err().to_string();
        assert!(err.contains("Dockerfile and Containerfile"), "{err}");
        std::fs::write(root.join("Containerfile"), "FROM x\n").unwrap();
        assert_eq!(
            containerfile(&root, None).unwrap(),
            root.join("Containerfile")
        );
        std::fs::write(root.join("Dockerfile"), "FROM x\n").unwrap();
        assert_eq!(containerfile(&root, None).unwrap(), root.join("Dockerfile"));
        std::os::unix::fs::symlink("/etc/passwd", root.join("out")).unwrap();
        for bad in ["out", "/etc/passwd", "../x", "missing"] {
            assert!(containerfile(&root, Some(bad)).is_err(), "{bad}");
        }
        std::fs::create_dir(root.join("app")).unwrap();
        assert_eq!(subdirectory(&root, "app").unwrap(), root.join("app"));
        assert!(subdirectory(&root, "..").is_err());
    }
}
