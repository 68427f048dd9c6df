//! What a build tells while it works, as typed events, and the `Reporter`
//! that hears them. The command line draws bars or prints JSON lines from
//! them; the service reads the JSON lines of the build process it runs with
//! this same type, so both sides agree on every field (an event one side
//! does not know is an error there, not a silent skip).

use serde::{Deserialize, Serialize};

/// One thing a build says. As JSON, one object a line, named by its kind:
/// `{"stage": "downloading"}`, `{"log": {"level": "info", "message": "…"}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// The build entered a stage.
    Stage(Stage),
    /// The image is resolved (with `hold_after_resolve`, the build then
    /// waits for the reporter's word).
    Resolved(Resolved),
    /// How far one layer's download is.
    Download(Download),
    /// How far the current step is (bytes of input, entries written).
    Progress(Progress),
    Log(Log),
    /// A registry request failed and is tried again after `delay_ms`.
    Retry(Retry),
    /// A layer blob was downloaded (not found in the cache).
    Pulled {
        bytes: u64,
    },
    /// A build step started.
    StepStarted(StepStarted),
    /// A line a build step wrote (cut at `MAX_STEP_LINE` bytes).
    StepOutput(StepOutput),
    /// A build step ended.
    StepFinished(StepResult),
    /// What the build process used, told once at its end.
    Usage(Usage),
    /// The build failed: told last.
    Error(Failure),
}

/// The stages, in order; the service's states follow them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Preparing,
    Downloading,
    Building,
    Optimizing,
    Packaging,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolved {
    pub manifest_digest: String,
    pub config_digest: String,
    pub config_size: u64,
    pub layers: Vec<ResolvedLayer>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolvedLayer {
    pub digest: String,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Download {
    /// The layer's index in the manifest.
    pub layer: usize,
    pub digest: String,
    pub done: u64,
    pub total: u64,
    /// Its last event: downloaded, or found in the cache.
    pub finished: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// "downloading", "writing", "written".
    pub step: String,
    pub done: u64,
    pub total: u64,
    pub files: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepStarted {
    /// The step's place in the list, from 0.
    pub index: usize,
    pub command: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepOutput {
    pub index: usize,
    pub stream: OutputStream,
    pub line: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// How a build step ended; also each step's entry in OUT.json.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepResult {
    pub index: usize,
    pub command: String,
    pub exit_code: i32,
    pub duration_ms: u64,
}

/// A step's output line longer than this is cut (a line without newlines
/// would otherwise be held whole).
pub const MAX_STEP_LINE: usize = 16 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Info,
    Warn,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub level: Level,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    pub cause: builderd_oci::RetryCause,
    /// The attempt that failed (1 for the first).
    pub attempt: u32,
    pub attempts: u32,
    pub delay_ms: u64,
    pub message: String,
}

impl Retry {
    pub fn of(n: &builderd_oci::RetryNotice) -> Retry {
        Retry {
            cause: n.cause,
            attempt: n.attempt,
            attempts: n.attempts,
            delay_ms: n.delay.as_millis() as u64,
            message: bounded(&n.message).into_owned(),
        }
    }

    pub fn notice(&self) -> builderd_oci::RetryNotice {
        builderd_oci::RetryNotice {
            cause: self.cause,
            attempt: self.attempt,
            attempts: self.attempts,
            delay: std::time::Duration::from_millis(self.delay_ms),
            message: self.message.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    pub cpu_ms: u64,
    pub peak_memory_bytes: u64,
    pub disk_written_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    pub message: String,
    pub category: crate::Category,
    /// The machine ran short for a moment: trying again later may pass.
    pub temporary: bool,
    /// The source's server could not be reached: trying again may pass.
    #[serde(default)]
    pub network: bool,
}

/// Hears a build's events. Called from the build's threads.
pub trait Reporter: Sync {
    fn report(&self, event: Event);

    /// With `BuildRequest::hold_after_resolve`: the image is resolved
    /// (`Event::Resolved` was just reported); answers whether to go on.
    fn go_on(&self) -> bool {
        true
    }
}

/// A reporter that drops every event (a build inside another, whose
/// progress the outer one tells).
pub struct Quiet;

impl Reporter for Quiet {
    fn report(&self, _: Event) {}
}

/// A reporter that keeps every event (for tests, and for programs that
/// look at them afterwards).
#[derive(Default)]
pub struct Collect(pub std::sync::Mutex<Vec<Event>>);

impl Reporter for Collect {
    fn report(&self, event: Event) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(event);
    }
}

impl Collect {
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The longest message told (an image's text can be part of one: a media
/// type, a file name); the rest is cut, so no event grows without bound.
pub const MAX_MESSAGE: usize = 4096;

/// `message`, at most `MAX_MESSAGE` bytes of it (cut at a character's edge).
pub fn bounded(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MAX_MESSAGE {
        return message.into();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… ({} more bytes not shown)",
        &message[..end],
        message.len() - end
    )
    .into()
}

/// Logs through a reporter.
pub(crate) fn info(r: &dyn Reporter, message: impl AsRef<str>) {
    r.report(Event::Log(Log {
        level: Level::Info,
        message: bounded(message.as_ref()).into_owned(),
    }));
}

pub(crate) fn warn(r: &dyn Reporter, message: impl AsRef<str>) {
    r.report(Event::Log(Log {
        level: Level::Warn,
        message: bounded(message.as_ref()).into_owned(),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_one_object_named_by_their_kind() {
        let e = Event::Stage(Stage::Downloading);
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"stage":"downloading"}"#
        );
        let e = Event::Log(Log {
            level: Level::Warn,
            message: "m".into(),
        });
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"log":{"level":"warn","message":"m"}}"#
        );
        let back: Event = serde_json::from_str(r#"{"pulled":{"bytes":5}}"#).unwrap();
        assert_eq!(back, Event::Pulled { bytes: 5 });
        assert!(serde_json::from_str::<Event>(r#"{"gossip":{}}"#).is_err());
        assert!(serde_json::from_str::<Event>(r#"{"stage":"dreaming"}"#).is_err());
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "é".repeat(5000);
        let cut = bounded(&long);
        assert!(cut.len() < MAX_MESSAGE + 64 && cut.contains("more bytes not shown"));
    }
}
