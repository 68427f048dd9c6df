//! The public writer: entries in, image out.
//!
//! File data goes into the image the moment it arrives (one forward cursor,
//! or lanes taking chunks of it; all-zero blocks left as holes); `finish`
//! then numbers the inodes in tree order and writes directories, extent
//! trees, xattr blocks, the journal, inode tables, bitmaps, descriptors and
//! superblocks after the data.

use std::collections::HashMap;
use std::fs::File;

use twox_hash::xxhash3_128::Hasher as Xxh3;

use crate::checksum;
use crate::content::{Content, ContentSink, FileData, Place};
use crate::dir::{self, Child};
use crate::entry::{DeviceKind, Metadata, Timestamp};
use crate::extent;
use crate::image::{is_zero, BlockOut};
use crate::inode::{self, InodeRecord};
use crate::journal;
use crate::lanes::Lanes;
use crate::layout::{
    self, Allocator, Run, BLOCKS_PER_GROUP, BLOCK_SIZE, INODES_PER_BLOCK, INODE_SIZE,
};
use crate::superblock::{GroupDesc, Superblock, FIRST_INO, JOURNAL_INO};
use crate::tree::{Extent, Kind, Node, NodeId, Tree, ROOT};

const MAX_INODES_PER_GROUP: u64 = BLOCKS_PER_GROUP;
use crate::xattr;
use crate::Error;

/// Free space to leave when the size is not fixed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Free {
    Bytes(u64),
    /// Percent of the filesystem's size left free.
    Percent(f64),
}

impl Default for Free {
    fn default() -> Self {
        Free::Percent(5.0)
    }
}

/// How to build the filesystem.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Fixed filesystem size in bytes (a multiple of 4096); `None` sizes it to
    /// the content plus `free`.
    pub size: Option<u64>,
    pub free: Free,
    /// Volume label, at most 16 bytes.
    pub label: String,
    /// Filesystem UUID; derived from the content when `None`.
    pub uuid: Option<[u8; 16]>,
    /// Write an empty jbd2 journal (what mkfs.ext4 does by default).
    pub journal: bool,
    /// The filesystem's own times (`SOURCE_DATE_EPOCH`); when `None`, the
    /// newest mtime in the tree that is not in the future, so the same tree
    /// gives the same image.
    pub fs_time: Option<i64>,
    /// When the size follows the content: no block past this many bytes
    /// is ever written, so content that would make a larger image fails as
    /// it comes (`Error::NoSpace`), before it takes the disk.
    pub max_bytes: Option<u64>,
    /// The owner (uid and gid) of directories the tree has without an
    /// entry of their own (the root, a parent no entry names): root, or
    /// for an image made to be seen from a user namespace, its root's id.
    pub implicit_owner: u32,
}

/// What `finish` wrote.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Inodes in use, reserved ones excluded.
    pub inodes: u64,
    /// Directory entries, the root included.
    pub entries: u64,
    /// Bytes of regular-file content (apparent sizes).
    pub file_bytes: u64,
    pub blocks: u64,
    pub free_blocks: u64,
}

impl Summary {
    pub fn image_bytes(&self) -> u64 {
        self.blocks * BLOCK_SIZE as u64
    }
}

/// Writes an ext4 image into a file.
pub struct Writer {
    out: BlockOut,
    alloc: Allocator,
    tree: Tree,
    opts: Options,
    label: [u8; 16],
    /// Lanes hold the cursor.
    lanes_out: bool,
    /// Blocks written and then not used, zeroed at the end.
    discarded: Vec<Run>,
}

/// Minimum headroom when sizing to content: 1 MiB.
const MIN_FREE_BLOCKS: u64 = 256;

impl Writer {
    /// Starts an image in `file` (which should be empty).
    pub fn new(file: File, opts: Options) -> Result<Self, Error> {
        let mut label = [0u8; 16];
        if opts.label.len() > 16 {
            return Err(Error::Invalid(format!(
                "the label {:?} is longer than 16 bytes",
                opts.label
            )));
        }
        label[..opts.label.len()].copy_from_slice(opts.label.as_bytes());
        let (gdt_reserve, limit) = match opts.size {
            Some(size) => {
                if !size.is_multiple_of(BLOCK_SIZE as u64) {
                    return Err(Error::Invalid(format!(
                        "the size {size} is not a multiple of {BLOCK_SIZE}"
                    )));
                }
                let blocks = size / BLOCK_SIZE as u64;
                if blocks > layout::MAX_BLOCKS {
                    return Err(Error::Invalid(format!(
                        "the size {size} is over ext4's 16 TiB limit without the 64bit feature"
                    )));
                }
                (
                    layout::gdt_blocks(blocks.div_ceil(BLOCKS_PER_GROUP)),
                    blocks,
                )
            }
            None => (
                layout::DEFAULT_GDT_RESERVE,
                opts.max_bytes.map_or(layout::MAX_BLOCKS, |m| {
                    (m / BLOCK_SIZE as u64).min(layout::MAX_BLOCKS)
                }),
            ),
        };
        Ok(Writer {
            out: BlockOut::new(file),
            alloc: Allocator::new(gdt_reserve, limit),
            tree: Tree::new(),
            opts,
            label,
            lanes_out: false,
            discarded: Vec::new(),
        })
    }

