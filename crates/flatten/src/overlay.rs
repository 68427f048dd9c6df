//! The newest-first overlay pass and the hard-link fix-up.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::mpsc::Receiver;

use builderd_ext4::Writer;
use builderd_import::EntryKind;

use crate::layer::{adjusted, layer_err, open, Layer};
use crate::normalize::{ancestors, base, join, normalize, parent};
use crate::select::{Select, Verdict};
use crate::side_by_side::{self, Event, Item, MAX_LANES};
use crate::Error;

/// What the flatten did.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Entries written into the image.
    pub written: u64,
    /// Entries skipped because an upper layer masks them.
    pub masked: u64,
    pub whiteouts: u64,
    /// Hard links whose target was replaced above, written from their own
    /// layer's content.
    pub links_fixed: u64,
}

/// What upper layers (or, within a layer, earlier entries) decided a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Dir,
    /// A directory only implied by entries below it: a lower layer's
    /// directory entry may still give it metadata.
    ImplicitDir,
    NonDir,
    Whiteout,
}

/// The parent directory of the entries being read, and what is known of it
/// in this layer.
struct DirMemo {
    dir: Vec<u8>,
    /// Upper layers hide everything in it ([`Flatten::inside_masked`]).
    masked: bool,
    /// Its ancestors and itself are recorded, in `above` or this layer's map.
    implied: bool,
}

struct PendingLink {
    layer: usize,
    path: Vec<u8>,
    target: Vec<u8>,
    /// Its own entry's verdict: a link to be emptied is written apart.
    verdict: Verdict,
}

struct Flatten<'w, 'l, 'a, 's> {
    w: &'w mut Writer,
    layers: &'l [Layer<'a>],
    above: HashMap<Vec<u8>, State>,
    opaque_above: HashSet<Vec<u8>>,
    /// The layer each written non-directory came from.
    origin: HashMap<Vec<u8>, usize>,
    pending: Vec<PendingLink>,
    select: Option<&'s dyn Select>,
    /// Directories dropped by a verdict, removed at the end if empty.
    dropped_dirs: Vec<(Vec<u8>, Verdict, builderd_ext4::Metadata)>,
    stats: Stats,
}

