//! A zip's top, read without extracting it: the few files there that
//! decide how it is built (read by the central directory, each at most a
//! small size) and the directories there. A build with nothing to run can
//! then take the whole archive as a stream. Anything unusual (a name the
//! extraction would refuse, a wanted file that is a link or too large, an
//! unreadable entry) gives no answer: the caller extracts the archive,
//! which says why it is refused, if it is.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use zip::ZipArchive;

use crate::limits::Limits;
use crate::names::{normalize, Origin};
use crate::zip_end::declared_entries;

/// What a zip holds at its top.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Top {
    /// The wanted files found there, with their contents.
    pub files: Vec<(String, Vec<u8>)>,
    /// Its directories, described or implied by a name below.
    pub dirs: Vec<String>,
}

/// The files named in `wanted` at the top of the zip at `archive`, each at
/// most `max_file` bytes, and the directories there; `None` when the
/// archive is no zip or the answer needs more than that (see above).
pub fn zip_top(archive: &Path, limits: &Limits, wanted: &[&str], max_file: u64) -> Option<Top> {
    let file = File::open(archive).ok()?;
    let size = file.metadata().ok()?.len();
    // Past the limit, the central directory is not read at all.
    if declared_entries(&file, size).ok()? > limits.max_entries {
        return None;
    }
    let mut zip = ZipArchive::new(BufReader::new(file)).ok()?;
    let mut top = Top::default();
    for i in 0..zip.len() {
        let (name, is_dir, is_link, len) = {
            let entry = zip.by_index_raw(i).ok()?;
            let kind = entry.unix_mode().map(|m| m & 0o170000);
            let name = normalize(entry.name_raw(), Origin::Zip, limits.max_depth).ok()?;
            (
                name,
                entry.is_dir() || kind == Some(0o040000),
                kind == Some(0o120000),
                entry.size(),
            )
        };
        let Some(name) = name else { continue };
        let name = String::from_utf8(name).ok()?;
        match name.split_once('/') {
            Some((dir, _)) => top.dirs.push(dir.to_string()),
            None if is_dir => top.dirs.push(name),
            None if !wanted.contains(&name.as_str()) => {}
            None if is_link || len > max_file => return None,
            None => {
                let mut data = Vec::new();
                zip.by_index(i)
                    .ok()?
                    .take(max_file + 1)
                    .read_to_end(&mut data)
                    .ok()?;
                (data.len() as u64 == len).then_some(())?;
                top.files.push((name, data));
            }
        }
    }
    top.dirs.sort();
    top.dirs.dedup();
    Some(top)
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
        let wanted = ["package.json", "index.html"];
        let fine = make(
            "fine.zip",
            &[
                ("index.html", b"<p>hi</p>", false),
                ("assets/a.css", b"p {}", false),
                ("node_modules/x/index.js", b"1", false),
                ("other.txt", b"not wanted", false),
            ],
        );
        let top = zip_top(&fine, &Limits::default(), &wanted, 1024).unwrap();
        assert_eq!(
            top,
            Top {
                files: vec![("index.html".into(), b"<p>hi</p>".to_vec())],
                dirs: vec!["assets".into(), "node_modules".into()],
            }
        );
        let linked = make("linked.zip", &[("package.json", b"sub/package.json", true)]);
        assert_eq!(zip_top(&linked, &Limits::default(), &wanted, 1024), None);
        let large = make("large.zip", &[("package.json", &[b' '; 2048], false)]);
        assert_eq!(zip_top(&large, &Limits::default(), &wanted, 1024), None);
        let hostile = make("hostile.zip", &[("../x", b"x", false)]);
        assert_eq!(zip_top(&hostile, &Limits::default(), &wanted, 1024), None);
        let many = Limits {
            max_entries: 3,
            ..Limits::default()
        };
        assert_eq!(zip_top(&fine, &many, &wanted, 1024), None);
        let tar = dir.path().join("not.zip");
        std::fs::write(&tar, [0u8; 1024]).unwrap();
        assert_eq!(zip_top(&tar, &Limits::default(), &wanted, 1024), None);
    }
}
