//! What the archive has made so far, to hold its links inside the tree: no
//! entry through a symlink or a file, no name twice, a hard link only to a
//! file made before it, and every symlink, once all are known, resolving
//! inside the tree however its target runs through other symlinks.

use std::collections::{HashMap, HashSet};

use crate::Error;

/// Links followed while resolving one symlink, all together, as the
/// kernel's own bound (without one, links whose targets name other links
/// many times over would take exponential time).
const MAX_HOPS: usize = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
}

#[derive(Default)]
pub(crate) struct Seen {
    kinds: HashMap<Vec<u8>, Kind>,
    /// Directories an entry of their own described (an implied one may be
    /// described later, once).
    described: HashSet<Vec<u8>>,
    /// Each symlink's target, resolved at the end.
    links: HashMap<Vec<u8>, Vec<u8>>,
}

impl Seen {
    /// Checks that `path` may be made as `kind`: not made before (a
    /// directory the archive already implied may be described once), and
    /// no part of the way to it a symlink or a file.
    pub fn check(&self, path: &[u8], kind: Kind) -> Result<(), Error> {
        for (i, _) in path.iter().enumerate().filter(|(_, &b)| b == b'/') {
            match self.kinds.get(&path[..i]) {
                Some(Kind::Symlink) => {
                    return Err(Error::entry(
                        path,
                        format!(
                        "goes through the symlink {}: entries may not be written through a link",
                        crate::error::shown(&path[..i])
                    ),
                    ))
                }
                Some(Kind::File) => {
                    return Err(Error::entry(
                        path,
                        format!(
                            "goes through {}, which is a file",
                            crate::error::shown(&path[..i])
                        ),
                    ))
                }
                _ => {}
            }
        }
        match (self.kinds.get(path), kind) {
            (None, _) => Ok(()),
            (Some(Kind::Dir), Kind::Dir) if !self.described.contains(path) => Ok(()),
            _ => Err(Error::entry(path, "appears twice in the archive")),
        }
    }

    /// How many of `path`'s parents no entry has made yet (each will be a
    /// directory of its own, and counts as an entry).
    pub fn missing_parents(&self, path: &[u8]) -> usize {
        path.iter()
            .enumerate()
            .filter(|(i, &b)| b == b'/' && !self.kinds.contains_key(&path[..*i]))
            .count()
    }

    /// Records `path`'s parents as directories, and `path` as `kind`;
    /// answers the parents no entry had made (implied).
    pub fn add(&mut self, path: &[u8], kind: Kind) -> Vec<Vec<u8>> {
        let mut implied = Vec::new();
        for (i, _) in path.iter().enumerate().filter(|(_, &b)| b == b'/') {
            if !self.kinds.contains_key(&path[..i]) {
                self.kinds.insert(path[..i].to_vec(), Kind::Dir);
                implied.push(path[..i].to_vec());
            }
        }
        if kind == Kind::Dir {
            self.described.insert(path.to_vec());
        }
        self.kinds.insert(path.to_vec(), kind);
        implied
    }

    /// Checks a symlink's target on its own (empty, absolute), and keeps it
    /// for the check at the end.
    pub fn symlink(&mut self, path: &[u8], target: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        if target.is_empty() || target.contains(&0) {
            return Err(Error::entry(
                path,
                "is a symlink with an empty or NUL target",
            ));
        }
        if target.starts_with(b"/") {
            return Err(Error::entry(
                path,
                format!(
                    "is a symlink to {}, outside the archive: a link must stay inside the tree",
                    crate::error::shown(target)
                ),
            ));
        }
        self.check(path, Kind::Symlink)?;
        let implied = self.add(path, Kind::Symlink);
        self.links.insert(path.to_vec(), target.to_vec());
        Ok(implied)
    }

