//! The merged tree of the layers so far, without content: what each path
//! is, a symlink's target, a directory's metadata. A layer written as a
//! disk of its own (`layer_disk`) needs it: the directories the layer only
//! implies take their metadata from below (in an overlay the upper
//! directory's metadata wins), and a path under a symlink of a lower layer
//! goes where the link points, as the flatten puts it. The build also looks
//! things up in it (an init, systemd) that no single layer has.
//!
//! It is a stored tree ([`Table`], searched where it lies) with this
//! build's changes over it, so that taking a stored layer's tree costs a
//! read, not a decode of every path, and storing the next one is a merge.

use std::collections::{BTreeMap, BTreeSet};

use builderd_ext4::Metadata;

use crate::normalize::{ancestors, join, normalize, parent};
use crate::tree_table::{BadTable, PathKind, Table, TableWriter};

/// Linux's limit on symlinks followed in one lookup.
const MAX_LINKS: usize = 40;

/// What one path is, to add it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir(Metadata),
    /// A directory no layer so far describes: the writer implies it (with
    /// the content's time, known at the end).
    ImpliedDir,
    File,
    Symlink(Vec<u8>),
    /// A device, fifo or socket.
    Other,
}

impl Node {
    fn kind(&self) -> PathKind<'_> {
        match self {
            Node::Dir(_) | Node::ImpliedDir => PathKind::Dir,
            Node::File => PathKind::File,
            Node::Symlink(t) => PathKind::Symlink(t),
            Node::Other => PathKind::Other,
        }
    }
}

/// Normalised paths (the root is empty) to what they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Skeleton {
    base: Table,
    /// Paths added (Some) or removed (None) over `base`.
    changes: BTreeMap<Vec<u8>, Option<Node>>,
    /// Directories whose entries in `base` are all hidden.
    cleared: BTreeSet<Vec<u8>>,
}

