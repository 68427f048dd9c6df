//! The image options `mkfs` and `build` share.

use anyhow::{Context, Result};
use builderd_build::{Ext4Options, FreeSpace};
use builderd_ext4::Free;

use crate::units::{parse_bytes, parse_free, parse_uuid};

#[derive(clap::Args)]
pub struct Ext4Args {
    /// Fixed filesystem size, e.g. 2G (a multiple of 4096); an error if the
    /// content does not fit. Default: the content plus --free.
    #[arg(long, value_parser = parse_bytes)]
    size: Option<u64>,
    /// Free space to leave when sizing to the content: bytes (64M) or a
    /// percentage of the filesystem (20%). Default: 5%, at least 1 MiB.
    #[arg(long, value_parser = parse_free, conflicts_with = "size")]
    free: Option<Free>,
    /// Volume label (up to 16 bytes).
    #[arg(long, default_value = "")]
    label: String,
    /// Filesystem UUID; by default derived from the content, so the same
    /// input gives the same image.
    #[arg(long, value_parser = parse_uuid)]
    uuid: Option<[u8; 16]>,
    /// No journal (for read-only images).
    #[arg(long)]
    no_journal: bool,
}

impl Ext4Args {
    /// The filesystem's shape; `SOURCE_DATE_EPOCH` sets its times.
    pub fn request(&self) -> Result<Ext4Options> {
        let fs_time =
            match std::env::var("SOURCE_DATE_EPOCH") {
                Ok(v) => Some(v.trim().parse::<i64>().with_context(|| {
                    format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")
                })?),
                Err(_) => None,
            };
        Ok(Ext4Options {
            size: self.size,
            free: match self.free.unwrap_or_default() {
                Free::Bytes(b) => FreeSpace::Bytes(b),
                Free::Percent(p) => FreeSpace::Percent(p),
            },
            label: self.label.clone(),
            uuid: self.uuid,
            journal: !self.no_journal,
            fs_time,
        })
    }

    /// The writer's options (for mkfs).
    pub fn options(&self) -> Result<builderd_ext4::Options> {
        Ok(self.request()?.writer_options(None))
    }
}
