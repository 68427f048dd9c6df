//! An archive's top, read without extracting it: the few names there that
//! decide how it is built, files (each at most a small size) or
//! directories. A zip's come from its central directory and those entries alone;
//! a tar is read through once, decompressed, nothing written. A build with
//! nothing to run can then take the whole archive as a stream. Anything
//! unusual (a name the extraction would refuse, a wanted file that is a
//! link or too large, an unreadable entry) gives no answer: the caller
//! extracts the archive, which says why it is refused, if it is.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use builderd_import::EntryKind;
use zip::ZipArchive;

use crate::limits::Limits;
use crate::names::{normalize, Origin};
use crate::zip_end::declared_entries;
use crate::zip_entries::{Info, ZipKind};
use crate::Format;

/// What an archive holds at its top.
#[derive(Debug, PartialEq, Eq)]
pub struct Top {
    /// Told by its first bytes.
    pub format: Format,
    /// The wanted names that are files there, with their contents.
    pub files: Vec<(String, Vec<u8>)>,
    /// The wanted names that are directories there, described or implied
    /// by a name below.
    pub dirs: BTreeSet<String>,
    /// The file data its headers declare, in all.
    pub bytes: u64,
}

impl Top {
    pub(crate) fn new(format: Format) -> Top {
        Top {
            format,
            files: Vec::new(),
            dirs: BTreeSet::new(),
            bytes: 0,
        }
    }
}

/// The names in `wanted` at the top of the archive at `archive`: files
/// (each at most `max_file` bytes, read) and directories; `None` when
/// the answer needs more than that (see above), or the archive is not
/// what `declared` says.
pub fn top(
    archive: &Path,
    declared: Option<Format>,
    limits: &Limits,
    wanted: &[&str],
    max_file: u64,
) -> Option<Top> {
    let file = File::open(archive).ok()?;
    let mut first = [0u8; 512];
    let n = file.read_at(&mut first, 0).ok()?;
    match Format::of(&first[..n], declared).ok()? {
        Format::Zip => zip_top(file, limits, wanted, max_file),
        tar => tar_top(file, tar, limits, wanted, max_file),
    }
}

fn zip_top(file: File, limits: &Limits, wanted: &[&str], max_file: u64) -> Option<Top> {
    let size = file.metadata().ok()?.len();
    // Past the limit, the central directory is not read at all.
    if declared_entries(&file, size).ok()? > limits.max_entries {
        return None;
    }
    let mut zip = ZipArchive::new(BufReader::new(file)).ok()?;
    let mut top = Top::new(Format::Zip);
    for i in 0..zip.len() {
        let (name, info) = {
            let entry = zip.by_index_raw(i).ok()?;
            let name = normalize(entry.name_raw(), Origin::Zip, limits.max_depth).ok()?;
            (name, Info::of(&entry))
        };
        let Some(name) = name else { continue };
        let name = String::from_utf8(name).ok()?;
        let kind = match info.kind() {
            ZipKind::File => Kind::File(info.size),
            ZipKind::Dir => Kind::Dir,
            ZipKind::Symlink | ZipKind::Other(_) => Kind::Other,
        };
        if let Some(name) = top.sort(name, kind, wanted, max_file)? {
            let mut data = Vec::new();
            zip.by_index(i)
                .ok()?
                .take(max_file + 1)
                .read_to_end(&mut data)
                .ok()?;
            (data.len() as u64 == info.size).then_some(())?;
            top.files.push((name, data));
        }
    }
    top.done()
}

/// What the top needs to know of an entry.
enum Kind {
    File(u64),
    Dir,
    /// A link, a device: the extraction decides what it makes of it.
    Other,
}

impl Top {
    /// Takes note of the entry `name`; answers the name when it is a file
    /// to read, and `None` (the outer) when the top cannot be told.
    fn sort(
        &mut self,
        name: String,
        kind: Kind,
        wanted: &[&str],
        max_file: u64,
    ) -> Option<Option<String>> {
        if let Kind::File(size) = kind {
            self.bytes = self.bytes.saturating_add(size);
        }
        let is_wanted = |n: &str| wanted.contains(&n);
        match (name.split_once('/'), kind) {
            // Only the wanted directories are kept: their number is bounded
            // by the list, whatever the archive holds.
            (Some((dir, _)), _) => {
                if is_wanted(dir) && !self.dirs.contains(dir) {
                    self.dirs.insert(dir.to_string());
                }
                Some(None)
            }
            (None, Kind::Dir) => {
                if is_wanted(&name) {
                    self.dirs.insert(name);
                }
                Some(None)
            }
            // A wanted name that is neither a plain file nor a directory (a
            // link, which the plan would follow), a wanted file too large
            // to read, or one of a name taken: the extraction looks.
            (None, Kind::Other) if is_wanted(&name) => None,
            (None, Kind::Other) => Some(None),
            (None, Kind::File(size)) if is_wanted(&name) => {
                let taken = self.files.iter().any(|(n, _)| *n == name) || self.dirs.contains(&name);
                (size <= max_file && !taken).then_some(Some(name))
            }
            (None, Kind::File(_)) => Some(None),
        }
    }

    /// The top, unless a name is both a file and a directory.
    fn done(self) -> Option<Top> {
        let clash = self.files.iter().any(|(n, _)| self.dirs.contains(n));
        (!clash).then_some(self)
    }
}

