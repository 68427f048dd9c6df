//! An extracted archive with nothing to build, as one more layer over its
//! runtime's image: a tar stream of its tree under the output path, written
//! on a thread as the flatten reads it (nothing is copied to disk again).
//! Entries go in name order, owned by root, with the modes and times the
//! extraction gave them; files linked to each other stay linked. The same
//! tree gives the same stream, so its name (the "digest" the flatten and
//! the layer store know it by) is made from the archive's sha256 and where
//! it goes.

use std::collections::HashMap;
use std::fs;
use std::io::{self, PipeReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use builderd_oci::{Compression, Digest, LayerInfo};

use crate::project::archive::Unpacked;

/// What the layer's name is made from besides its content's: bump when
/// the stream's form changes.
const FORM: &str = "builderd-archive-layer 1";

/// The tree as a layer; keeps the extraction until it is dropped.
pub struct TreeLayer {
    pub info: LayerInfo,
    unpacked: Arc<Unpacked>,
}

impl TreeLayer {
    pub fn new(unpacked: Unpacked) -> TreeLayer {
        let id = format!(
            "{FORM}\0{}\0{}\0{}",
            unpacked.info.sha256, unpacked.within, unpacked.plan.output_path
        );
        TreeLayer {
            info: LayerInfo {
                digest: Digest::of(id.as_bytes()),
                size: unpacked.info.bytes.max(1),
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                compression: Compression::None,
            },
            unpacked: Arc::new(unpacked),
        }
    }

    /// The layer's tar stream, from its start.
    pub fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        let (reader, mut writer) = io::pipe()?;
        let unpacked = self.unpacked.clone();
        let writing = std::thread::Builder::new()
            .name("archive-layer".into())
            .spawn(move || {
                let at = unpacked.plan.output_path.trim_start_matches('/');
                let mut tar = tar::Builder::new(&mut writer);
                write_tree(&mut tar, &unpacked.context, at, unpacked.info.newest_mtime)?;
                tar.finish()?;
                drop(tar);
                writer.flush()
            })?;
        Ok(Box::new(Stream {
            reader,
            writing: Some(writing),
        }))
    }
}

/// The stream's reader; at its end, the writer's own error if it failed
/// (a stream cut short would otherwise read as a truncated tar).
struct Stream {
    reader: PipeReader,
    writing: Option<JoinHandle<io::Result<()>>>,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.reader.read(buf)?;
        if n == 0 {
            if let Some(writing) = self.writing.take() {
                writing
                    .join()
                    .map_err(|_| io::Error::other("the archive layer's writer panicked"))??;
            }
        }
        Ok(n)
    }
}

/// Writes `root`'s tree under `at` (its own directory first).
fn write_tree(
    tar: &mut tar::Builder<impl Write>,
    root: &Path,
    at: &str,
    newest: i64,
) -> io::Result<()> {
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_uid(0);
    dir.set_gid(0);
    dir.set_mtime(newest.max(0) as u64);
    dir.set_size(0);
    tar.append_data(&mut dir, format!("{at}/"), io::empty())?;
    let mut linked: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let mut names: Vec<_> = fs::read_dir(root.join(&rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let rel = rel.join(&name);
            let path = root.join(&rel);
            let meta = fs::symlink_metadata(&path)?;
            let inside = Path::new(at).join(&rel);
            let mut h = tar::Header::new_gnu();
            h.set_mode(meta.mode() & 0o7777);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(meta.mtime().max(0) as u64);
            h.set_size(0);
            let kind = meta.file_type();
            if kind.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                tar.append_data(&mut h, &inside, io::empty())?;
                subdirs.push(rel);
            } else if kind.is_symlink() {
                h.set_entry_type(tar::EntryType::Symlink);
                tar.append_link(&mut h, &inside, fs::read_link(&path)?)?;
            } else if let Some(first) = (meta.nlink() > 1)
                .then(|| linked.get(&(meta.dev(), meta.ino())))
                .flatten()
            {
                h.set_entry_type(tar::EntryType::Link);
                tar.append_link(&mut h, &inside, first)?;
            } else {
                if meta.nlink() > 1 {
                    linked.insert((meta.dev(), meta.ino()), inside.clone());
                }
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(meta.len());
                tar.append_data(&mut h, &inside, fs::File::open(&path)?)?;
            }
        }
        // Depth first, in name order: the last pushed is read first.
        pending.extend(subdirs.into_iter().rev());
    }
    Ok(())
}
