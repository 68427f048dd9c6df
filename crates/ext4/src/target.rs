//! What adds entries to a tree: the writer itself, or a view that writes
//! them elsewhere (a build whose image layers are kept writes what it adds
//! into the upper directory of an overlay, and looks paths up in the merged
//! tree). The writer's own methods of the same names do the same.

use crate::{EntryKind, Error, FileWriter, Metadata, Writer};

pub trait Target {
    /// What the tree has at `path` (symlinks not followed).
    fn entry(&self, path: &[u8]) -> Result<Option<EntryKind<'_>>, Error>;
    /// The time of what is added (see [`Writer::content_time`]).
    fn content_time(&self) -> i64;
    fn mkdir(&mut self, path: &[u8], meta: Metadata) -> Result<(), Error>;
    fn file(&mut self, path: &[u8], meta: Metadata) -> Result<FileWriter<'_>, Error>;
    fn symlink(&mut self, path: &[u8], target: &[u8], meta: Metadata) -> Result<(), Error>;
}

impl Target for Writer {
    fn entry(&self, path: &[u8]) -> Result<Option<EntryKind<'_>>, Error> {
        Writer::entry(self, path)
    }

    fn content_time(&self) -> i64 {
        Writer::content_time(self)
    }

    fn mkdir(&mut self, path: &[u8], meta: Metadata) -> Result<(), Error> {
        Writer::mkdir(self, path, meta)
    }

    fn file(&mut self, path: &[u8], meta: Metadata) -> Result<FileWriter<'_>, Error> {
        Writer::file(self, path, meta)
    }

    fn symlink(&mut self, path: &[u8], target: &[u8], meta: Metadata) -> Result<(), Error> {
        Writer::symlink(self, path, target, meta)
    }
}
