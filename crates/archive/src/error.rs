//! How an archive is refused: by the entry and the rule it breaks, by the
//! limit it passes, or as a whole (not a format taken, not what it says it
//! is, malformed); and the machine's own failures (a full disk), apart.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An entry breaks a rule.
    #[error("the archive's entry {entry}: {rule}")]
    Entry { entry: String, rule: String },
    /// The archive passes one of its limits.
    #[error("the archive passes its {limit} limit ({value}){at}")]
    Limit {
        /// The limit's name, as `Limits` and the command line call it.
        limit: &'static str,
        /// The limit, with its unit.
        value: String,
        /// Where it was reached: ", at ENTRY", or nothing.
        at: String,
    },
    /// The archive as a whole.
    #[error("{0}")]
    Archive(String),
    /// Writing the extracted tree (a full disk, say): not the archive's fault.
    #[error("extracting the archive: {0}")]
    Write(#[source] io::Error),
}

impl Error {
    pub(crate) fn entry(entry: &[u8], rule: impl Into<String>) -> Error {
        Error::Entry {
            entry: shown(entry),
            rule: rule.into(),
        }
    }

    pub(crate) fn limit(limit: &'static str, value: String, entry: Option<&[u8]>) -> Error {
        Error::Limit {
            limit,
            value,
            at: entry
                .map(|e| format!(", at {}", shown(e)))
                .unwrap_or_default(),
        }
    }
}

/// An entry's name as an error shows it: quoted, with anything unprintable
/// escaped (a hostile name must not write to a log as it likes).
pub(crate) fn shown(name: &[u8]) -> String {
    const MOST: usize = 512;
    let cut = &name[..name.len().min(MOST)];
    let more = if name.len() > MOST { "…" } else { "" };
    format!("\"{}{more}\"", cut.escape_ascii())
}
