//! A build whose image layers are kept (`preserve_layers`): each layer
//! becomes a read-only disk in overlayfs form, taken from the layer store
//! when a build made it before (only the layers above the first one the
//! store lacks are read), and the image file is a small top disk: the
//! overlay's upper directory, with what the build adds (the init, its run
//! config, a rewritten package database), and the stage of builderd-init
//! that mounts the layers (`builderd_init::layered`).

use builderd_ext4::{EntryKind, FileWriter, Metadata, Target, Writer};
use builderd_flatten::{normalize, write_layer, Layer, PathKind, Select, Skeleton, Stats, Verdict};
use builderd_init::layered::{LAYERS_PATH, LOWER_DIR, MERGED_DIR, UPPER_DIR, WORK_DIR};
use builderd_init::{Layers, INIT_PATH};

use crate::event::{self, Reporter};
use crate::layer_store::{self, Applied, Store, Stored};

/// One layer's disk in the build.
#[derive(Clone, Debug)]
pub struct Disk {
    pub stored: Stored,
    /// Written by this build (else taken from the store).
    pub converted: bool,
}

/// The layers of a build, as disks.
pub struct Converted {
    pub disks: Vec<Disk>,
    /// The merged tree of all of them.
    pub tree: Skeleton,
    pub stats: Stats,
    /// The last layer's disk when this build converted it, still to store.
    pub unstored: Option<Unstored>,
}

/// A layer's disk written but not yet in the store.
pub struct Unstored {
    stored: Stored,
    disk: tempfile::NamedTempFile,
    tree_base: Option<String>,
    applied: Vec<Applied>,
}

impl Unstored {
    /// Stores the disk with `tree` on a thread of its own: the top disk is
    /// written and checksummed meanwhile. Join it before the artifact links
    /// the disk.
    pub fn store(
        self,
        store: Store,
        tree: Skeleton,
    ) -> std::thread::JoinHandle<anyhow::Result<()>> {
        std::thread::Builder::new()
            .name("layer-store".into())
            .spawn(move || {
                let Unstored {
                    mut stored,
                    disk,
                    tree_base,
                    applied,
                } = self;
                store.put(&mut stored, disk, &tree, tree_base.as_deref(), applied)
            })
            .expect("spawning the layer store's thread")
    }
}

impl Converted {
    /// The content's time: the newest mtime of all layers.
    pub fn time(&self) -> i64 {
        self.disks
            .iter()
            .map(|d| d.stored.newest_mtime)
            .max()
            .unwrap_or(0)
    }
}

/// Records the verdicts told of a layer, for its stored state.
struct Recording<'a> {
    inner: &'a dyn Select,
    applied: std::sync::Mutex<Vec<Applied>>,
}

impl Select for Recording<'_> {
    fn select(
        &self,
        path: &[u8],
        kind: &builderd_import::EntryKind,
        size: u64,
        meta: &mut Metadata,
    ) -> Verdict {
        self.inner.select(path, kind, size, meta)
    }

    fn applied(&self, verdict: Verdict, path: &[u8], size: u64, meta: &Metadata) {
        self.inner.applied(verdict, path, size, meta);
        self.applied
            .lock()
            .unwrap()
            .push(Applied::new(verdict, path, size, meta));
    }
}

/// What the layers taken from the store give: their verdicts (told to
/// `policy`), the merged tree up to the last of them and the key of the
/// whole tree it is kept over.
fn taken(
    disks: &[Disk],
    layers: &[Layer<'_>],
    store: &Store,
    policy: Option<&dyn Select>,
    reporter: &dyn Reporter,
) -> anyhow::Result<(Skeleton, Option<String>)> {
    let mut verdicts = Vec::new();
    for disk in disks.iter().filter(|d| d.stored.applied > 0) {
        verdicts.extend(store.applied(&disk.stored.key)?);
    }
    let (tree, base) = match disks.last() {
        Some(last) => {
            let (tree, base) = store.tree(&last.stored)?;
            (tree, Some(base))
        }
        None => (Skeleton::default(), None),
    };
    // Told only once all of it was read: a damaged entry tells nothing.
    if let Some(select) = policy {
        for a in &verdicts {
            select.applied(a.verdict(), &a.path, a.size, &a.meta());
        }
    }
    for (layer, _) in layers.iter().zip(disks) {
        event::info(
            reporter,
            format!("layer {}: its stored disk is used", layer.name),
        );
    }
    Ok((tree, base))
}

fn store_err(layer: &Layer<'_>, e: anyhow::Error) -> builderd_flatten::Error {
    builderd_flatten::Error::Open {
        layer: layer.name.clone(),
        source: std::io::Error::other(format!("the layer store: {e:#}")),
    }
}

/// What a layer's key has besides the chain: the policy's identity, and
/// for a layer whose entries are adjusted, what they are adjusted by.
pub struct Keyed<'a> {
    pub policy: &'a str,
    pub adjusted: &'a str,
}

