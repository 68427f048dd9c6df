//! The in-memory tree: metadata and extents only, never file contents, so
//! memory stays small whatever the image size.

use std::collections::BTreeMap;

use crate::entry::{DeviceKind, Metadata};
use crate::layout::Run;
use crate::Error;

pub type NodeId = u32;
pub const ROOT: NodeId = 0;

/// A piece of a file: `len` blocks at logical block `logical`, stored from
/// physical block `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub logical: u32,
    pub start: u32,
    pub len: u32,
}

#[derive(Debug)]
pub enum Kind {
    Dir(BTreeMap<Box<[u8]>, NodeId>),
    File {
        size: u64,
        extents: Vec<Extent>,
        content_hash: u128,
    },
    Symlink(Box<[u8]>),
    Device(DeviceKind, u32, u32),
    Fifo,
    Socket,
}

#[derive(Debug)]
pub struct Node {
    pub meta: Metadata,
    pub kind: Kind,
    /// A directory created only because something below it was added; its
    /// metadata is filled in at the end unless an entry for it arrives.
    pub implicit: bool,
}

/// The tree of nodes. Hardlinks are several directory entries naming one
/// node; nodes no entry names any more are simply not written.
#[derive(Debug)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

/// Splits a path into its components after normalising it: a leading `/` or
/// `./`, empty and `.` components are dropped; `..` is refused (resolving it
/// is the caller's policy). The empty path is the root.
pub fn components(path: &[u8]) -> Result<Vec<&[u8]>, Error> {
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(Error::path(path, "contains a '..' component")),
            c if c.len() > 255 => {
                return Err(Error::path(path, "has a name longer than 255 bytes"))
            }
            c if c.contains(&0) => return Err(Error::path(path, "contains a NUL byte")),
            c => out.push(c),
        }
    }
    Ok(out)
}

impl Node {
    /// A directory nothing described yet: 0755 root, times filled in at the
    /// end unless an entry for it arrives.
    fn implicit_dir() -> Node {
        Node {
            meta: Metadata {
                mode: 0o755,
                ..Default::default()
            },
            kind: Kind::Dir(BTreeMap::new()),
            implicit: true,
        }
    }
}