    /// Creates a directory, or updates the metadata of an existing one.
    pub fn mkdir(&mut self, path: &[u8], meta: Metadata) -> Result<(), Error> {
        self.tree.mkdir(path, meta).map(drop)
    }

    /// Starts a regular file; write its content with the returned writer and
    /// call [`FileWriter::finish`]. Until then the file is not in the tree.
    pub fn file(&mut self, path: &[u8], meta: Metadata) -> Result<FileWriter<'_>, Error> {
        crate::tree::components(path)?;
        self.check_no_lanes()?;
        Ok(FileWriter {
            w: self,
            meta,
            content: Content::new(path),
        })
    }

    /// Puts a file whose content a lane wrote into the tree (replacing any
    /// entry there).
    pub fn add_file(&mut self, path: &[u8], meta: Metadata, data: FileData) -> Result<(), Error> {
        let kind = Kind::File {
            size: data.size,
            extents: data.extents,
            content_hash: data.content_hash,
        };
        self.insert(path, meta, kind)
    }

    /// Content written but not used (masked by an upper layer): its blocks
    /// stay free and are zeroed when the image is finished, so nothing of
    /// it is left in the image.
    pub fn discard(&mut self, data: FileData) {
        self.discarded
            .extend(crate::tree::extent_runs(&data.extents));
    }

    /// Lets `count` threads write file data at once ([`Lanes`]); the writer
    /// itself writes no data until [`Writer::join_lanes`].
    pub fn lanes(&mut self, count: usize) -> Result<Lanes, Error> {
        self.check_no_lanes()?;
        // Lanes write beside the writer thread, never where it does.
        let lanes = Lanes::new(self.alloc.clone(), count.max(1), self.out.file())?;
        self.lanes_out = true;
        Ok(lanes)
    }

    /// Takes the cursor back from the lanes (all of them ended).
    pub fn join_lanes(&mut self, lanes: Lanes) {
        self.alloc = lanes.into_allocator();
        self.lanes_out = false;
    }

    fn cursor(&mut self) -> Cursor<'_> {
        Cursor {
            alloc: &mut self.alloc,
            out: &mut self.out,
        }
    }

    fn check_no_lanes(&self) -> Result<(), Error> {
        if self.lanes_out {
            return Err(Error::Invalid(
                "the writer's cursor is with its lanes until they are joined".into(),
            ));
        }
        Ok(())
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &[u8], target: &[u8], meta: Metadata) -> Result<(), Error> {
        if target.is_empty() || target.len() >= BLOCK_SIZE {
            return Err(Error::path(
                path,
                format!(
                    "is a symlink whose target is {} bytes long (1 to {} allowed)",
                    target.len(),
                    BLOCK_SIZE - 1
                ),
            ));
        }
        self.insert(path, meta, Kind::Symlink(target.into()))
    }

    /// Adds a character or block device.
    pub fn device(
        &mut self,
        path: &[u8],
        kind: DeviceKind,
        major: u32,
        minor: u32,
        meta: Metadata,
    ) -> Result<(), Error> {
        if major >= 1 << 12 || minor >= 1 << 20 {
            return Err(Error::path(path, format!("has device number {major}:{minor}, beyond ext4's 12-bit major and 20-bit minor")));
        }
        self.insert(path, meta, Kind::Device(kind, major, minor))
    }

    pub fn fifo(&mut self, path: &[u8], meta: Metadata) -> Result<(), Error> {
        self.insert(path, meta, Kind::Fifo)
    }

    pub fn socket(&mut self, path: &[u8], meta: Metadata) -> Result<(), Error> {
        self.insert(path, meta, Kind::Socket)
    }

    /// Adds `path` as another name of the existing non-directory `target`.
    pub fn hardlink(&mut self, path: &[u8], target: &[u8]) -> Result<(), Error> {
        self.tree.link(path, target)
    }

    /// Moves the entries of directory `from` into directory `to` (created if
    /// missing); names `to` already has keep their entries. File data does not
    /// move: only the tree changes.
    pub fn move_children(&mut self, from: &[u8], to: &[u8]) -> Result<(), Error> {
        self.tree.move_children(from, to)
    }

    /// Removes the directory at `path` if nothing is in it; answers
    /// whether it did.
    pub fn remove_empty_dir(&mut self, path: &[u8]) -> Result<bool, Error> {
        self.tree.remove_empty_dir(path)
    }

    /// What the tree has at `path` (symlinks not followed), for callers
    /// that add entries by what the content already has.
    pub fn entry(&self, path: &[u8]) -> Result<Option<EntryKind<'_>>, Error> {
        Ok(self
            .tree
            .lookup(path)?
            .map(|id| match &self.tree.node(id).kind {
                Kind::Dir(_) => EntryKind::Dir,
                Kind::File { .. } => EntryKind::File,
                Kind::Symlink(target) => EntryKind::Symlink(target),
                _ => EntryKind::Other,
            }))
    }

    /// The filesystem's time: `fs_time` if given, else the newest mtime in
    /// the content that is not in the future (so the same content gives the
    /// same image).
    pub fn content_time(&self) -> i64 {
        if let Some(t) = self.opts.fs_time {
            return t;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        // Only entries still named count: a replaced file's time is not the
        // content's.
        let mut newest = 0;
        let mut stack = vec![crate::tree::ROOT];
        while let Some(id) = stack.pop() {
            let node = self.tree.node(id);
            if node.meta.mtime.secs <= now {
                newest = newest.max(node.meta.mtime.secs);
            }
            if let Kind::Dir(children) = &node.kind {
                stack.extend(children.values());
            }
        }
        newest
    }

    fn insert(&mut self, path: &[u8], meta: Metadata, kind: Kind) -> Result<(), Error> {
        self.tree
            .insert(
                path,
                Node {
                    meta,
                    kind,
                    implicit: false,
                },
            )
            .map(drop)
    }

    /// Completes the image: metadata after the data, then the superblocks.
    pub fn finish(self) -> Result<(Summary, File), Error> {
        self.check_no_lanes()?;
        Finisher::run(self)
    }
}