/// The layers as disks: `digests` name them, `policy` decides their
/// entries and `keyed` says what else makes each disk what it is.
pub fn convert(
    layers: &[Layer<'_>],
    digests: &[String],
    store: &Store,
    policy: Option<&dyn Select>,
    keyed: &Keyed<'_>,
    reporter: &dyn Reporter,
) -> Result<Converted, builderd_flatten::Error> {
    let Some(first) = layers.first() else {
        return Err(builderd_flatten::Error::Invalid {
            layer: String::new(),
            path: String::new(),
            reason: "the image has no layers to keep; build it without --preserve-layers".into(),
        });
    };
    let mut keys: Vec<String> = Vec::new();
    for (layer, digest) in layers.iter().zip(digests) {
        let adjust = if layer.adjust.is_some() {
            keyed.adjusted
        } else {
            ""
        };
        keys.push(layer_store::key(
            keys.last().map(String::as_str),
            digest,
            adjust,
            keyed.policy,
        ));
    }
    // The layers up to the first one the store lacks are taken as stored.
    let mut disks: Vec<Disk> = Vec::new();
    for key in &keys {
        match store.find(key) {
            Some(stored) => disks.push(Disk {
                stored,
                converted: false,
            }),
            None => break,
        }
    }
    let (mut tree, tree_base) = match taken(&disks, layers, store, policy, reporter) {
        Ok(t) => t,
        Err(e) => {
            // A damaged entry is made again, with every layer above it.
            event::warn(
                reporter,
                format!("the layer store's entry for {} is damaged ({e:#}); its layers are converted again", first.name),
            );
            disks.clear();
            (Skeleton::default(), None)
        }
    };
    let mut stats = Stats::default();
    let mut unstored = None;
    for (i, layer) in layers.iter().enumerate().skip(disks.len()) {
        let tmp = store.temp().map_err(|e| store_err(layer, e))?;
        let file = tmp
            .as_file()
            .try_clone()
            .map_err(|e| store_err(layer, e.into()))?;
        let mut w = Writer::new(
            file,
            builderd_ext4::Options {
                size: None,
                free: builderd_ext4::Free::Bytes(0),
                label: String::new(),
                uuid: None,
                // Read-only for ever: nothing to replay.
                journal: false,
                fs_time: None,
                max_bytes: None,
                implicit_owner: 0,
            },
        )?;
        let recording = policy.map(|inner| Recording {
            inner,
            applied: Default::default(),
        });
        let layer_stats = write_layer(
            layer,
            &mut w,
            recording.as_ref().map(|r| r as &dyn Select),
            &mut tree,
            0,
        )?;
        let (summary, file) = w.finish()?;
        drop(file);
        let sha256 = crate::checksum::sha256(tmp.path()).map_err(|e| store_err(layer, e))?;
        let mut stored = Stored::from_stats(
            keys[i].clone(),
            digests[i].clone(),
            sha256,
            summary.image_bytes(),
            &layer_stats,
        );
        let applied = recording
            .map(|r| r.applied.into_inner().unwrap())
            .unwrap_or_default();
        if i + 1 == layers.len() {
            // The last layer's tree is the image's: it is stored while the
            // build goes on (`Unstored::store`).
            unstored = Some(Unstored {
                stored: stored.clone(),
                disk: tmp,
                tree_base: tree_base.clone(),
                applied,
            });
        } else {
            store
                .put(&mut stored, tmp, &tree, tree_base.as_deref(), applied)
                .map_err(|e| store_err(layer, e))?;
        }
        stats.written += layer_stats.entries;
        stats.whiteouts += layer_stats.whiteouts;
        event::info(
            reporter,
            format!(
                "layer {} written as a disk of its own ({} entries, {} whiteouts, {} opaque directories)",
                layer.name, layer_stats.entries, layer_stats.whiteouts, layer_stats.opaque_dirs
            ),
        );
        disks.push(Disk {
            stored,
            converted: true,
        });
    }
    Ok(Converted {
        disks,
        tree,
        stats,
        unstored,
    })
}

/// The top disk as the build's additions see it: the merged tree of the
/// layers, with what is added written into the upper directory (and its
/// parents given the metadata the layers give them, which wins in an
/// overlay).
pub struct Top<'a> {
    pub w: &'a mut Writer,
    pub tree: &'a Skeleton,
    /// The content's time, as the flatten's writer would take it.
    pub time: i64,
}

