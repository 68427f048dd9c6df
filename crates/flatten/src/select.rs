//! What a build leaves out of the tree or changes in it, decided entry by
//! entry as the lanes read the layers, so that content left out is never
//! written. Only verdicts on entries that reach the final tree (not masked
//! by an upper layer) are told back, with the bytes concerned.

use builderd_ext4::Metadata;
use builderd_import::EntryKind;

/// A rule's number, as the [`Select`] implementation counts them.
pub type Rule = u16;

/// What becomes of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Written as it is.
    Keep,
    /// Written as it is, and told back (listed, not changed).
    Note(Rule),
    /// Written with the metadata `select` changed.
    Change(Rule),
    /// A regular file written empty (its metadata kept).
    Empty(Rule),
    /// Not written. A directory is written all the same and removed at the
    /// end only if nothing is left in it: what it holds is decided entry by
    /// entry.
    Drop(Rule),
}

impl Verdict {
    pub fn rule(self) -> Option<Rule> {
        match self {
            Verdict::Keep => None,
            Verdict::Note(r) | Verdict::Change(r) | Verdict::Empty(r) | Verdict::Drop(r) => Some(r),
        }
    }

    /// Is the entry's content not to be written?
    pub(crate) fn skips_content(self) -> bool {
        matches!(self, Verdict::Empty(_) | Verdict::Drop(_))
    }
}

/// Decides each entry; called on the lanes' threads, for every entry of
/// every layer (masked ones too), after the layer's own `adjust`.
pub trait Select: Sync {
    /// `path` is normalised; `size` is a regular file's apparent size.
    fn select(&self, path: &[u8], kind: &EntryKind, size: u64, meta: &mut Metadata) -> Verdict;

    /// Told on the overlay's thread, once per entry of the final tree that
    /// got a verdict with a rule, with its size (0 but for regular files).
    /// A directory dropped but left with entries is not told.
    fn applied(&self, verdict: Verdict, path: &[u8], size: u64, meta: &Metadata);
}
