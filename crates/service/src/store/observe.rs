//! What the store tells once a change is committed: a build's move to a
//! state, to whoever observes it.

use crate::state::State;

/// A build moved to a state, as observers of the store hear of it once the
/// change is committed: the metrics count it, the traces end a build's
/// trace with it. The store knows nothing of either.
#[derive(Clone, Debug)]
pub struct Transition {
    pub build_id: String,
    /// The state it left and the milliseconds it spent there; None for a
    /// build just made.
    pub from: Option<(State, i64)>,
    pub to: State,
    /// docker_image, git_repository or archive.
    pub source_type: String,
    pub tier: String,
}

/// Hears every transition.
pub type Observer = Box<dyn Fn(&Transition) + Send + Sync>;