/// The kind of an entry already in the tree.
#[derive(Debug, PartialEq, Eq)]
pub enum EntryKind<'a> {
    Dir,
    File,
    Symlink(&'a [u8]),
    Other,
}

/// Streams one regular file's content into the image.
pub struct FileWriter<'w> {
    w: &'w mut Writer,
    meta: Metadata,
    content: Content,
}

/// The writer's own cursor, one block at a time.
struct Cursor<'a> {
    alloc: &'a mut Allocator,
    out: &'a mut BlockOut,
}

impl Place for Cursor<'_> {
    fn place(&mut self, _logical: u64, block: &[u8]) -> Result<u32, Error> {
        let phys = self.alloc.one()?;
        self.out.write(u64::from(phys), block)?;
        Ok(phys)
    }
}

impl FileWriter<'_> {
    /// Appends content.
    pub fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.content.write(data, &mut self.w.cursor())
    }

    /// Appends `len` bytes of zeros as a hole.
    pub fn skip(&mut self, len: u64) -> Result<(), Error> {
        self.content.skip(len, &mut self.w.cursor())
    }

    /// Ends the file and puts it in the tree (replacing any entry there).
    pub fn finish(self) -> Result<(), Error> {
        let FileWriter { w, meta, content } = self;
        let path = content.path().to_vec();
        let data = content.finish(&mut w.cursor())?;
        w.add_file(&path, meta, data)
    }
}

impl ContentSink for FileWriter<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        FileWriter::write(self, data)
    }

    fn skip(&mut self, len: u64) -> Result<(), Error> {
        FileWriter::skip(self, len)
    }
}

/// The work of `finish`, in order.
struct Finisher {
    w: Writer,
    /// Inode number of each node (0: unreachable).
    ino: Vec<u32>,
    /// Nodes in inode order (from `FIRST_INO`), the root first.
    order: Vec<NodeId>,
    links: Vec<u32>,
    parent: Vec<NodeId>,
    /// Inode table contents, inode 1 first.
    itable: Vec<u8>,
    /// Every block in use besides the fixed superblock/descriptor regions.
    used: Vec<Run>,
    dirs: Vec<u32>,
    xattr_blocks: Vec<(Vec<u8>, u32, u32)>,
    xattr_index: HashMap<Vec<u8>, usize>,
    fs_seed: u32,
    file_bytes: u64,
    entries: u64,
}

impl Finisher {
    fn run(w: Writer) -> Result<(Summary, File), Error> {
        let n = w.tree.nodes.len();
        let mut f = Finisher {
            w,
            ino: vec![0; n],
            order: Vec::new(),
            links: vec![0; n],
            parent: vec![ROOT; n],
            itable: Vec::new(),
            used: Vec::new(),
            dirs: Vec::new(),
            xattr_blocks: Vec::new(),
            xattr_index: HashMap::new(),
            fs_seed: 0,
            file_bytes: 0,
            entries: 1,
        };
        f.number_inodes();
        let fs_time = f.fs_time();
        f.fill_implicit(fs_time);
        let (uuid, hash_seed) = f.identity();
        f.fs_seed = checksum::fs_seed(&uuid);
        let max_ino = FIRST_INO - 1 + (f.order.len() as u32 - 1);
        f.itable = vec![0u8; max_ino as usize * INODE_SIZE];
        for i in 0..f.order.len() {
            f.encode_node(f.order[i], &hash_seed)?;
        }
        let journal = if f.w.opts.journal {
            Some(f.journal(&uuid, fs_time)?)
        } else {
            None
        };
        f.write_tables(max_ino, fs_time, uuid, hash_seed, journal)
    }

