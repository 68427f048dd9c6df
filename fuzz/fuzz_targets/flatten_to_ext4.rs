//! Random layers (tar streams of random entries over a small set of names,
//! whiteouts, opaque directories, links and all) through the flatten into
//! the ext4 writer, with random verdicts (entries left out, emptied,
//! changed): every image the writer accepts must pass `e2fsck -fn`.
#![no_main]

use std::io::{BufRead, Cursor};
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

/// Names entries are made of: few, so that layers collide and mask.
const NAMES: [&str; 8] = ["a", "b", "c", "d", "..", ".", "x y", "é"];

#[derive(Arbitrary, Debug)]
struct Name(Vec<u8>);

impl Name {
    fn path(&self) -> String {
        let parts: Vec<&str> = self
            .0
            .iter()
            .take(4)
            .map(|&i| NAMES[usize::from(i) % NAMES.len()])
            .collect();
        if parts.is_empty() {
            "a".into()
        } else {
            parts.join("/")
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(Name),
    AbsoluteSymlink(Name),
    Hardlink(Name),
    Whiteout,
    Opaque,
    Fifo,
}

#[derive(Arbitrary, Debug)]
struct Entry {
    name: Name,
    kind: Kind,
    mode: u16,
    uid: u8,
}

#[derive(Arbitrary, Debug)]
struct Input {
    layers: Vec<Vec<Entry>>,
    /// Verdicts, picked by a hash of each path (none: no select).
    verdicts: Vec<u8>,
}

/// Verdicts by path from the input, as a size or hardening policy gives
/// them.
struct Fuzzed(Vec<u8>);

impl builderd_flatten::Select for Fuzzed {
    fn select(
        &self,
        path: &[u8],
        _kind: &builderd_import::EntryKind,
        _size: u64,
        meta: &mut builderd_ext4::Metadata,
    ) -> builderd_flatten::Verdict {
        use builderd_flatten::Verdict;
        let hash = path
            .iter()
            .fold(7usize, |h, &b| h.wrapping_mul(31).wrapping_add(b as usize));
        match self.0[hash % self.0.len()] % 5 {
            0 => Verdict::Keep,
            1 => Verdict::Drop(0),
            2 => Verdict::Empty(1),
            3 => {
                meta.mode ^= 0o022;
                Verdict::Change(2)
            }
            _ => Verdict::Note(3),
        }
    }

    fn applied(
        &self,
        _verdict: builderd_flatten::Verdict,
        _path: &[u8],
        _size: u64,
        _meta: &builderd_ext4::Metadata,
    ) {
    }
}

fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries.iter().take(24) {
        let path = e.name.path();
        let mut h = tar::Header::new_gnu();
        h.set_mode(u32::from(e.mode) & 0o7777);
        h.set_uid(u64::from(e.uid));
        h.set_mtime(1_700_000_000);
        let (path, data): (String, Vec<u8>) = match &e.kind {
            Kind::File(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                (path, d.iter().copied().take(4096).collect())
            }
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                (path, Vec::new())
            }
            Kind::Symlink(t) | Kind::AbsoluteSymlink(t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                let target = match e.kind {
                    Kind::AbsoluteSymlink(_) => format!("/{}", t.path()),
                    _ => t.path(),
                };
                if h.set_link_name(&target).is_err() {
                    continue;
                }
                (path, Vec::new())
            }
            Kind::Hardlink(t) => {
                h.set_entry_type(tar::EntryType::Link);
                if h.set_link_name(t.path()).is_err() {
                    continue;
                }
                (path, Vec::new())
            }
            Kind::Whiteout => {
                h.set_entry_type(tar::EntryType::Regular);
                let (dir, base) = match path.rsplit_once('/') {
                    Some((d, b)) => (format!("{d}/"), b.to_string()),
                    None => (String::new(), path.clone()),
                };
                (format!("{dir}.wh.{base}"), Vec::new())
            }
            Kind::Opaque => {
                h.set_entry_type(tar::EntryType::Regular);
                (format!("{path}/.wh..wh..opq"), Vec::new())
            }
            Kind::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                (path, Vec::new())
            }
        };
        h.set_size(data.len() as u64);
        // The tar crate refuses ".." in paths it sets; images have them.
        if b.append_data(&mut h, &path, &data[..]).is_err() {
            let _ = h.set_path("z");
        }
    }
    b.into_inner().unwrap_or_default()
}

fuzz_target!(|input: Input| {
    let tars: Vec<Arc<Vec<u8>>> = input
        .layers
        .iter()
        .take(4)
        .map(|l| Arc::new(layer_tar(l)))
        .collect();
    if tars.is_empty() {
        return;
    }
    let layers: Vec<builderd_flatten::Layer> = tars
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let t = t.clone();
            builderd_flatten::Layer {
                name: format!("layer{i}"),
                size: t.len() as u64,
                open: Box::new(move || {
                    Ok(Box::new(Cursor::new(t.to_vec())) as Box<dyn BufRead + Send>)
                }),
                adjust: None,
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.ext4");
    let file = std::fs::File::create(&path).unwrap();
    let mut writer = builderd_ext4::Writer::new(file, Default::default()).unwrap();
    let fuzzed = Fuzzed(input.verdicts.clone());
    let select = (!fuzzed.0.is_empty()).then_some(&fuzzed as &dyn builderd_flatten::Select);
    if builderd_flatten::flatten(&layers, &mut writer, select, &|_| {}).is_err() {
        return;
    }
    let Ok((_, file)) = writer.finish() else {
        return;
    };
    drop(file);
    let out = std::process::Command::new("e2fsck")
        .args(["-fn"])
        .arg(&path)
        .output()
        .expect("e2fsck is installed");
    assert!(
        out.status.success(),
        "e2fsck -fn failed on an accepted image:\n{}{}\ninput: {input:?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
});
