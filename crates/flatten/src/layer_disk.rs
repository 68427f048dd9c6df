//! One layer as a disk of its own, in overlayfs's form, for images whose
//! layers are kept (`preserve_layers`): the guest mounts each layer disk as
//! a lower directory of an overlay, and sees the tree the flatten makes.
//!
//! - A whiteout `.wh.NAME` becomes a character device 0:0 named NAME, and
//!   an opaque marker `.wh..wh..opq` the `trusted.overlay.opaque` xattr of
//!   its directory. A whiteout of a path the same layer makes a directory
//!   makes that directory opaque (the layer replaced it).
//! - Directories the layer only implies get the metadata the layers below
//!   give them (the upper directory's metadata wins in an overlay), and a
//!   path under a lower layer's symlink goes where the link points, as the
//!   flatten puts it: both come from the [`Skeleton`] of the layers below,
//!   which this layer then joins.
//! - An entry `select` leaves out hides what the layers below have at its
//!   path (a whiteout), as it does in the flatten.
//! - Nothing of the layer may speak overlayfs itself: its own
//!   `trusted.overlay.*` xattrs are dropped (a redirect or metacopy would
//!   make the overlay read other paths), and a 0:0 character device of its
//!   own is refused (the overlay would take it as a whiteout).

use std::collections::{HashMap, HashSet};

use builderd_ext4::{DeviceKind, Metadata, Writer, Xattr};
use builderd_import::EntryKind;

use crate::layer::{adjusted, layer_err, open, Layer};
use crate::normalize::{ancestors, base, join, normalize, parent};
use crate::select::{Select, Verdict};
use crate::skeleton::{Node, Skeleton};
use crate::tree_table::PathKind;
use crate::Error;

const OPAQUE: &[u8] = b"trusted.overlay.opaque";

/// What a layer's disk holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerStats {
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    /// Entries its `select` left out.
    pub dropped: u64,
    /// The newest mtime of its entries that is not in the future (what
    /// the flatten's writer takes as the content's time).
    pub newest_mtime: i64,
}

fn invalid(layer: &Layer<'_>, path: &[u8], reason: &str) -> Error {
    Error::Invalid {
        layer: layer.name.clone(),
        path: builderd_ext4::display_path(path),
        reason: reason.into(),
    }
}

/// What the layer has written so far.
struct Here<'s> {
    below: &'s Skeleton,
    /// Directories, explicit or implied, with their metadata.
    dirs: HashMap<Vec<u8>, Metadata>,
    /// Non-directories written, and what each is (for its hard links).
    others: HashMap<Vec<u8>, Node>,
    /// Non-directories left out.
    dropped: HashSet<Vec<u8>>,
    /// Each path's node, for the skeleton, in the order written.
    nodes: Vec<(Vec<u8>, Node)>,
    time: i64,
}

impl Here<'_> {
    /// Makes the ancestors of `path` this layer has not made yet, with the
    /// metadata the layers below give them.
    fn parents(&mut self, w: &mut Writer, path: &[u8]) -> Result<(), Error> {
        for a in ancestors(path) {
            if !self.dirs.contains_key(a) {
                // A directory no layer describes is the writer's to imply,
                // as in the flatten.
                if let Some(meta) = self.below.dir_meta(a) {
                    w.mkdir(a, meta)?;
                }
                self.dirs.insert(a.to_vec(), self.inherited(a));
            }
        }
        Ok(())
    }

    fn inherited(&self, dir: &[u8]) -> Metadata {
        self.below
            .dir_meta(dir)
            .unwrap_or_else(|| Metadata::root_owned(0o755, self.time))
    }

    /// Where `path` lands (through the symlinks of the layers below).
    fn placed(&self, path: Vec<u8>) -> Vec<u8> {
        self.below
            .through_links(&path, &|a| self.dirs.contains_key(a))
            .unwrap_or(path)
    }
}