    /// Checks a hard link: to a file made before it.
    pub fn hard_link(&self, path: &[u8], target: &[u8]) -> Result<(), Error> {
        match self.kinds.get(target) {
            Some(Kind::File) => self.check(path, Kind::File),
            _ => Err(Error::entry(
                path,
                format!(
                    "is a hard link to {}, which is not a file earlier in the archive",
                    crate::error::shown(target)
                ),
            )),
        }
    }

    /// Resolves every symlink as the kernel would, through the others, and
    /// refuses one that leads out of the tree.
    pub fn check_links(&self) -> Result<(), Error> {
        for (path, target) in &self.links {
            let mut at: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
            at.pop();
            self.resolve(path, at, target, &mut 0)?;
        }
        Ok(())
    }

    fn resolve<'a>(
        &'a self,
        link: &[u8],
        mut at: Vec<&'a [u8]>,
        target: &'a [u8],
        hops: &mut usize,
    ) -> Result<Vec<&'a [u8]>, Error> {
        let out = || {
            Error::entry(
                link,
                "is a symlink that leads out of the tree: a link must stay inside it",
            )
        };
        *hops += 1;
        if *hops > MAX_HOPS {
            return Err(Error::entry(
                link,
                "is a symlink that runs through more than 40 links (or a loop of them)",
            ));
        }
        for part in target.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    at.pop().ok_or_else(out)?;
                }
                _ => {
                    at.push(part);
                    let joined = at.join(&b'/');
                    if let Some(next) = self.links.get(&joined) {
                        at.pop();
                        at = self.resolve(link, at, next, hops)?;
                    }
                }
            }
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_stay_inside_and_nothing_goes_through_them() {
        let mut s = Seen::default();
        s.add(b"usr/lib/libx.so.1", Kind::File);
        s.symlink(b"lib", b"usr/lib").unwrap();
        s.symlink(b"libx.so", b"lib/libx.so.1").unwrap();
        s.symlink(b"usr/up", b"..").unwrap();
        s.check_links().unwrap();
        let e = s.check(b"lib/evil", Kind::File).unwrap_err().to_string();
        assert!(e.contains("goes through the symlink \"lib\""), "{e}");
        let e = s.symlink(b"etc", b"/etc").unwrap_err().to_string();
        assert!(e.contains("outside the archive"), "{e}");
        // Lexically inside, but `usr/up` is the root and `..` of it leaves.
        s.symlink(b"sneaky", b"usr/up/..").unwrap();
        let e = s.check_links().unwrap_err().to_string();
        assert!(e.contains("\"sneaky\"") && e.contains("leads out"), "{e}");
        let mut s = Seen::default();
        s.symlink(b"a", b"b").unwrap();
        s.symlink(b"b", b"a").unwrap();
        assert!(s.check_links().unwrap_err().to_string().contains("loop"));
        // Links naming the next one ten times each: 10^10 paths unless the
        // links followed are counted all together.
        let mut s = Seen::default();
        for i in 0..10 {
            let next = vec![format!("l{}", i + 1); 10].join("/");
            s.symlink(format!("l{i}").as_bytes(), next.as_bytes())
                .unwrap();
        }
        s.symlink(b"l10", b".").unwrap();
        let started = std::time::Instant::now();
        assert!(s
            .check_links()
            .unwrap_err()
            .to_string()
            .contains("more than 40 links"));
        assert!(started.elapsed().as_secs() < 1);
        let mut s = Seen::default();
        s.add(b"f", Kind::File);
        s.hard_link(b"g", b"f").unwrap();
        assert!(s.hard_link(b"h", b"etc/passwd").is_err());
        assert!(s
            .check(b"f", Kind::File)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(s
            .check(b"f/x", Kind::File)
            .unwrap_err()
            .to_string()
            .contains("is a file"));
        // A directory implied first may be described once.
        s.add(b"d/x", Kind::File);
        s.check(b"d", Kind::Dir).unwrap();
        s.add(b"d", Kind::Dir);
        assert!(s.check(b"d", Kind::Dir).is_err());
    }
}
