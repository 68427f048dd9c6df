//! The merged tree of the layers so far, without content: what each path
//! is, a symlink's target, a directory's metadata. A layer written as a
//! disk of its own (`layer_disk`) needs it: the directories the layer only
//! implies take their metadata from below (in an overlay the upper
//! directory's metadata wins), and a path under a symlink of a lower layer
//! goes where the link points, as the flatten puts it. The build also looks
//! things up in it (an init, systemd) that no single layer has.

use std::collections::BTreeMap;

use builderd_ext4::Metadata;

use crate::normalize::{join, normalize, parent};

/// Linux's limit on symlinks followed in one lookup.
const MAX_LINKS: usize = 40;

/// What one path is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir(Metadata),
    File,
    Symlink(Vec<u8>),
    /// A device, fifo or socket.
    Other,
}

/// Normalised paths (the root is empty) to what they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Skeleton {
    nodes: BTreeMap<Vec<u8>, Node>,
}

impl Skeleton {
    pub fn get(&self, path: &[u8]) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every path and what it is, in byte order.
    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Node)> {
        self.nodes.iter()
    }

    /// The metadata of the directory at `path`, if it is one.
    pub fn dir_meta(&self, path: &[u8]) -> Option<&Metadata> {
        match self.nodes.get(path) {
            Some(Node::Dir(meta)) => Some(meta),
            _ => None,
        }
    }

    /// Puts `node` at `path`. A non-directory over a directory hides what
    /// was below it, as in an overlay.
    pub fn insert(&mut self, path: Vec<u8>, node: Node) {
        if !matches!(node, Node::Dir(_)) {
            self.clear_children(&path);
        }
        self.nodes.insert(path, node);
    }

    /// Removes `path` and everything below it.
    pub fn remove_tree(&mut self, path: &[u8]) {
        self.nodes.remove(path);
        self.clear_children(path);
    }

    /// Removes everything below the directory `dir`.
    pub fn clear_children(&mut self, dir: &[u8]) {
        let below: Vec<Vec<u8>> = self.children_range(dir).cloned().collect();
        for p in below {
            self.nodes.remove(&p);
        }
    }

    fn children_range<'a>(&'a self, dir: &[u8]) -> impl Iterator<Item = &'a Vec<u8>> + 'a {
        // Below `dir/` in byte order lies everything up to `dir0` ('0' is
        // the byte after '/'); the root holds every other path.
        let (from, to) = if dir.is_empty() {
            (Vec::new(), None)
        } else {
            ([dir, b"/"].concat(), Some([dir, b"0"].concat()))
        };
        let root = dir.is_empty();
        self.nodes
            .range(from..)
            .take_while(move |(k, _)| to.as_ref().is_none_or(|to| *k < to))
            .filter(move |(k, _)| !root || !k.is_empty())
            .map(|(k, _)| k)
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
                let Some(Node::Symlink(target)) = self.nodes.get(a) else {
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
                if dest == a
                    || dest.starts_with(&inside)
                    || !matches!(self.nodes.get(&dest), Some(Node::Dir(_)))
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

/// A tree as [`Skeleton::iter`] gave it (whole: nothing to hide).
impl FromIterator<(Vec<u8>, Node)> for Skeleton {
    fn from_iter<I: IntoIterator<Item = (Vec<u8>, Node)>>(iter: I) -> Self {
        Skeleton {
            nodes: iter.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Node {
        Node::Dir(Metadata::root_owned(0o755, 0))
    }

    #[test]
    fn overlay_rules() {
        let mut s = Skeleton::default();
        for p in ["", "a", "a/b", "a/b/c", "a0", "ab"] {
            s.insert(p.into(), dir());
        }
        s.insert(b"a/b/c/f".to_vec(), Node::File);
        s.clear_children(b"a");
        let left: Vec<&[u8]> = s.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(left, [&b""[..], b"a", b"a0", b"ab"]);
        s.insert(b"a/x".to_vec(), Node::File);
        // A file over a directory hides what it held.
        s.insert(b"a".to_vec(), Node::File);
        assert!(s.get(b"a/x").is_none());
        s.remove_tree(b"ab");
        assert!(s.get(b"ab").is_none() && s.get(b"a0").is_some());
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
