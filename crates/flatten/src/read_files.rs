//! Reading a few files of the flattened tree before the flatten: what a
//! build must know of the image's final state to decide entry by entry (a
//! package database, say). Layers are read newest first with the overlay's
//! rules for the files asked for: the newest version wins, and a whiteout
//! or an opaque directory above hides what is below.

use std::collections::{BTreeMap, HashSet};

use builderd_ext4::InMemory;
use builderd_import::EntryKind;

use crate::layer::{adjusted, layer_err, open, Layer};
use crate::normalize::{ancestors, base, join, normalize, parent};
use crate::Error;

/// What the final tree has at a path asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    File(Vec<u8>),
    /// A regular file over the size asked for: present, not read.
    LargeFile,
    Symlink(Vec<u8>),
    /// A directory or anything else.
    Other,
}

/// The entries of the final tree that `want` asks for, by normalised
/// path; regular files up to `max_file` bytes are read, at most
/// `max_total` bytes in all. `within` tells the directories that hold
/// what `want` asks for (a non-directory or a whiteout there in an upper
/// layer hides everything below it); only those and wanted paths are
/// remembered, so memory stays small whatever the image.
pub fn read_files(
    layers: &[Layer<'_>],
    want: &dyn Fn(&[u8]) -> bool,
    within: &dyn Fn(&[u8]) -> bool,
    max_file: u64,
    max_total: u64,
) -> Result<BTreeMap<Vec<u8>, Found>, Error> {
    let mut found = BTreeMap::new();
    // Non-directories and whiteouts of upper layers (each hides the path
    // and everything below it), and directories whose lower contents upper
    // layers hid. A directory hides nothing: it merges.
    let mut decided: HashSet<Vec<u8>> = HashSet::new();
    let mut opaque: HashSet<Vec<u8>> = HashSet::new();
    let mut total = 0u64;
    for layer in layers.iter().rev() {
        let mut reader = open(layer)?;
        let mut decided_here = Vec::new();
        let mut opaque_here = Vec::new();
        while let Some(mut entry) = reader.next_entry().map_err(layer_err(layer))? {
            let path = normalize(&entry.path);
            if !adjusted(layer, &path, &mut entry.meta) {
                continue;
            }
            let name = base(&path);
            let relevant = |p: &[u8]| want(p) || within(p);
            if name == b".wh..wh..opq" {
                if relevant(parent(&path)) {
                    opaque_here.push(parent(&path).to_vec());
                }
                continue;
            }
            if let Some(hidden) = name.strip_prefix(b".wh.") {
                let hidden = join(parent(&path), hidden);
                if relevant(&hidden) {
                    decided_here.push(hidden);
                }
                continue;
            }
            let hidden = decided.contains(&path)
                || found.contains_key(&path)
                || ancestors(&path)
                    .chain(std::iter::once(parent(&path)))
                    .any(|a| opaque.contains(a) || decided.contains(a));
            if hidden {
                continue;
            }
            if entry.kind != EntryKind::Dir && relevant(&path) {
                decided_here.push(path.clone());
            }
            if !want(&path) {
                continue;
            }
            let size = entry.size();
            let content = match &entry.kind {
                EntryKind::File if size > max_file => Found::LargeFile,
                EntryKind::File => {
                    total += size;
                    if total > max_total {
                        return Err(Error::Invalid {
                            layer: layer.name.clone(),
                            path: builderd_ext4::display_path(&path),
                            reason: format!(
                                "the files read before the flatten pass {max_total} bytes in all"
                            ),
                        });
                    }
                    let mut data = InMemory(Vec::with_capacity(size as usize));
                    reader
                        .copy_data(&entry, &mut data)
                        .map_err(layer_err(layer))?;
                    Found::File(data.0)
                }
                EntryKind::Symlink(target) => Found::Symlink(target.clone()),
                _ => Found::Other,
            };
            found.insert(path, content);
        }
        reader.drain().map_err(layer_err(layer))?;
        decided.extend(decided_here);
        opaque.extend(opaque_here);
    }
    Ok(found)
}