    /// Depth-first, children in name order; a directory's entries get
    /// consecutive numbers. Counts links and directory entries on the way.
    fn number_inodes(&mut self) {
        let tree = &self.w.tree;
        self.ino[ROOT as usize] = 2;
        self.order.push(ROOT);
        let mut next = FIRST_INO;
        let mut stack = vec![ROOT];
        while let Some(dir) = stack.pop() {
            let Kind::Dir(children) = &tree.node(dir).kind else {
                unreachable!()
            };
            let mut subdirs = Vec::new();
            for &child in children.values() {
                self.entries += 1;
                self.links[child as usize] += 1;
                if self.ino[child as usize] == 0 {
                    self.ino[child as usize] = next;
                    next += 1;
                    self.order.push(child);
                    self.parent[child as usize] = dir;
                }
                if matches!(tree.node(child).kind, Kind::Dir(_)) {
                    subdirs.push(child);
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
    }

    fn fs_time(&self) -> i64 {
        self.w.content_time()
    }

    fn fill_implicit(&mut self, fs_time: i64) {
        let owner = self.w.opts.implicit_owner;
        for &id in &self.order {
            let node = self.w.tree.node_mut(id);
            if node.implicit {
                node.meta = Metadata::root_owned(0o755, fs_time);
                node.meta.uid = owner;
                node.meta.gid = owner;
            }
        }
    }

    /// UUID and hash seed: the given UUID, or both derived from everything the
    /// image holds, so the same tree gives the same image.
    fn identity(&self) -> ([u8; 16], [u32; 4]) {
        let mut h = Xxh3::new();
        for &id in &self.order {
            let node = self.w.tree.node(id);
            let m = &node.meta;
            h.write(&self.ino[id as usize].to_le_bytes());
            h.write(&m.mode.to_le_bytes());
            h.write(&m.uid.to_le_bytes());
            h.write(&m.gid.to_le_bytes());
            for t in [m.atime, m.mtime, m.ctime] {
                h.write(&t.secs.to_le_bytes());
                h.write(&t.nanos.to_le_bytes());
            }
            for x in &m.xattrs {
                h.write(&(x.name.len() as u64).to_le_bytes());
                h.write(&x.name);
                h.write(&(x.value.len() as u64).to_le_bytes());
                h.write(&x.value);
            }
            match &node.kind {
                Kind::Dir(children) => {
                    h.write(b"d");
                    for (name, &child) in children {
                        h.write(&(name.len() as u64).to_le_bytes());
                        h.write(name);
                        h.write(&self.ino[child as usize].to_le_bytes());
                    }
                }
                Kind::File { content_hash, .. } => {
                    h.write(b"f");
                    h.write(&content_hash.to_le_bytes());
                }
                Kind::Symlink(target) => {
                    h.write(b"l");
                    h.write(target);
                }
                Kind::Device(kind, major, minor) => {
                    h.write(if *kind == DeviceKind::Char {
                        b"c"
                    } else {
                        b"b"
                    });
                    h.write(&major.to_le_bytes());
                    h.write(&minor.to_le_bytes());
                }
                Kind::Fifo => h.write(b"p"),
                Kind::Socket => h.write(b"s"),
            }
        }
        h.write(self.w.opts.label.as_bytes());
        let digest = h.finish_128().to_le_bytes();
        let uuid = self.w.opts.uuid.unwrap_or_else(|| {
            let mut u = digest;
            u[6] = (u[6] & 0x0f) | 0x80; // version 8: custom, content-derived
            u[8] = (u[8] & 0x3f) | 0x80; // RFC 4122 variant
            u
        });
        let seed_bytes = Xxh3::oneshot_with_seed(0x6275_696c_6465_7264, &digest).to_le_bytes();
        let mut seed = [0u32; 4];
        for (i, w) in seed.iter_mut().enumerate() {
            *w = u32::from_le_bytes(seed_bytes[4 * i..4 * i + 4].try_into().unwrap());
        }
        (uuid, seed)
    }

    /// Places `blocks` (logical order) in new runs of the image; returns the
    /// extents mapping them.
    fn place_blocks(&mut self, blocks: &[Vec<u8>]) -> Result<Vec<Extent>, Error> {
        let runs = self.w.alloc.runs(blocks.len() as u64)?;
        let mut extents = Vec::with_capacity(runs.len());
        let mut logical = 0u32;
        for run in runs {
            for i in 0..run.len {
                self.w
                    .out
                    .write(u64::from(run.start + i), &blocks[(logical + i) as usize])?;
            }
            extents.push(Extent {
                logical,
                start: run.start,
                len: run.len,
            });
            logical += run.len;
        }
        Ok(extents)
    }

    /// The i_block of an extent-mapped inode, its tree blocks written and
    /// counted; returns (i_block, blocks used).
    fn map_extents(&mut self, extents: &[Extent], ino: u32) -> Result<([u8; 60], u64), Error> {
        let seed = checksum::inode_seed(self.fs_seed, ino, 0);
        let tree = extent::build(extents, &mut self.w.alloc, seed)?;
        for (block, bytes) in &tree.blocks {
            self.w.out.write(u64::from(*block), bytes)?;
            self.used.push(Run {
                start: *block,
                len: 1,
            });
        }
        let data: u64 = extents.iter().map(|e| u64::from(e.len)).sum();
        self.used.extend(crate::tree::extent_runs(extents));
        Ok((tree.i_block, data + tree.blocks.len() as u64))
    }

    fn dir_children(&self, id: NodeId) -> Vec<Child<'_>> {
        let tree = &self.w.tree;
        let Kind::Dir(children) = &tree.node(id).kind else {
            unreachable!()
        };
        children
            .iter()
            .map(|(name, &child)| Child {
                name,
                ino: self.ino[child as usize],
                file_type: match &tree.node(child).kind {
                    Kind::Dir(_) => dir::FT_DIR,
                    Kind::File { .. } => dir::FT_REG,
                    Kind::Symlink(_) => dir::FT_SYMLINK,
                    Kind::Device(DeviceKind::Char, ..) => dir::FT_CHR,
                    Kind::Device(DeviceKind::Block, ..) => dir::FT_BLK,
                    Kind::Fifo => dir::FT_FIFO,
                    Kind::Socket => dir::FT_SOCK,
                },
            })
            .collect()
    }

    /// A path naming `id`, for error messages (walks up through the parent
    /// each node was first found in).
    fn path_of(&self, mut id: NodeId) -> Vec<u8> {
        let mut parts: Vec<&[u8]> = Vec::new();
        while id != ROOT {
            let parent = self.parent[id as usize];
            let Kind::Dir(children) = &self.w.tree.node(parent).kind else {
                unreachable!()
            };
            if let Some((name, _)) = children.iter().find(|(_, &c)| c == id) {
                parts.push(name);
            }
            id = parent;
        }
        let mut p = Vec::new();
        for part in parts.iter().rev() {
            p.push(b'/');
            p.extend_from_slice(part);
        }
        if p.is_empty() {
            p.push(b'/');
        }
        p
    }

    fn encode_node(&mut self, id: NodeId, hash_seed: &[u32; 4]) -> Result<(), Error> {
        let ino = self.ino[id as usize];
        let node = self.w.tree.node(id);
        let meta = node.meta.clone();
        let mut rec = InodeRecord {
            uid: meta.uid,
            gid: meta.gid,
            atime: meta.atime,
            ctime: meta.ctime,
            mtime: meta.mtime,
            crtime: meta.mtime,
            links: self.links[id as usize].min(u32::from(u16::MAX)) as u16,
            ..Default::default()
        };
        let perm = meta.mode & 0o7777;
        match &node.kind {
            Kind::Dir(children) => {
                let subdirs = children
                    .values()
                    .filter(|&&c| matches!(self.w.tree.node(c).kind, Kind::Dir(_)))
                    .count();
                let links = 2 + subdirs;
                // dir_nlink: past the 16-bit limit a directory's count is 1.
                rec.links = if links >= 65000 { 1 } else { links as u16 };
                rec.mode = inode::S_IFDIR | perm;
                let parent = self.ino[self.parent[id as usize] as usize];
                let seed = checksum::inode_seed(self.fs_seed, ino, 0);
                let blocks = dir::encode(ino, parent, &self.dir_children(id), hash_seed, seed)
                    .map_err(|e| e.at(&self.path_of(id)))?;
                if blocks.len() > 1 {
                    rec.flags |= inode::EXT4_INDEX_FL;
                }
                rec.size = (blocks.len() * BLOCK_SIZE) as u64;
                let extents = self.place_blocks(&blocks)?;
                let (i_block, count) = self.map_extents(&extents, ino)?;
                rec.flags |= inode::EXT4_EXTENTS_FL;
                rec.i_block = i_block;
                rec.sectors = count * 8;
                self.dirs.push(ino);
            }
            Kind::File { size, extents, .. } => {
                rec.mode = inode::S_IFREG | perm;
                rec.size = *size;
                self.file_bytes += size;
                let extents = extents.clone();
                let (i_block, count) = self.map_extents(&extents, ino)?;
                rec.flags = inode::EXT4_EXTENTS_FL;
                rec.i_block = i_block;
                rec.sectors = count * 8;
            }
            Kind::Symlink(target) => {
                rec.mode = inode::S_IFLNK | 0o777;
                rec.size = target.len() as u64;
                if target.len() < 60 {
                    rec.i_block[..target.len()].copy_from_slice(target);
                } else {
                    let block = target.to_vec();
                    let extents = self.place_blocks(&[block])?;
                    let (i_block, count) = self.map_extents(&extents, ino)?;
                    rec.flags = inode::EXT4_EXTENTS_FL;
                    rec.i_block = i_block;
                    rec.sectors = count * 8;
                }
            }
            Kind::Device(kind, major, minor) => {
                rec.mode = perm
                    | if *kind == DeviceKind::Char {
                        inode::S_IFCHR
                    } else {
                        inode::S_IFBLK
                    };
                rec.i_block = inode::device_i_block(*major, *minor);
            }
            Kind::Fifo => rec.mode = inode::S_IFIFO | perm,
            Kind::Socket => rec.mode = inode::S_IFSOCK | perm,
        }
        if !meta.xattrs.is_empty() {
            let placement = xattr::to_disk(&meta.xattrs)
                .and_then(|disk| xattr::place(&disk))
                .map_err(|e| e.at(&self.path_of(id)))?;
            rec.inline_xattrs = placement.inline;
            if let Some(block) = placement.block {
                let idx = match self.xattr_index.get(&block) {
                    Some(&idx) => idx,
                    None => {
                        let nr = self.w.alloc.one()?;
                        self.used.push(Run { start: nr, len: 1 });
                        self.xattr_blocks.push((block.clone(), nr, 0));
                        self.xattr_index.insert(block, self.xattr_blocks.len() - 1);
                        self.xattr_blocks.len() - 1
                    }
                };
                self.xattr_blocks[idx].2 += 1;
                rec.xattr_block = self.xattr_blocks[idx].1;
                rec.sectors += 8;
            }
        }
        let at = (ino as usize - 1) * INODE_SIZE;
        self.itable[at..at + INODE_SIZE].copy_from_slice(&rec.encode(ino, self.fs_seed));
        Ok(())
    }

    /// Lays out the journal: a superblock in its first block, the rest
    /// allocated but never written. Returns its i_block and size.
    fn journal(&mut self, uuid: &[u8; 16], fs_time: i64) -> Result<([u8; 60], u64), Error> {
        let estimate = match self.w.opts.size {
            Some(size) => size / BLOCK_SIZE as u64,
            None => self.w.alloc.next() * 21 / 20,
        };
        let blocks = journal::default_blocks(estimate);
        let runs = self.w.alloc.runs(blocks)?;
        self.w.out.write(
            u64::from(runs[0].start),
            &journal::superblock(blocks as u32, uuid),
        )?;
        let mut extents = Vec::with_capacity(runs.len());
        let mut logical = 0;
        for r in runs {
            extents.push(Extent {
                logical,
                start: r.start,
                len: r.len,
            });
            logical += r.len;
        }
        let (i_block, count) = self.map_extents(&extents, JOURNAL_INO)?;
        let t = Timestamp::new(fs_time, 0);
        let rec = InodeRecord {
            mode: inode::S_IFREG | 0o600,
            size: blocks * BLOCK_SIZE as u64,
            atime: t,
            ctime: t,
            mtime: t,
            crtime: t,
            links: 1,
            sectors: count * 8,
            flags: inode::EXT4_EXTENTS_FL,
            i_block,
            ..Default::default()
        };
        let at = (JOURNAL_INO as usize - 1) * INODE_SIZE;
        self.itable[at..at + INODE_SIZE].copy_from_slice(&rec.encode(JOURNAL_INO, self.fs_seed));
        Ok((i_block, blocks * BLOCK_SIZE as u64))
    }

    /// Chooses the group count and inodes per group, places bitmaps and
    /// inode tables, and returns the plan.
    fn plan(&self, max_ino: u32) -> Result<Plan, Error> {
        let fixed = self.w.opts.size.map(|s| s / BLOCK_SIZE as u64);
        let mut groups = self
            .w
            .alloc
            .next()
            .div_ceil(BLOCKS_PER_GROUP)
            .max(u64::from(max_ino).div_ceil(MAX_INODES_PER_GROUP));
        if let Some(total) = fixed {
            groups = total.div_ceil(BLOCKS_PER_GROUP);
        }
        loop {
            let mut alloc = self.w.alloc.clone();
            let gdt = layout::gdt_blocks(groups);
            if gdt + 1 > alloc.reserve() {
                return Err(Error::Invalid(format!(
                    "the image needs {groups} block groups, more than the {} its descriptor table was sized for; give a fixed --size",
                    (alloc.reserve() - 1) * layout::DESCS_PER_BLOCK
                )));
            }
            // Inodes: those in use plus one per 16 KiB of free space (mke2fs's
            // default ratio), at least 16 spare.
            let free_estimate = match fixed {
                Some(total) => total.saturating_sub(alloc.next()),
                None => self.headroom(alloc.next()),
            };
            let wanted = u64::from(max_ino) + (free_estimate / 4).max(16);
            let ipg = wanted
                .div_ceil(groups)
                .next_multiple_of(u64::from(INODES_PER_BLOCK))
                .clamp(16, MAX_INODES_PER_GROUP);
            if ipg * groups < u64::from(max_ino) {
                if fixed.is_some() {
                    return Err(Error::Invalid(format!("{max_ino} inodes do not fit in a filesystem of this --size; make it larger")));
                }
                groups += 1;
                continue;
            }
            if ipg * groups > u64::from(u32::MAX) {
                return Err(Error::Invalid(
                    "the filesystem would have more than 2^32 inodes".into(),
                ));
            }
            let block_bitmaps = alloc.runs(groups)?;
            let inode_bitmaps = alloc.runs(groups)?;
            let table_blocks = ipg / u64::from(INODES_PER_BLOCK);
            let mut tables = Vec::with_capacity(groups as usize);
            for _ in 0..groups {
                tables.push(alloc.contiguous(table_blocks)?);
            }
            let end = alloc.next();
            let mut total = match fixed {
                Some(total) => total,
                None => (end + self.headroom(end)).max((groups - 1) * BLOCKS_PER_GROUP + 1),
            };
            if total > layout::MAX_BLOCKS {
                return Err(Error::Invalid(
                    "the filesystem would exceed ext4's 16 TiB limit without the 64bit feature"
                        .into(),
                ));
            }
            let needed_groups = total.div_ceil(BLOCKS_PER_GROUP);
            if needed_groups > groups {
                groups = needed_groups;
                continue;
            }
            // A last group too small for its superblock copy: grow into it
            // when sizing freely, drop it when the size is fixed.
            let last = groups - 1;
            let last_len = total - last * BLOCKS_PER_GROUP;
            if layout::has_super(last) && last_len <= 1 + gdt {
                if fixed.is_some() {
                    if last == 0 {
                        return Err(Error::Invalid(
                            "the --size is too small for any filesystem".into(),
                        ));
                    }
                    groups -= 1;
                    continue;
                }
                total = last * BLOCKS_PER_GROUP + 2 + gdt;
            }
            let total = if fixed.is_some() {
                total.min(groups * BLOCKS_PER_GROUP)
            } else {
                total
            };
            return Ok(Plan {
                groups,
                ipg: ipg as u32,
                total,
                block_bitmaps: expand(&block_bitmaps),
                inode_bitmaps: expand(&inode_bitmaps),
                tables,
                table_blocks: table_blocks as u32,
            });
        }
    }

    /// Free blocks to leave beyond `used` when sizing to the content.
    fn headroom(&self, used: u64) -> u64 {
        let extra = match self.w.opts.free {
            Free::Bytes(b) => b.div_ceil(BLOCK_SIZE as u64),
            Free::Percent(p) => {
                let p = p.clamp(0.0, 99.0) / 100.0;
                ((used as f64) / (1.0 - p) - used as f64).ceil() as u64
            }
        };
        extra.max(MIN_FREE_BLOCKS)
    }

    fn write_tables(
        mut self,
        max_ino: u32,
        fs_time: i64,
        uuid: [u8; 16],
        hash_seed: [u32; 4],
        journal: Option<([u8; 60], u64)>,
    ) -> Result<(Summary, File), Error> {
        let plan = self.plan(max_ino)?;
        let Plan {
            groups, ipg, total, ..
        } = plan;
        if self.w.opts.size.is_some() && plan.end_of_metadata() > total {
            return Err(Error::NoSpace {
                needed_blocks: plan.end_of_metadata(),
                available_blocks: total,
            });
        }
        let gdt = layout::gdt_blocks(groups);

        // Seal and write the xattr blocks now that their counts are known.
        for (block, nr, refs) in &mut self.xattr_blocks {
            xattr::seal_block(block, *refs, *nr, self.fs_seed);
            self.w.out.write(u64::from(*nr), block)?;
        }

        // Every used block, sorted, to build the block bitmaps from.
        let mut used = std::mem::take(&mut self.used);
        for g in 0..groups {
            if layout::has_super(g) {
                used.push(Run {
                    start: (g * BLOCKS_PER_GROUP) as u32,
                    len: 1 + gdt as u32,
                });
            }
            used.push(Run {
                start: plan.block_bitmaps[g as usize],
                len: 1,
            });
            used.push(Run {
                start: plan.inode_bitmaps[g as usize],
                len: 1,
            });
            used.push(Run {
                start: plan.tables[g as usize],
                len: plan.table_blocks,
            });
        }
        used.sort_by_key(|r| r.start);

        let dirs_per_group = {
            let mut v = vec![0u16; groups as usize];
            for &d in &self.dirs {
                v[((d - 1) / ipg) as usize] += 1;
            }
            v
        };
        let mut descs = Vec::with_capacity(groups as usize);
        let mut free_blocks_total = 0u64;
        let mut cursor = 0usize;
        let mut bitmap = vec![0u8; BLOCK_SIZE];
        for g in 0..groups {
            let start = g * BLOCKS_PER_GROUP;
            let end = (start + BLOCKS_PER_GROUP).min(total);
            bitmap.fill(0);
            let mut used_in_group = 0u64;
            // Runs are sorted and never overlap; a run may span groups.
            while cursor < used.len() && u64::from(used[cursor].start) < end {
                let r = used[cursor];
                let (rs, re) = (
                    u64::from(r.start).max(start),
                    (u64::from(r.start) + u64::from(r.len)).min(end),
                );
                for b in rs..re {
                    let bit = (b - start) as usize;
                    bitmap[bit / 8] |= 1 << (bit % 8);
                }
                used_in_group += re.saturating_sub(rs);
                if u64::from(r.start) + u64::from(r.len) > end {
                    break;
                }
                cursor += 1;
            }
            for bit in (end - start)..BLOCKS_PER_GROUP {
                bitmap[bit as usize / 8] |= 1 << (bit % 8);
            }
            let free = (end - start) - used_in_group;
            free_blocks_total += free;
            self.w
                .out
                .write(u64::from(plan.block_bitmaps[g as usize]), &bitmap)?;
            let block_bitmap_csum = checksum::crc32c_raw(self.fs_seed, &bitmap);

            // Inodes 1..=max_ino are all in use: a prefix of each group.
            let first = g * u64::from(ipg);
            let in_use = u64::from(max_ino).saturating_sub(first).min(u64::from(ipg));
            let mut ibitmap = vec![0u8; BLOCK_SIZE];
            for bit in 0..in_use as usize {
                ibitmap[bit / 8] |= 1 << (bit % 8);
            }
            for bit in ipg as usize..BLOCK_SIZE * 8 {
                ibitmap[bit / 8] |= 1 << (bit % 8);
            }
            self.w
                .out
                .write(u64::from(plan.inode_bitmaps[g as usize]), &ibitmap)?;
            let inode_bitmap_csum =
                checksum::crc32c_raw(self.fs_seed, &ibitmap[..ipg as usize / 8]);

            // The inode table: only blocks holding inodes are written.
            let table_bytes = ipg as usize * INODE_SIZE;
            let from = (first as usize * INODE_SIZE).min(self.itable.len());
            let to = (from + table_bytes).min(self.itable.len());
            for (i, chunk) in self.itable[from..to].chunks(BLOCK_SIZE).enumerate() {
                if !is_zero(chunk) {
                    self.w
                        .out
                        .write(u64::from(plan.tables[g as usize]) + i as u64, chunk)?;
                }
            }
            descs.push(GroupDesc {
                block_bitmap: plan.block_bitmaps[g as usize],
                inode_bitmap: plan.inode_bitmaps[g as usize],
                inode_table: plan.tables[g as usize],
                free_blocks: free as u16,
                free_inodes: (u64::from(ipg) - in_use) as u16,
                used_dirs: dirs_per_group[g as usize],
                block_bitmap_csum,
                inode_bitmap_csum,
                itable_unused: (u64::from(ipg) - in_use) as u16,
            });
        }

        let mut gdt_bytes = vec![0u8; (gdt as usize) * BLOCK_SIZE];
        for (g, d) in descs.iter().enumerate() {
            gdt_bytes[g * layout::DESC_SIZE..(g + 1) * layout::DESC_SIZE]
                .copy_from_slice(&d.encode(g as u32, self.fs_seed));
        }
        let inodes_count = u64::from(ipg) * groups;
        let sb = Superblock {
            inodes_count: inodes_count as u32,
            blocks_count: total as u32,
            free_blocks: free_blocks_total as u32,
            free_inodes: (inodes_count - u64::from(max_ino)) as u32,
            inodes_per_group: ipg,
            time: fs_time.clamp(0, i64::from(u32::MAX)) as u32,
            uuid,
            label: self.w.label,
            hash_seed,
            journal,
        };
        for g in (0..groups).filter(|&g| layout::has_super(g)) {
            let base = g * BLOCKS_PER_GROUP;
            self.w.out.write(base + 1, &gdt_bytes)?;
            let offset = if g == 0 {
                1024
            } else {
                base * BLOCK_SIZE as u64
            };
            self.w.out.write_at(offset, &sb.encode(g as u32))?;
        }
        let file = self.w.out.finish(total * BLOCK_SIZE as u64)?;
        crate::image::zero_runs(&file, &self.w.discarded)?;
        let summary = Summary {
            inodes: self.order.len() as u64,
            entries: self.entries,
            file_bytes: self.file_bytes,
            blocks: total,
            free_blocks: free_blocks_total,
        };
        Ok((summary, file))
    }
}

/// Where the bitmaps and inode tables go, and the final size.
struct Plan {
    groups: u64,
    ipg: u32,
    total: u64,
    block_bitmaps: Vec<u32>,
    inode_bitmaps: Vec<u32>,
    tables: Vec<u32>,
    table_blocks: u32,
}

impl Plan {
    fn end_of_metadata(&self) -> u64 {
        self.tables
            .iter()
            .map(|&t| u64::from(t) + u64::from(self.table_blocks))
            .max()
            .unwrap_or(0)
    }
}

fn expand(runs: &[Run]) -> Vec<u32> {
    runs.iter().flat_map(|r| r.start..r.start + r.len).collect()
}
