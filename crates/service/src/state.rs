//! A build's lifecycle: QUEUED → RUNNING → PREPARING → DOWNLOADING → BUILDING
//! → OPTIMIZING → PACKAGING → COMPLETED, and from any state not yet final:
//! FAILED, CANCELLED or TIMEOUT.

use crate::proto::builder::v1::BuildState;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Queued,
    Running,
    Preparing,
    Downloading,
    Building,
    Optimizing,
    Packaging,
    Completed,
    Failed,
    Cancelled,
    Timeout,
}

const ALL: [State; 11] = [
    State::Queued,
    State::Running,
    State::Preparing,
    State::Downloading,
    State::Building,
    State::Optimizing,
    State::Packaging,
    State::Completed,
    State::Failed,
    State::Cancelled,
    State::Timeout,
];

impl State {
    /// The states in which a build's work is under way.
    pub const ACTIVE: [State; 6] = [
        State::Running,
        State::Preparing,
        State::Downloading,
        State::Building,
        State::Optimizing,
        State::Packaging,
    ];

    /// Not yet final: QUEUED and the active states.
    pub fn unfinished() -> Vec<State> {
        ALL.into_iter().filter(|s| !s.is_terminal()).collect()
    }

    /// As stored, and as the proto enum's name after `BUILD_STATE_`.
    pub fn name(self) -> &'static str {
        match self {
            State::Queued => "QUEUED",
            State::Running => "RUNNING",
            State::Preparing => "PREPARING",
            State::Downloading => "DOWNLOADING",
            State::Building => "BUILDING",
            State::Optimizing => "OPTIMIZING",
            State::Packaging => "PACKAGING",
            State::Completed => "COMPLETED",
            State::Failed => "FAILED",
            State::Cancelled => "CANCELLED",
            State::Timeout => "TIMEOUT",
        }
    }

    pub fn parse(name: &str) -> Option<State> {
        ALL.into_iter().find(|s| s.name() == name)
    }

    /// The stage `builderd build --events json` names (`"downloading"`).
    /// The state a build process's stage puts its build in.
    pub fn of_stage(stage: builderd_build::Stage) -> State {
        use builderd_build::Stage;
        match stage {
            Stage::Preparing => State::Preparing,
            Stage::Downloading => State::Downloading,
            Stage::Building => State::Building,
            Stage::Optimizing => State::Optimizing,
            Stage::Packaging => State::Packaging,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            State::Completed | State::Failed | State::Cancelled | State::Timeout
        )
    }

    pub fn proto(self) -> BuildState {
        match self {
            State::Queued => BuildState::BUILD_STATE_QUEUED,
            State::Running => BuildState::BUILD_STATE_RUNNING,
            State::Preparing => BuildState::BUILD_STATE_PREPARING,
            State::Downloading => BuildState::BUILD_STATE_DOWNLOADING,
            State::Building => BuildState::BUILD_STATE_BUILDING,
            State::Optimizing => BuildState::BUILD_STATE_OPTIMIZING,
            State::Packaging => BuildState::BUILD_STATE_PACKAGING,
            State::Completed => BuildState::BUILD_STATE_COMPLETED,
            State::Failed => BuildState::BUILD_STATE_FAILED,
            State::Cancelled => BuildState::BUILD_STATE_CANCELLED,
            State::Timeout => BuildState::BUILD_STATE_TIMEOUT,
        }
    }

    /// None for BUILD_STATE_UNSPECIFIED.
    pub fn from_proto(s: BuildState) -> Option<State> {
        ALL.into_iter().find(|x| x.proto() == s)
    }

    /// Where the overall percentage stands when a stage starts; a stage with
    /// byte progress fills the range up to the next stage's start.
    pub fn percent_range(self) -> (i32, i32) {
        match self {
            State::Queued => (0, 0),
            State::Running => (0, 2),
            State::Preparing => (2, 5),
            State::Downloading => (5, 45),
            State::Building => (45, 85),
            State::Optimizing => (85, 90),
            State::Packaging => (90, 99),
            State::Completed => (100, 100),
            State::Failed | State::Cancelled | State::Timeout => (0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stages_and_proto_agree() {
        for s in ALL {
            assert_eq!(State::parse(s.name()), Some(s));
            assert_eq!(State::from_proto(s.proto()), Some(s));
        }
        assert_eq!(
            State::of_stage(builderd_build::Stage::Downloading),
            State::Downloading
        );
        assert_eq!(State::from_proto(BuildState::BUILD_STATE_UNSPECIFIED), None);
        assert!(State::ACTIVE.iter().all(|s| !s.is_terminal()));
    }
}