/// A tar's top, read once through: `None` for anything
/// unusual.
fn tar_top(
    file: File,
    format: Format,
    limits: &Limits,
    wanted: &[&str],
    max_file: u64,
) -> Option<Top> {
    let mut reader = crate::tar_entries::open(file, format, limits, Default::default()).ok()?;
    let mut top = Top::new(format);
    let mut entries = 0u64;
    while let Some(entry) = reader.next_entry().ok()? {
        entries += 1;
        if entries > limits.max_entries {
            return None;
        }
        let Some(name) = normalize(&entry.path, Origin::Tar, limits.max_depth).ok()? else {
            continue;
        };
        let name = String::from_utf8(name).ok()?;
        let kind = match &entry.kind {
            EntryKind::File => Kind::File(entry.size()),
            EntryKind::Dir => Kind::Dir,
            _ => Kind::Other,
        };
        if let Some(name) = top.sort(name, kind, wanted, max_file)? {
            let mut data = builderd_ext4::InMemory(Vec::new());
            reader.copy_data(&entry, &mut data).ok()?;
            top.files.push((name, data.0));
        }
    }
    // Read to its end, so that its compressor's checks run.
    reader.drain().ok()?;
    top.done()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_top_is_read_and_anything_unusual_gives_no_answer() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str, entries: &[(&str, &[u8], bool)]| {
            let path = dir.path().join(name);
            let mut z = zip::ZipWriter::new(File::create(&path).unwrap());
            let opts = zip::write::SimpleFileOptions::default();
            for (name, data, link) in entries {
                if *link {
                    z.add_symlink(*name, std::str::from_utf8(data).unwrap(), opts)
                        .unwrap();
                } else {
                    z.start_file(*name, opts).unwrap();
                    z.write_all(data).unwrap();
                }
            }
            z.finish().unwrap();
            path
        };
        let wanted = ["package.json", "index.html", "node_modules"];
        let fine = make(
            "fine.zip",
            &[
                ("index.html", b"<p>hi</p>", false),
                ("assets/a.css", b"p {}", false),
                ("node_modules/x/index.js", b"1", false),
                ("other.txt", b"not wanted", false),
            ],
        );
        let found = top(&fine, None, &Limits::default(), &wanted, 1024).unwrap();
        assert_eq!(
            found,
            Top {
                format: Format::Zip,
                bytes: 9 + 4 + 1 + 10,
                files: vec![("index.html".into(), b"<p>hi</p>".to_vec())],
                // `assets` is no wanted name.
                dirs: ["node_modules".to_string()].into(),
            }
        );
        let linked = make("linked.zip", &[("package.json", b"sub/package.json", true)]);
        let modules = make("modules.zip", &[("node_modules", b"vendor", true)]);
        assert_eq!(top(&modules, None, &Limits::default(), &wanted, 1024), None);
        let other_link = make(
            "other-link.zip",
            &[
                ("index.html", b"hi", false),
                ("home.html", b"index.html", true),
            ],
        );
        assert!(top(&other_link, None, &Limits::default(), &wanted, 1024).is_some());
        let clash = make(
            "clash.zip",
            &[
                ("package.json", b"{}", false),
                ("package.json/x", b"", false),
            ],
        );
        assert_eq!(top(&clash, None, &Limits::default(), &wanted, 1024), None);
        assert_eq!(
            top(
                &fine,
                Some(Format::TarGz),
                &Limits::default(),
                &wanted,
                1024
            ),
            None,
            "not what it is declared to be"
        );
        assert_eq!(top(&linked, None, &Limits::default(), &wanted, 1024), None);
        let large = make("large.zip", &[("package.json", &[b' '; 2048], false)]);
        assert_eq!(top(&large, None, &Limits::default(), &wanted, 1024), None);
        let hostile = make("hostile.zip", &[("../x", b"x", false)]);
        assert_eq!(top(&hostile, None, &Limits::default(), &wanted, 1024), None);
        let many = Limits {
            max_entries: 3,
            ..Limits::default()
        };
        assert_eq!(top(&fine, None, &many, &wanted, 1024), None);
        let zeros = dir.path().join("zeros");
        std::fs::write(&zeros, [0u8; 1024]).unwrap();
        assert_eq!(top(&zeros, None, &Limits::default(), &wanted, 1024), None);
        // A tar.gz says the same of the same files.
        let tgz = dir.path().join("fine.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(
                File::create(&tgz).unwrap(),
                flate2::Compression::fast(),
            );
            let mut b = tar::Builder::new(gz);
            for (name, data) in [
                ("index.html", &b"<p>hi</p>"[..]),
                ("assets/a.css", b"p {}"),
                ("node_modules/x/index.js", b"1"),
                ("other.txt", b"not wanted"),
            ] {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_mtime(0);
                h.set_uid(0);
                h.set_gid(0);
                b.append_data(&mut h, name, data).unwrap();
            }
            b.into_inner().unwrap().finish().unwrap();
        }
        let (a, b) = (
            top(&fine, None, &Limits::default(), &wanted, 1024).unwrap(),
            top(&tgz, None, &Limits::default(), &wanted, 1024).unwrap(),
        );
        assert_eq!(b.format, Format::TarGz);
        assert_eq!((a.files, a.dirs, a.bytes), (b.files, b.dirs, b.bytes));
    }
}