fn upper(path: &[u8]) -> Vec<u8> {
    let path = normalize(path);
    let upper = UPPER_DIR.trim_start_matches('/').as_bytes();
    if path.is_empty() {
        upper.to_vec()
    } else {
        [upper, b"/", &path].concat()
    }
}

impl Top<'_> {
    fn parents(&mut self, path: &[u8]) -> Result<(), builderd_ext4::Error> {
        let path = normalize(path);
        let time = self.time;
        for (i, _) in path.iter().enumerate().filter(|(_, &b)| b == b'/') {
            let a = &path[..i];
            if self.w.entry(&upper(a))?.is_none() {
                let meta = self
                    .tree
                    .dir_meta(a)
                    .unwrap_or_else(|| Metadata::root_owned(0o755, time));
                self.w.mkdir(&upper(a), meta)?;
            }
        }
        Ok(())
    }
}

impl Target for Top<'_> {
    fn entry(&self, path: &[u8]) -> Result<Option<EntryKind<'_>>, builderd_ext4::Error> {
        if let Some(kind) = self.w.entry(&upper(path))? {
            return Ok(Some(kind));
        }
        Ok(self.tree.get(&normalize(path)).map(|kind| match kind {
            PathKind::Dir => EntryKind::Dir,
            PathKind::File => EntryKind::File,
            PathKind::Symlink(target) => EntryKind::Symlink(target),
            PathKind::Other => EntryKind::Other,
        }))
    }

    fn content_time(&self) -> i64 {
        self.time
    }

    fn mkdir(&mut self, path: &[u8], meta: Metadata) -> Result<(), builderd_ext4::Error> {
        self.parents(path)?;
        self.w.mkdir(&upper(path), meta)
    }

    fn file(
        &mut self,
        path: &[u8],
        meta: Metadata,
    ) -> Result<FileWriter<'_>, builderd_ext4::Error> {
        self.parents(path)?;
        self.w.file(&upper(path), meta)
    }

    fn symlink(
        &mut self,
        path: &[u8],
        target: &[u8],
        meta: Metadata,
    ) -> Result<(), builderd_ext4::Error> {
        self.parents(path)?;
        self.w.symlink(&upper(path), target, meta)
    }
}

/// Starts the top disk: the overlay's directories, the upper one with the
/// image's root metadata.
pub fn start_top(
    w: &mut Writer,
    tree: &Skeleton,
    layers: usize,
    time: i64,
) -> Result<(), builderd_ext4::Error> {
    let dir = |mode| Metadata::root_owned(mode, time);
    w.mkdir(b".builderd", dir(0o755))?;
    let root = tree.dir_meta(b"").unwrap_or_else(|| dir(0o755));
    w.mkdir(&upper(b""), root)?;
    for d in [WORK_DIR, LOWER_DIR, MERGED_DIR] {
        w.mkdir(d.trim_start_matches('/').as_bytes(), dir(0o755))?;
    }
    for i in 0..layers {
        w.mkdir(
            format!("{}/{i}", LOWER_DIR.trim_start_matches('/')).as_bytes(),
            dir(0o755),
        )?;
    }
    // Where the kernel mounts /dev when it boots the top disk itself.
    w.mkdir(b"dev", dir(0o755))
}

/// Gives the directories no layer describes the metadata the flatten gives
/// them (root's, 0755, the content's time): each layer's disk has them with
/// its own content's time, and the upper directory's wins.
pub fn imply_dirs(top: &mut Top<'_>) -> Result<(), builderd_ext4::Error> {
    let meta = Metadata::root_owned(0o755, top.time);
    for dir in top.tree.implied_dirs() {
        if !dir.is_empty() {
            top.mkdir(&dir, meta.clone())?;
        }
    }
    Ok(())
}

/// Ends the top disk: builderd-init's stage, which mounts the layers and
/// starts `init` (the image's, as the build installed it) in the overlay.
pub fn finish_top(
    w: &mut Writer,
    layers: usize,
    init: &str,
    time: i64,
) -> Result<(), builderd_ext4::Error> {
    let config = Layers {
        devices: (0..layers).map(builderd_init::layered::device).collect(),
        init: init.to_string(),
    };
    for (path, mode, data) in [
        (INIT_PATH, 0o755, builderd_rootfs::INIT.to_vec()),
        (
            LAYERS_PATH,
            0o644,
            serde_json::to_vec_pretty(&config).expect("a layers config always serialises"),
        ),
    ] {
        let mut f = w.file(
            path.trim_start_matches('/').as_bytes(),
            Metadata::root_owned(mode, time),
        )?;
        f.write(&data)?;
        f.finish()?;
    }
    Ok(())
}
