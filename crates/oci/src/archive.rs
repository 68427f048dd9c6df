//! Tar archives read in place: one pass over the headers (seeking past the
//! data) records where each member's bytes are; members are then read
//! straight from the file. Used for `oci-archive:` and `docker-archive:`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Take};
use std::path::{Path, PathBuf};

use crate::{Error, MAX_DOC};

pub struct ArchiveIndex {
    path: PathBuf,
    /// Member name (without `./`) → (data offset, size).
    members: HashMap<String, (u64, u64)>,
}

impl ArchiveIndex {
    pub fn open(path: &Path) -> Result<ArchiveIndex, Error> {
        let io = |e: std::io::Error| Error::Io {
            what: path.display().to_string(),
            source: e,
        };
        let file = File::open(path).map_err(io)?;
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        for entry in archive.entries_with_seek().map_err(io)? {
            let entry = entry.map_err(io)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = String::from_utf8_lossy(&entry.path_bytes())
                .trim_start_matches("./")
                .to_string();
            members.insert(name, (entry.raw_file_position(), entry.size()));
        }
        Ok(ArchiveIndex {
            path: path.to_path_buf(),
            members,
        })
    }

    pub fn size(&self, name: &str) -> Option<u64> {
        self.members.get(name).map(|&(_, size)| size)
    }

    pub fn open_member(&self, name: &str) -> Result<Take<File>, Error> {
        let &(offset, size) = self.members.get(name).ok_or_else(|| {
            Error::NotFound(format!("{}: has no member {name}", self.path.display()))
        })?;
        let io = |e: std::io::Error| Error::Io {
            what: format!("{}: {name}", self.path.display()),
            source: e,
        };
        let mut file = File::open(&self.path).map_err(io)?;
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        Ok(file.take(size))
    }

    /// A small member, whole.
    pub fn read_member(&self, name: &str) -> Result<Vec<u8>, Error> {
        if self.size(name).is_some_and(|s| s > MAX_DOC) {
            return Err(Error::Manifest(format!(
                "{}: {name} is too large for a manifest or config",
                self.path.display()
            )));
        }
        let mut data = Vec::new();
        self.open_member(name)?
            .read_to_end(&mut data)
            .map_err(|e| Error::Io {
                what: format!("{}: {name}", self.path.display()),
                source: e,
            })?;
        Ok(data)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