impl Skeleton {
    /// The tree [`Skeleton::to_bytes`] wrote.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Skeleton, BadTable> {
        Ok(Skeleton {
            base: Table::parse(bytes)?,
            ..Default::default()
        })
    }

    /// What this tree changes over its stored one, as bytes (see
    /// [`Skeleton::with_changes`]): a small layer over a large tree is
    /// stored as that rather than as the whole tree again.
    pub fn changes_to_bytes(&self) -> Vec<u8> {
        let mut added = TableWriter::default();
        let mut removed: Vec<&[u8]> = Vec::new();
        for (path, change) in &self.changes {
            match change {
                Some(_) => add(&mut added, path, change),
                None => removed.push(path),
            }
        }
        let cleared: Vec<&[u8]> = self.cleared.iter().map(Vec::as_slice).collect();
        let mut out = Vec::new();
        for list in [&removed, &cleared] {
            out.extend((list.len() as u64).to_le_bytes());
            for p in list.iter() {
                out.extend((p.len() as u64).to_le_bytes());
                out.extend(*p);
            }
        }
        out.extend(added.finish());
        out
    }

    /// The tree `changes` (from [`Skeleton::changes_to_bytes`]) makes of
    /// the stored tree `base` it was made over.
    pub fn with_changes(base: Skeleton, changes: &[u8]) -> Result<Skeleton, BadTable> {
        let mut at = 0;
        let mut lists: Vec<Vec<Vec<u8>>> = Vec::new();
        let u64_at = |at: &mut usize| -> Result<usize, BadTable> {
            let end = at.checked_add(8).ok_or(BadTable("a length overflows"))?;
            let b = changes
                .get(*at..end)
                .ok_or(BadTable("the changes end early"))?;
            *at = end;
            usize::try_from(u64::from_le_bytes(b.try_into().unwrap()))
                .map_err(|_| BadTable("a length overflows"))
        };
        for _ in 0..2 {
            let n = u64_at(&mut at)?;
            let mut list = Vec::new();
            for _ in 0..n {
                let len = u64_at(&mut at)?;
                let end = at.checked_add(len).ok_or(BadTable("a length overflows"))?;
                list.push(
                    changes
                        .get(at..end)
                        .ok_or(BadTable("the changes end early"))?
                        .to_vec(),
                );
                at = end;
            }
            lists.push(list);
        }
        let added = Table::parse(changes[at..].to_vec())?;
        let mut tree = Skeleton {
            changes: BTreeMap::new(),
            cleared: lists.pop().unwrap_or_default().into_iter().collect(),
            ..base
        };
        for path in lists.pop().unwrap_or_default() {
            tree.changes.insert(path, None);
        }
        for r in added.records() {
            let node = match r.kind {
                PathKind::Dir if r.implied => Node::ImpliedDir,
                PathKind::Dir => Node::Dir(added.meta(&r)),
                PathKind::File => Node::File,
                PathKind::Symlink(t) => Node::Symlink(t.to_vec()),
                PathKind::Other => Node::Other,
            };
            tree.changes.insert(r.path.to_vec(), Some(node));
        }
        Ok(tree)
    }

    /// How many paths this tree changes over its stored one, and how many
    /// that one has.
    pub fn changed(&self) -> (usize, usize) {
        (self.changes.len() + self.cleared.len(), self.base.len())
    }

    /// The directories no layer describes, in path order.
    pub fn implied_dirs(&self) -> Vec<Vec<u8>> {
        let stored = self
            .base
            .records()
            .filter(|r| r.implied && !self.changes.contains_key(r.path) && !self.hidden(r.path));
        let mut dirs: Vec<Vec<u8>> = stored.map(|r| r.path.to_vec()).collect();
        dirs.extend(
            self.changes
                .iter()
                .filter(|(_, c)| matches!(c, Some(Node::ImpliedDir)))
                .map(|(p, _)| p.clone()),
        );
        dirs.sort();
        dirs
    }

    /// Is `path` below a directory whose stored entries are hidden?
    fn hidden(&self, path: &[u8]) -> bool {
        !self.cleared.is_empty()
            && !path.is_empty()
            && (self.cleared.contains(&b""[..])
                || ancestors(path).any(|a| self.cleared.contains(a)))
    }

    pub fn get(&self, path: &[u8]) -> Option<PathKind<'_>> {
        if let Some(change) = self.changes.get(path) {
            return change.as_ref().map(Node::kind);
        }
        if self.hidden(path) {
            return None;
        }
        self.base.get(path).map(|r| r.kind)
    }

    /// The metadata of the directory at `path`, if it is one.
    pub fn dir_meta(&self, path: &[u8]) -> Option<Metadata> {
        if let Some(change) = self.changes.get(path) {
            return match change {
                Some(Node::Dir(meta)) => Some(meta.clone()),
                _ => None,
            };
        }
        if self.hidden(path) {
            return None;
        }
        let r = self.base.get(path)?;
        (r.kind == PathKind::Dir && !r.implied).then(|| self.base.meta(&r))
    }

    /// Puts `node` at `path`. A non-directory over a directory hides what
    /// was below it, as in an overlay.
    pub fn insert(&mut self, path: Vec<u8>, node: Node) {
        if !matches!(node, Node::Dir(_) | Node::ImpliedDir) {
            self.clear_children(&path);
        }
        self.changes.insert(path, Some(node));
    }

    /// Removes `path` and everything below it.
    pub fn remove_tree(&mut self, path: &[u8]) {
        self.clear_children(path);
        self.changes.insert(path.to_vec(), None);
    }

    /// Removes everything below the directory `dir`.
    pub fn clear_children(&mut self, dir: &[u8]) {
        let below: Vec<Vec<u8>> = children(&self.changes, dir).cloned().collect();
        for p in below {
            self.changes.remove(&p);
        }
        self.cleared.insert(dir.to_vec());
    }

    /// The whole tree as bytes, in path order: the stored records that
    /// stay are copied as they are.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = TableWriter::default();
        let mut changes = self.changes.iter().peekable();
        for r in self.base.records() {
            while let Some((path, change)) = changes.next_if(|(p, _)| p.as_slice() < r.path) {
                add(&mut out, path, change);
            }
            match changes.next_if(|(p, _)| p.as_slice() == r.path) {
                Some((path, change)) => add(&mut out, path, change),
                None if self.hidden(r.path) => {}
                None => out.raw(r.raw),
            }
        }
        for (path, change) in changes {
            add(&mut out, path, change);
        }
        out.finish()
    }

    /// Where `path` lands when its ancestors are looked up in this tree: an
    /// ancestor that is a symlink here (and that `is_dir_here` does not say
    /// the new layer makes a directory) is followed, inside the tree, to a
    /// directory. Answers None when nothing is followed.
    pub fn through_links(
        &self,
        path: &[u8],
        is_dir_here: &dyn Fn(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let mut current = path.to_vec();
        let mut followed = 0;
        'again: loop {
            let mut end = 0;
            while let Some(i) = current[end..].iter().position(|&b| b == b'/') {
                let a = &current[..end + i];
                end += i + 1;
                if is_dir_here(a) {
                    continue;
                }
                let Some(PathKind::Symlink(target)) = self.get(a) else {
                    continue;
                };
                let dest = if target.starts_with(b"/") {
                    normalize(target)
                } else {
                    normalize(&join(parent(a), target))
                };
                let inside = [a, b"/"].concat();
                // A link into itself, or to what is not a directory, leaves
                // the path where it is (the flatten does the same).
                if dest == a || dest.starts_with(&inside) || self.get(&dest) != Some(PathKind::Dir)
                {
                    continue;
                }
                followed += 1;
                if followed > MAX_LINKS {
                    return None;
                }
                current = join(&dest, &current[a.len() + 1..]);
                continue 'again;
            }
            break;
        }
        (followed > 0).then_some(current)
    }
}

