//! Paths in the image as its own kernel will see them: symlinks followed
//! inside the image (an absolute target starts at the image's root), `..`
//! never above the root. Nothing on the host is looked at.

use builderd_ext4::{EntryKind, Metadata, Target};

use crate::Error;

/// Linux's limit on symlinks followed in one lookup.
const MAX_LINKS: usize = 40;

/// The path `path` leads to, with every symlink resolved, and what is there;
/// `None` when some component does not exist.
pub fn resolve(w: &dyn Target, path: &str) -> Result<Option<(String, Kind)>, Error> {
    let mut todo: Vec<String> = components(path).into_iter().rev().collect();
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    let mut kind = Kind::Dir; // the root
    while let Some(c) = todo.pop() {
        if c == ".." {
            done.pop();
            kind = Kind::Dir;
            continue;
        }
        done.push(c);
        let here = done.join("/");
        match w.entry(here.as_bytes())? {
            None => return Ok(None),
            Some(EntryKind::Symlink(target)) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Error::Invalid(format!(
                        "/{here}: too many levels of symbolic links"
                    )));
                }
                let target = String::from_utf8_lossy(target).into_owned();
                done.pop();
                if target.starts_with('/') {
                    done.clear();
                }
                todo.extend(components(&target).into_iter().rev());
                kind = Kind::Dir;
            }
            Some(EntryKind::Dir) => kind = Kind::Dir,
            Some(EntryKind::File) => kind = Kind::File,
            Some(EntryKind::Other) => kind = Kind::Other,
        }
        if !todo.is_empty() && kind != Kind::Dir {
            return Ok(None);
        }
    }
    Ok(Some((format!("/{}", done.join("/")), kind)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Other,
}

fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect()
}

/// Makes `path` and its missing parents as root-owned 0755 directories,
/// following symlinks the image has on the way; existing directories keep
/// their metadata. Answers the real path.
pub fn ensure_dir(w: &mut dyn Target, path: &str, time: i64) -> Result<String, Error> {
    let mut real = String::from("/");
    for c in components(path) {
        let next = format!("{}/{c}", real.trim_end_matches('/'));
        match resolve(w, &next)? {
            Some((r, Kind::Dir)) => real = r,
            Some((r, _)) => {
                return Err(Error::Invalid(format!(
                    "{r} is in the image and is not a directory; builderd needs a directory there"
                )));
            }
            None => {
                w.mkdir(next.as_bytes(), Metadata::root_owned(0o755, time))?;
                real = next;
            }
        }
    }
    Ok(real)
}

/// The image's own path for a program as the app's PATH would find it.
pub fn which(w: &dyn Target, program: &str, path_var: &str) -> Result<Option<String>, Error> {
    if program.contains('/') {
        return Ok(Some(program.to_string()));
    }
    for dir in path_var.split(':').filter(|d| d.starts_with('/')) {
        let candidate = format!("{}/{program}", dir.trim_end_matches('/'));
        if let Some((_, Kind::File)) = resolve(w, &candidate)? {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}