/// Flattens `layers` (bottom first, as a manifest lists them) into `w`;
/// `select`, if given, decides what is left out or changed (see
/// [`Select`]); `progress` is told each layer as it is finished.
pub fn flatten<'a>(
    layers: &[Layer<'a>],
    w: &mut Writer,
    select: Option<&dyn Select>,
    progress: &dyn Fn(&Layer<'a>),
) -> Result<Stats, Error> {
    let lanes = w.lanes(layers.len().clamp(1, MAX_LANES))?;
    let (plan, receivers) = side_by_side::assign(layers, lanes.count());
    let mut f = Flatten {
        w,
        layers,
        above: HashMap::new(),
        opaque_above: HashSet::new(),
        origin: HashMap::new(),
        pending: Vec::new(),
        select,
        dropped_dirs: Vec::new(),
        stats: Stats::default(),
    };
    let passed = std::thread::scope(|scope| {
        for (index, order) in plan.into_iter().enumerate() {
            let lanes = &lanes;
            std::thread::Builder::new()
                .name(format!("flatten-lane-{index}"))
                .spawn_scoped(scope, move || {
                    side_by_side::run_lane(lanes, index, layers, order, select)
                })
                .expect("spawning a lane thread");
        }
        let passed: Result<(), Error> = (0..layers.len()).rev().try_for_each(|k| {
            f.layer(k, &receivers[k])?;
            progress(&layers[k]);
            Ok(())
        });
        // Lanes still reading stop at their next entry.
        drop(receivers);
        passed
    });
    f.w.join_lanes(lanes);
    passed?;
    f.resolve_links()?;
    f.remove_dropped_dirs()?;
    Ok(f.stats)
}

/// Moves the entries whose key `rekey` maps to a new key; a key already
/// taken keeps its value.
fn rekey_map<V>(map: &mut HashMap<Vec<u8>, V>, rekey: &dyn Fn(&[u8]) -> Option<Vec<u8>>) {
    let old: Vec<Vec<u8>> = map.keys().filter(|k| rekey(k).is_some()).cloned().collect();
    for key in old {
        let value = map.remove(&key).expect("listed just above");
        map.entry(rekey(&key).expect("listed just above"))
            .or_insert(value);
    }
}

fn is_whiteout_meta(name: &[u8]) -> bool {
    // AUFS's other special names (`.wh..wh.plnk`, `.wh..wh.aufs`) carry no
    // content of the image.
    name.starts_with(b".wh..wh.")
}

impl Flatten<'_, '_, '_, '_> {
    /// Is `path` (of an entry of kind `kind`) hidden by an upper layer?
    fn masked(&self, path: &[u8], is_dir: bool) -> bool {
        (!path.is_empty() && self.inside_masked(parent(path))) || self.itself_masked(path, is_dir)
    }

    /// Is everything in directory `dir` hidden by an upper layer: is `dir`
    /// or one of its ancestors a non-directory, a whiteout or opaque there?
    fn inside_masked(&self, dir: &[u8]) -> bool {
        let opaque = |a: &[u8]| !self.opaque_above.is_empty() && self.opaque_above.contains(a);
        opaque(b"")
            || ancestors(dir)
                .chain(Some(dir).filter(|d| !d.is_empty()))
                .any(|a| {
                    matches!(self.above.get(a), Some(State::NonDir | State::Whiteout)) || opaque(a)
                })
    }

    /// Is `path` itself taken by an upper layer (a directory only implied
    /// there still takes a directory's metadata)?
    fn itself_masked(&self, path: &[u8], is_dir: bool) -> bool {
        match self.above.get(path) {
            None => false,
            Some(State::ImplicitDir) => !is_dir,
            Some(_) => true,
        }
    }

    /// The next entry of layer `k` from its lane; `None` at its end.
    fn next_item(&self, k: usize, from: &Receiver<Event>) -> Result<Option<Item>, Error> {
        match from.recv() {
            Ok(Event::Item(item)) => Ok(Some(item)),
            Ok(Event::End) => Ok(None),
            Ok(Event::Failed(e)) => Err(e),
            Err(_) => Err(Error::Open {
                layer: self.layers[k].name.clone(),
                source: io::Error::other("its reading stopped before its end"),
            }),
        }
    }

    fn layer(&mut self, k: usize, from: &Receiver<Event>) -> Result<(), Error> {
        let mut here: HashMap<Vec<u8>, State> = HashMap::new();
        let mut opaque_here: HashSet<Vec<u8>> = HashSet::new();
        let mut whiteouts_here: Vec<Vec<u8>> = Vec::new();
        // A tar has a directory's entries together: what the layers above
        // say of the last parent seen is kept rather than looked up again
        // for each of them.
        let mut last_dir: Option<DirMemo> = None;
        while let Some(mut entry) = self.next_item(k, from)? {
            let path = std::mem::take(&mut entry.path);
            let name = base(&path);
            let skip = if name == b".wh..wh..opq" {
                opaque_here.insert(parent(&path).to_vec());
                self.stats.whiteouts += 1;
                true
            } else if is_whiteout_meta(name) {
                true
            } else if let Some(hidden) = name.strip_prefix(b".wh.") {
                whiteouts_here.push(join(parent(&path), hidden));
                self.stats.whiteouts += 1;
                true
            } else {
                false
            };
            if skip {
                self.discard(&mut entry);
                continue;
            }
            let is_dir = entry.kind == EntryKind::Dir;
            if let EntryKind::Symlink(target) = &entry.kind {
                if self.above.get(&path) == Some(&State::ImplicitDir) {
                    self.follow_link(&path, target)?;
                    // It moved entries of `above`.
                    last_dir = None;
                }
            }
            let dir = parent(&path);
            let memo = match &mut last_dir {
                Some(memo) if memo.dir == dir => memo,
                slot => slot.insert(DirMemo {
                    dir: dir.to_vec(),
                    masked: self.inside_masked(dir),
                    implied: false,
                }),
            };
            if (!path.is_empty() && memo.masked) || self.itself_masked(&path, is_dir) {
                self.stats.masked += 1;
                self.discard(&mut entry);
                continue;
            }
            if path.is_empty() && !is_dir {
                return Err(Error::Invalid {
                    layer: self.layers[k].name.clone(),
                    path: "/".into(),
                    reason: "the root is not a directory".into(),
                });
            }
            let meta = entry.meta.clone();
            let dropped = matches!(entry.verdict, Verdict::Drop(_));
            if let (Some(select), Some(_)) = (self.select, entry.verdict.rule()) {
                if entry.kind == EntryKind::Dir && dropped {
                    self.dropped_dirs
                        .push((path.clone(), entry.verdict, meta.clone()));
                } else {
                    select.applied(entry.verdict, &path, entry.size, &meta);
                }
            }
            let state = match &entry.kind {
                EntryKind::Dir => {
                    self.w.mkdir(&path, meta)?;
                    State::Dir
                }
                // Left out: it still hides what lower layers have there.
                _ if dropped => {
                    self.origin.remove(&path);
                    State::NonDir
                }
                EntryKind::File => {
                    let data = entry.data.take().expect("a lane writes every file");
                    self.w.add_file(&path, meta, data)?;
                    self.origin.insert(path.clone(), k);
                    State::NonDir
                }
                EntryKind::Symlink(target) => {
                    self.w.symlink(&path, target, meta)?;
                    self.origin.insert(path.clone(), k);
                    State::NonDir
                }
                EntryKind::Device(kind, major, minor) => {
                    self.w.device(&path, *kind, *major, *minor, meta)?;
                    self.origin.insert(path.clone(), k);
                    State::NonDir
                }
                EntryKind::Fifo => {
                    self.w.fifo(&path, meta)?;
                    self.origin.insert(path.clone(), k);
                    State::NonDir
                }
                EntryKind::Hardlink(target) => {
                    let target = normalize(target);
                    if here.get(&target) == Some(&State::NonDir)
                        && self.origin.get(&target) == Some(&k)
                        && !matches!(entry.verdict, Verdict::Empty(_))
                    {
                        self.w.hardlink(&path, &target)?;
                        self.origin.insert(path.clone(), k);
                    } else {
                        // The target is below, or was replaced above: decide
                        // at the end which content this link sees.
                        self.origin.remove(&path);
                        self.pending.push(PendingLink {
                            layer: k,
                            path: path.clone(),
                            target,
                            verdict: entry.verdict,
                        });
                    }
                    State::NonDir
                }
            };
            if !dropped || entry.kind == EntryKind::Dir {
                self.stats.written += 1;
            }
            here.insert(path.clone(), state);
            if !memo.implied {
                for a in ancestors(&path) {
                    if !self.above.contains_key(a) && !here.contains_key(a) {
                        here.insert(a.to_vec(), State::ImplicitDir);
                    }
                }
                memo.implied = true;
            }
        }
        // A whiteout masks lower layers only; an entry for the same path in
        // this layer stays, and a directory recreated here hides the lower
        // directory's contents.
        for hidden in whiteouts_here {
            match here.get(&hidden) {
                Some(State::Dir | State::ImplicitDir) => {
                    opaque_here.insert(hidden);
                }
                Some(_) => {}
                None => {
                    if !self.masked(&hidden, false) {
                        here.insert(hidden, State::Whiteout);
                    }
                }
            }
        }
        for (path, state) in here {
            match self.above.entry(path) {
                Entry::Vacant(slot) => {
                    slot.insert(state);
                }
                Entry::Occupied(mut slot) if *slot.get() == State::ImplicitDir => {
                    slot.insert(state);
                }
                Entry::Occupied(_) => {}
            }
        }
        self.opaque_above.extend(opaque_here);
        Ok(())
    }

    /// Directories dropped by their verdict go if nothing was left in them,
    /// the deepest first (so that a tree left empty goes whole).
    fn remove_dropped_dirs(&mut self) -> Result<(), Error> {
        let Some(select) = self.select else {
            return Ok(());
        };
        let mut dirs = std::mem::take(&mut self.dropped_dirs);
        dirs.sort_by_key(|(path, ..)| {
            std::cmp::Reverse(path.iter().filter(|&&b| b == b'/').count())
        });
        for (path, verdict, meta) in dirs {
            if self.w.remove_empty_dir(&path)? {
                select.applied(verdict, &path, 0, &meta);
            }
        }
        Ok(())
    }

    fn discard(&mut self, entry: &mut Item) {
        if let Some(data) = entry.data.take() {
            self.w.discard(data);
        }
    }

    /// Upper layers put entries under `link` without a directory entry for
    /// it, and here `link` turns out to be a symlink. Extracted bottom-up (as
    /// umoci and docker do) those entries would have gone through the link,
    /// resolved inside the image: move them to where it points (only the
    /// tree moves; file data stays put) and let the symlink be written.
    fn follow_link(&mut self, link: &[u8], target: &[u8]) -> Result<(), Error> {
        let dest = if target.starts_with(b"/") {
            normalize(target)
        } else {
            normalize(&join(parent(link), target))
        };
        let inside = [link, b"/"].concat();
        if dest == link || dest.starts_with(&inside) {
            return Ok(()); // a link into itself holds nothing: it stays masked
        }
        if self
            .above
            .get(&dest)
            .is_some_and(|s| !matches!(s, State::Dir | State::ImplicitDir))
        {
            return Ok(()); // the link points at a non-directory above: the entries stay
        }
        self.w.move_children(link, &dest)?;
        let rekey = |p: &[u8]| {
            p.strip_prefix(inside.as_slice())
                .map(|rest| join(&dest, rest))
        };
        rekey_map(&mut self.above, &rekey);
        self.above.remove(link);
        for a in ancestors(&dest)
            .map(<[u8]>::to_vec)
            .chain(std::iter::once(dest.clone()))
        {
            self.above.entry(a).or_insert(State::ImplicitDir);
        }
        rekey_map(&mut self.origin, &rekey);
        let opaque: Vec<Vec<u8>> = self
            .opaque_above
            .iter()
            .filter(|k| k.starts_with(&inside))
            .cloned()
            .collect();
        for old in opaque {
            self.opaque_above.remove(&old);
            self.opaque_above
                .insert(rekey(&old).expect("filtered on the prefix"));
        }
        for pending in &mut self.pending {
            if let Some(new) = rekey(&pending.path) {
                pending.path = new;
            }
            if let Some(new) = rekey(&pending.target) {
                pending.target = new;
            }
        }
        Ok(())
    }

    /// Links whose target's final version is from their layer or below point
    /// at it; the others get their target's content as of their own layer.
    fn resolve_links(&mut self) -> Result<(), Error> {
        let mut pending = std::mem::take(&mut self.pending);
        // Links to links resolve once their target has: repeat while that
        // makes progress.
        loop {
            let before = pending.len();
            let mut rest = Vec::new();
            for link in pending {
                match self.origin.get(&link.target) {
                    Some(&j) if j <= link.layer && !matches!(link.verdict, Verdict::Empty(_)) => {
                        self.w.hardlink(&link.path, &link.target)?;
                        self.origin.insert(link.path.clone(), j);
                    }
                    _ => rest.push(link),
                }
            }
            pending = rest;
            if pending.len() == before {
                break;
            }
        }
        // The rest: read the target's content from the layers again. Links to
        // one target in one layer share the first one's inode.
        let mut fixed: HashMap<(usize, Vec<u8>), Vec<u8>> = HashMap::new();
        for link in pending {
            if let Some(first) = fixed.get(&(link.layer, link.target.clone())) {
                self.w.hardlink(&link.path, first)?;
                continue;
            }
            self.write_as_of(&link)?;
            self.stats.links_fixed += 1;
            fixed.insert((link.layer, link.target.clone()), link.path.clone());
        }
        Ok(())
    }

    /// The verdict on a link written with its target's content (`entry`):
    /// content its own name drops goes with every other name (a secret
    /// hard-linked elsewhere is still a secret), and the link's own name is
    /// judged as a file, changing `meta`.
    fn judge_link(
        &self,
        link: &PendingLink,
        entry: &builderd_import::Entry,
        meta: &mut builderd_ext4::Metadata,
    ) -> Verdict {
        let Some(select) = self.select else {
            return Verdict::Keep;
        };
        let mut as_target = meta.clone();
        let target = select.select(&link.target, &entry.kind, entry.size(), &mut as_target);
        if let Verdict::Drop(_) = target {
            return target;
        }
        let verdict = select.select(&link.path, &entry.kind, entry.size(), meta);
        // The link's entry was told its verdict as a link already.
        if verdict != link.verdict && verdict.rule().is_some() {
            select.applied(verdict, &link.path, entry.size(), meta);
        }
        match link.verdict {
            Verdict::Empty(_) | Verdict::Drop(_) => link.verdict,
            _ => verdict,
        }
    }

    /// Writes `link.path` with the content `link.target` had in the tree as
    /// layer `link.layer` left it: the newest version at or below that layer.
    fn write_as_of(&mut self, link: &PendingLink) -> Result<(), Error> {
        let mut target = link.target.clone();
        for k in (0..=link.layer).rev() {
            let mut reader = open(&self.layers[k])?;
            let mut found = None;
            while let Some(mut entry) = reader.next_entry().map_err(layer_err(&self.layers[k]))? {
                let path = normalize(&entry.path);
                if !adjusted(&self.layers[k], &path, &mut entry.meta) {
                    continue;
                }
                let name = base(&path);
                let gone =
                    name == b".wh..wh..opq" && target.starts_with(parent(&path)) && k < link.layer
                        || name
                            .strip_prefix(b".wh.")
                            .is_some_and(|h| join(parent(&path), h) == target)
                            && k < link.layer;
                if gone && found.is_none() {
                    break;
                }
                if path != target {
                    continue;
                }
                match &entry.kind {
                    EntryKind::File => {
                        let mut meta = entry.meta.clone();
                        let verdict = self.judge_link(link, &entry, &mut meta);
                        if matches!(verdict, Verdict::Drop(_)) {
                            return Ok(());
                        }
                        let mut out = self.w.file(&link.path, meta)?;
                        if !matches!(verdict, Verdict::Empty(_)) {
                            reader
                                .copy_data(&entry, &mut out)
                                .map_err(layer_err(&self.layers[k]))?;
                        }
                        out.finish()?;
                        return Ok(());
                    }
                    EntryKind::Hardlink(next) => found = Some(normalize(next)),
                    EntryKind::Symlink(to) => {
                        self.w.symlink(&link.path, to, entry.meta.clone())?;
                        return Ok(());
                    }
                    EntryKind::Device(kind, major, minor) => {
                        self.w
                            .device(&link.path, *kind, *major, *minor, entry.meta.clone())?;
                        return Ok(());
                    }
                    EntryKind::Fifo => {
                        self.w.fifo(&link.path, entry.meta.clone())?;
                        return Ok(());
                    }
                    EntryKind::Dir => break,
                }
            }
            if let Some(next) = found {
                // A link to a link: follow it from this layer down.
                target = next;
            }
        }
        Err(Error::Invalid {
            layer: self.layers[link.layer].name.clone(),
            path: builderd_ext4::display_path(&link.path),
            reason: format!(
                "is a hard link to {}, which does not exist in this layer or below",
                builderd_ext4::display_path(&link.target)
            ),
        })
    }
}