fn add(out: &mut TableWriter, path: &[u8], change: &Option<Node>) {
    match change {
        Some(Node::Dir(meta)) => out.add(path, PathKind::Dir, Some(meta)),
        Some(Node::ImpliedDir) => out.add_implied_dir(path),
        Some(node) => out.add(path, node.kind(), None),
        None => {}
    }
}

/// The keys of `map` below the directory `dir`.
fn children<'a, V>(
    map: &'a BTreeMap<Vec<u8>, V>,
    dir: &[u8],
) -> impl Iterator<Item = &'a Vec<u8>> + 'a {
    // Below `dir/` in byte order lies everything up to `dir0` ('0' is the
    // byte after '/'); the root holds every other path.
    let (from, to) = if dir.is_empty() {
        (Vec::new(), None)
    } else {
        ([dir, b"/"].concat(), Some([dir, b"0"].concat()))
    };
    let root = dir.is_empty();
    map.range(from..)
        .take_while(move |(k, _)| to.as_ref().is_none_or(|to| *k < to))
        .filter(move |(k, _)| !root || !k.is_empty())
        .map(|(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Node {
        Node::Dir(Metadata::root_owned(0o755, 0))
    }

    fn paths(s: &Skeleton) -> Vec<String> {
        let t = Skeleton::from_bytes(s.to_bytes()).unwrap();
        t.base
            .records()
            .map(|r| String::from_utf8_lossy(r.path).into_owned())
            .collect()
    }

    /// The same tree, built directly and over a stored one.
    fn both(build: &dyn Fn(&mut Skeleton), stored: &[(&str, Node)]) -> (Skeleton, Skeleton) {
        let mut direct = Skeleton::default();
        for (p, n) in stored {
            direct.insert(p.as_bytes().to_vec(), n.clone());
        }
        let mut over = Skeleton::from_bytes(direct.to_bytes()).unwrap();
        build(&mut direct);
        build(&mut over);
        // Kept as its changes over the stored tree, it is the same tree.
        let stored_tree = Skeleton::from_bytes(over.to_bytes()).unwrap();
        let base = Skeleton {
            changes: BTreeMap::new(),
            cleared: BTreeSet::new(),
            ..over.clone()
        };
        let again = Skeleton::with_changes(base, &over.changes_to_bytes()).unwrap();
        assert_eq!(again, over);
        assert_eq!(again.to_bytes(), stored_tree.to_bytes());
        (direct, over)
    }

    #[test]
    fn overlay_rules_hold_over_a_stored_tree() {
        let mut stored: Vec<(&str, Node)> = ["", "a", "a/b", "a/b/c", "a0", "ab"]
            .iter()
            .map(|p| (*p, dir()))
            .collect();
        stored.push(("a/b/c/f", Node::File));
        stored.push(("l", Node::Symlink(b"a0".to_vec())));
        let (direct, over) = both(
            &|s: &mut Skeleton| {
                s.clear_children(b"a");
                s.insert(b"a/x".to_vec(), Node::File);
                s.insert(b"ab/new".to_vec(), Node::File);
                s.remove_tree(b"ab");
                s.insert(b"z".to_vec(), dir());
            },
            &stored,
        );
        for s in [&direct, &over] {
            assert_eq!(paths(s), ["", "a", "a/x", "a0", "l", "z"]);
            assert_eq!(s.get(b"a/b"), None);
            assert_eq!(s.get(b"l"), Some(PathKind::Symlink(b"a0")));
            assert_eq!(s.dir_meta(b"a0"), Some(Metadata::root_owned(0o755, 0)));
            assert_eq!(s.dir_meta(b"a/x"), None);
        }
        // A file over a directory hides what it held.
        let (direct, over) = both(
            &|s: &mut Skeleton| s.insert(b"a".to_vec(), Node::File),
            &stored,
        );
        for s in [&direct, &over] {
            assert_eq!(s.get(b"a/b/c/f"), None);
            assert_eq!(paths(s), ["", "a", "a0", "ab", "l"]);
        }
        // The root made opaque keeps only itself and what is added.
        let (_, over) = both(
            &|s: &mut Skeleton| {
                s.clear_children(b"");
                s.insert(b"n".to_vec(), Node::Other);
            },
            &stored,
        );
        assert_eq!(paths(&over), ["", "n"]);
    }

    #[test]
    fn damaged_tables_are_refused() {
        let mut s = Skeleton::default();
        s.insert(b"".to_vec(), dir());
        s.insert(b"a".to_vec(), Node::Symlink(b"b".to_vec()));
        let bytes = s.to_bytes();
        for cut in 1..bytes.len() {
            assert!(
                Skeleton::from_bytes(bytes[..cut].to_vec()).is_err(),
                "{cut}"
            );
        }
        let mut unsorted = TableWriter::default();
        unsorted.add(b"b", PathKind::File, None);
        unsorted.add(b"a", PathKind::File, None);
        assert!(Skeleton::from_bytes(unsorted.finish()).is_err());
    }

    #[test]
    fn paths_go_through_lower_links_to_directories() {
        let mut s = Skeleton::default();
        for p in ["", "usr", "usr/lib"] {
            s.insert(p.into(), dir());
        }
        s.insert(b"lib".to_vec(), Node::Symlink(b"usr/lib".to_vec()));
        s.insert(b"abs".to_vec(), Node::Symlink(b"/usr/../usr/lib".to_vec()));
        s.insert(b"self".to_vec(), Node::Symlink(b"self/x".to_vec()));
        s.insert(b"file".to_vec(), Node::File);
        s.insert(b"tofile".to_vec(), Node::Symlink(b"file".to_vec()));
        let s = Skeleton::from_bytes(s.to_bytes()).unwrap();
        let no = |_: &[u8]| false;
        assert_eq!(
            s.through_links(b"lib/x.so", &no),
            Some(b"usr/lib/x.so".to_vec())
        );
        assert_eq!(
            s.through_links(b"abs/a/b", &no),
            Some(b"usr/lib/a/b".to_vec())
        );
        assert_eq!(s.through_links(b"lib", &no), None, "the link itself stays");
        assert_eq!(s.through_links(b"self/y", &no), None);
        assert_eq!(s.through_links(b"tofile/y", &no), None);
        // The new layer makes lib a directory: nothing is followed.
        assert_eq!(s.through_links(b"lib/x.so", &|p: &[u8]| p == b"lib"), None);
    }
}
