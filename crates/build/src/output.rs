//! Image files written beside their final name and renamed into place only
//! when complete, so a failure leaves no output (and an old image stays).

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tempfile::NamedTempFile;

pub struct Pending {
    target: PathBuf,
    tmp: NamedTempFile,
}

impl Pending {
    /// A temporary file in `target`'s directory.
    pub fn new(target: &Path) -> Result<Pending> {
        if target.is_dir() {
            bail!(
                "{}: is a directory; give the file name to write",
                target.display()
            );
        }
        let name = target
            .file_name()
            .with_context(|| format!("{}: not a file name", target.display()))?;
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".tmp")
            .tempfile_in(&dir)
            .with_context(|| format!("{}: cannot create a file there", dir.display()))?;
        Ok(Pending {
            target: target.to_path_buf(),
            tmp,
        })
    }

    pub fn file(&self) -> Result<File> {
        Ok(self.tmp.as_file().try_clone()?)
    }

    /// The name it gets when committed.
    pub fn target(&self) -> &Path {
        &self.target
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Flushes to disk and renames into place (mode 0644).
    pub fn commit(self) -> Result<File> {
        self.tmp
            .as_file()
            .sync_all()
            .with_context(|| format!("{}: flushing to disk", self.target.display()))?;
        let file = self
            .tmp
            .persist(&self.target)
            .with_context(|| format!("{}: cannot put it in place", self.target.display()))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        Ok(file)
    }
}