impl Tree {
    pub fn new() -> Self {
        let root = Node::implicit_dir();
        Tree { nodes: vec![root] }
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id as usize]
    }

    fn children_mut(&mut self, dir: NodeId) -> &mut BTreeMap<Box<[u8]>, NodeId> {
        match &mut self.nodes[dir as usize].kind {
            Kind::Dir(children) => children,
            _ => unreachable!("parent lookups only return directories"),
        }
    }

    /// The directory that holds `comps`'s last component, creating implicit
    /// parents on the way.
    fn parent_of(&mut self, path: &[u8], comps: &[&[u8]]) -> Result<NodeId, Error> {
        let mut dir = ROOT;
        for c in &comps[..comps.len().saturating_sub(1)] {
            let existing = match &self.nodes[dir as usize].kind {
                Kind::Dir(children) => children.get(*c).copied(),
                _ => unreachable!(),
            };
            dir = match existing {
                Some(id) if matches!(self.nodes[id as usize].kind, Kind::Dir(_)) => id,
                Some(_) => return Err(Error::path(path, "has a parent that is not a directory")),
                None => {
                    let id = self.push(Node::implicit_dir());
                    self.children_mut(dir).insert((*c).into(), id);
                    id
                }
            };
        }
        Ok(dir)
    }

    fn push(&mut self, node: Node) -> NodeId {
        let id = self.nodes.len() as NodeId;
        self.nodes.push(node);
        id
    }

    /// Looks up an existing entry.
    pub fn lookup(&self, path: &[u8]) -> Result<Option<NodeId>, Error> {
        let mut id = ROOT;
        for c in components(path)? {
            match &self.nodes[id as usize].kind {
                Kind::Dir(children) => match children.get(c) {
                    Some(&child) => id = child,
                    None => return Ok(None),
                },
                _ => return Ok(None),
            }
        }
        Ok(Some(id))
    }

    /// Creates or updates a directory, keeping its children when it exists.
    pub fn mkdir(&mut self, path: &[u8], meta: Metadata) -> Result<NodeId, Error> {
        let comps = components(path)?;
        if comps.is_empty() {
            let root = self.node_mut(ROOT);
            root.meta = meta;
            root.implicit = false;
            return Ok(ROOT);
        }
        let parent = self.parent_of(path, &comps)?;
        let name = *comps.last().unwrap();
        let existing = match &self.nodes[parent as usize].kind {
            Kind::Dir(children) => children.get(name).copied(),
            _ => unreachable!(),
        };
        if let Some(id) = existing {
            if matches!(self.nodes[id as usize].kind, Kind::Dir(_)) {
                let node = self.node_mut(id);
                node.meta = meta;
                node.implicit = false;
                return Ok(id);
            }
        }
        let id = self.push(Node {
            meta,
            kind: Kind::Dir(BTreeMap::new()),
            implicit: false,
        });
        self.children_mut(parent).insert(name.into(), id);
        Ok(id)
    }

    /// Adds a non-directory node at `path`, replacing whatever was there (the
    /// last entry for a path wins, as with `tar -x`).
    pub fn insert(&mut self, path: &[u8], node: Node) -> Result<NodeId, Error> {
        crate::tree::components(path)?;
        let id = self.push(node);
        self.name_at(path, id)?;
        Ok(id)
    }

    /// Adds another name for the node at `target`.
    pub fn link(&mut self, path: &[u8], target: &[u8]) -> Result<(), Error> {
        let Some(id) = self.lookup(target)? else {
            return Err(Error::path(
                path,
                "is a hard link to a path that does not exist",
            ));
        };
        if matches!(self.node(id).kind, Kind::Dir(_)) {
            return Err(Error::path(path, "is a hard link to a directory"));
        }
        self.name_at(path, id)
    }

    /// Removes the directory at `path` (not the root) if it has no
    /// entries; answers whether it did.
    pub fn remove_empty_dir(&mut self, path: &[u8]) -> Result<bool, Error> {
        let comps = components(path)?;
        let Some((name, parents)) = comps.split_last() else {
            return Ok(false);
        };
        let Some(parent) = self.lookup(&parents.join(&b'/'))? else {
            return Ok(false);
        };
        let Kind::Dir(children) = &self.nodes[parent as usize].kind else {
            return Ok(false);
        };
        let Some(&id) = children.get(*name) else {
            return Ok(false);
        };
        if !matches!(&self.node(id).kind, Kind::Dir(c) if c.is_empty()) {
            return Ok(false);
        }
        self.children_mut(parent).remove(*name);
        Ok(true)
    }

    /// Moves the entries of directory `from` into directory `to` (made, with
    /// implicit parents, if missing). A name `to` already has keeps its
    /// entry; the one from `from` is dropped. `from` is left empty.
    pub fn move_children(&mut self, from: &[u8], to: &[u8]) -> Result<(), Error> {
        let Some(src) = self.lookup(from)? else {
            return Ok(());
        };
        let moved = match &mut self.nodes[src as usize].kind {
            Kind::Dir(children) => std::mem::take(children),
            _ => return Err(Error::path(from, "is not a directory")),
        };
        let dest = self.dir_at(to)?;
        let children = self.children_mut(dest);
        for (name, id) in moved {
            children.entry(name).or_insert(id);
        }
        Ok(())
    }

    /// The directory at `path`, made (with its parents) as an implicit one if
    /// missing.
    fn dir_at(&mut self, path: &[u8]) -> Result<NodeId, Error> {
        match self.lookup(path)? {
            Some(id) if matches!(self.node(id).kind, Kind::Dir(_)) => Ok(id),
            Some(_) => Err(Error::path(path, "is not a directory")),
            None => {
                let id = self.push(Node::implicit_dir());
                self.name_at(path, id)?;
                Ok(id)
            }
        }
    }

    /// Makes `path` (not the root) name the node `id`.
    fn name_at(&mut self, path: &[u8], id: NodeId) -> Result<(), Error> {
        let comps = components(path)?;
        let Some(&name) = comps.last() else {
            return Err(Error::path(
                path,
                "names the root, which must be a directory",
            ));
        };
        let parent = self.parent_of(path, &comps)?;
        self.children_mut(parent).insert(name.into(), id);
        Ok(())
    }
}

/// Physical runs of a file's extents, for bitmaps.
pub fn extent_runs(extents: &[Extent]) -> impl Iterator<Item = Run> + '_ {
    extents.iter().map(|e| Run {
        start: e.start,
        len: e.len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Node {
        Node {
            meta: Metadata::default(),
            kind: Kind::Fifo,
            implicit: false,
        }
    }

    #[test]
    fn paths_normalise() {
        assert_eq!(
            components(b"./a//b/./c/").unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert!(components(b"/").unwrap().is_empty());
        assert!(components(b"a/../b").is_err());
        assert!(components(&[b'x'; 256]).is_err());
        assert!(components(&[b'x'; 255]).is_ok());
    }

    #[test]
    fn implicit_parents_and_replacement() {
        let mut t = Tree::new();
        t.insert(b"a/b/c", file()).unwrap();
        let a = t.lookup(b"a").unwrap().unwrap();
        assert!(t.node(a).implicit);
        t.mkdir(
            b"a",
            Metadata {
                mode: 0o700,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!t.node(a).implicit);
        assert!(
            t.lookup(b"a/b/c").unwrap().is_some(),
            "mkdir on a dir keeps its children"
        );
        assert!(
            t.insert(b"a/b/c/d", file()).is_err(),
            "c is not a directory"
        );
        t.link(b"x", b"a/b/c").unwrap();
        assert_eq!(t.lookup(b"x").unwrap(), t.lookup(b"a/b/c").unwrap());
        let c = t.lookup(b"a/b/c").unwrap();
        t.insert(b"usr/bin/keep", file()).unwrap();
        t.move_children(b"a/b", b"usr/bin").unwrap();
        assert_eq!(t.lookup(b"usr/bin/c").unwrap(), c);
        assert!(t.lookup(b"a/b/c").unwrap().is_none());
        assert!(t.lookup(b"usr/bin/keep").unwrap().is_some());
        t.move_children(b"a", b"new/place").unwrap();
        assert!(
            t.lookup(b"new/place/b").unwrap().is_some(),
            "the target is made"
        );
        assert!(t.link(b"y", b"a").is_err(), "no hard links to directories");
    }
}