/// Writes `layer` into `w` in overlayfs's form over the layers `below`
/// describes, and adds it to `below`. `select`, if given, decides each
/// entry as in the flatten (its `applied` is told every verdict with a
/// rule: a layer has no final tree of its own). `time` is the metadata
/// time of a directory nothing describes.
pub fn write_layer(
    layer: &Layer<'_>,
    w: &mut Writer,
    select: Option<&dyn Select>,
    below: &mut Skeleton,
    time: i64,
) -> Result<LayerStats, Error> {
    let mut reader = open(layer)?;
    let mut stats = LayerStats::default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut opaque: HashSet<Vec<u8>> = HashSet::new();
    let mut whiteouts: Vec<Vec<u8>> = Vec::new();
    let mut here = Here {
        below,
        dirs: HashMap::new(),
        others: HashMap::new(),
        dropped: HashSet::new(),
        nodes: Vec::new(),
        time,
    };
    while let Some(mut entry) = reader.next_entry().map_err(layer_err(layer))? {
        let path = normalize(&entry.path);
        if !adjusted(layer, &path, &mut entry.meta) {
            continue;
        }
        entry
            .meta
            .xattrs
            .retain(|x| !x.name.starts_with(b"trusted.overlay."));
        let name = base(&path);
        if name == b".wh..wh..opq" {
            if parent(&path).is_empty() {
                // overlayfs merges every layer's root whatever its xattrs.
                return Err(invalid(
                    layer,
                    &path,
                    "marks the root opaque (it hides every lower layer), which an overlay cannot do; build without --preserve-layers",
                ));
            }
            opaque.insert(here.placed(parent(&path).to_vec()));
            stats.whiteouts += 1;
            continue;
        }
        if name.starts_with(b".wh..wh.") {
            continue; // AUFS's own names carry nothing
        }
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            whiteouts.push(here.placed(join(parent(&path), hidden)));
            stats.whiteouts += 1;
            continue;
        }
        let path = here.placed(path);
        let mtime = entry.meta.mtime.secs;
        if mtime > stats.newest_mtime && mtime <= now {
            stats.newest_mtime = mtime;
        }
        let size = entry.size();
        let verdict = select.map_or(Verdict::Keep, |s| {
            s.select(&path, &entry.kind, size, &mut entry.meta)
        });
        if let (Some(s), Some(_)) = (select, verdict.rule()) {
            s.applied(verdict, &path, size, &entry.meta);
        }
        let is_dir = entry.kind == EntryKind::Dir;
        if matches!(verdict, Verdict::Drop(_)) && !is_dir {
            here.others.remove(&path);
            here.dropped.insert(path);
            stats.dropped += 1;
            continue;
        }
        if path.is_empty() && !is_dir {
            return Err(invalid(layer, b"/", "the root is not a directory"));
        }
        here.parents(w, &path)?;
        let meta = entry.meta.clone();
        let node = match &entry.kind {
            EntryKind::Dir => {
                w.mkdir(&path, meta.clone())?;
                here.dirs.insert(path.clone(), meta.clone());
                Node::Dir(meta)
            }
            EntryKind::File => {
                let mut out = w.file(&path, meta)?;
                if !matches!(verdict, Verdict::Empty(_)) {
                    reader
                        .copy_data(&entry, &mut out)
                        .map_err(layer_err(layer))?;
                }
                out.finish()?;
                Node::File
            }
            EntryKind::Symlink(target) => {
                w.symlink(&path, target, meta)?;
                Node::Symlink(target.clone())
            }
            EntryKind::Hardlink(target) => {
                let target = here.placed(normalize(target));
                if here.dropped.contains(&target) {
                    // Another name of content left out goes with it.
                    here.dropped.insert(path);
                    stats.dropped += 1;
                    continue;
                }
                let Some(node) = here.others.get(&target).cloned() else {
                    return Err(invalid(
                        layer,
                        &path,
                        "is a hard link to a file of a lower layer, which a layer's own disk cannot hold; build without --preserve-layers",
                    ));
                };
                if matches!(verdict, Verdict::Empty(_)) {
                    // This name's content is left out: a file of its own.
                    w.file(&path, meta)?.finish()?;
                } else {
                    w.hardlink(&path, &target)?;
                }
                node
            }
            EntryKind::Device(DeviceKind::Char, 0, 0) => {
                return Err(invalid(
                    layer,
                    &path,
                    "is a character device 0:0, which an overlay takes as a whiteout; build without --preserve-layers",
                ));
            }
            EntryKind::Device(kind, major, minor) => {
                w.device(&path, *kind, *major, *minor, meta)?;
                Node::Other
            }
            EntryKind::Fifo => {
                w.fifo(&path, meta)?;
                Node::Other
            }
        };
        // Within a layer the last entry for a path wins.
        if is_dir {
            here.others.remove(&path);
        } else {
            here.dirs.remove(&path);
            here.dropped.remove(&path);
            here.others.insert(path.clone(), node.clone());
        }
        here.nodes.push((path, node));
        stats.entries += 1;
    }
    reader.drain().map_err(layer_err(layer))?;
    // Whiteouts and markers apply to the layers below whatever their place
    // in the tar; the layer's own entries win over them.
    let mut hide: Vec<Vec<u8>> = Vec::new();
    for path in whiteouts.into_iter().chain(here.dropped.iter().cloned()) {
        if here.dirs.contains_key(&path) {
            opaque.insert(path);
        } else if !here.others.contains_key(&path) && here.below.get(&path).is_some() {
            hide.push(path);
        }
    }
    hide.sort();
    hide.dedup();
    for path in &hide {
        here.parents(w, path)?;
        let meta = Metadata {
            mode: 0,
            ..Metadata::root_owned(0, time)
        };
        w.device(path, DeviceKind::Char, 0, 0, meta)?;
    }
    let mut opaque: Vec<Vec<u8>> = opaque.into_iter().collect();
    opaque.sort();
    for dir in &opaque {
        if !here.dirs.contains_key(dir) {
            // A marker in a directory the layer does not make hides what a
            // lower layer's directory holds: the directory is made for it.
            // Over anything else it hides nothing.
            if here.below.get(dir) != Some(PathKind::Dir) {
                continue;
            }
            here.parents(w, &join(dir, b"x"))?;
            let meta = here.dirs[dir].clone();
            here.nodes.push((dir.clone(), Node::Dir(meta)));
        }
        let mut meta = here.dirs[dir].clone();
        meta.xattrs.push(Xattr {
            name: OPAQUE.to_vec(),
            value: b"y".to_vec(),
        });
        w.mkdir(dir, meta)?;
        stats.opaque_dirs += 1;
    }
    // The root's metadata is the image's, whichever layer gave it.
    if let (false, Some(meta)) = (
        here.dirs.contains_key(b"".as_slice()),
        here.below.dir_meta(b""),
    ) {
        w.mkdir(b"", meta)?;
    }
    let Here { dirs, nodes, .. } = here;
    for path in &hide {
        below.remove_tree(path);
    }
    for dir in &opaque {
        below.clear_children(dir);
    }
    for (path, node) in nodes {
        // Implied directories join with what they have below.
        below.insert(path, node);
    }
    for path in dirs.into_keys() {
        if below.dir_meta(&path).is_none() {
            below.insert(path, Node::ImpliedDir);
        }
    }
    Ok(stats)
}
