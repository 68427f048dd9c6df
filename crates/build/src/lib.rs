//! builderd-build: one build, source to artifact. A typed `BuildRequest`
//! goes in (the one description of a build: source, platform, registry
//! options, the filesystem's shape, what makes it boot, its limits), the
//! stages run (resolve, fetch, flatten, boot files, write, checksum,
//! package, commit), each telling a `Reporter` what happens as typed
//! `Event`s, and a typed `Report` comes back (what OUT.json holds).
//!
//! No command line, no terminal, no tenants: the `builderd` binary maps its
//! arguments to a request and draws the events; the service writes a request
//! for each build process it runs and reads its events back, as JSON lines
//! of this crate's `Event`.

mod blob_checks;
mod boot;
mod checksum;
mod compress;
mod error;
mod event;
mod layer_store;
mod layer_streams;
mod layered;
mod output;
mod policy;
mod project;
mod pull;
mod report;
mod request;
mod run;
mod source;
mod steps;
mod tree_layer;
pub mod units;
pub mod vm;

pub use error::{message, Category, Error, Limit, SizeLimitExceeded, SourceError, StepError};
pub use event::{
    bounded, Collect, Download, Event, Failure, Level, Log, OutputStream, Progress, Reporter,
    Resolved, ResolvedLayer, Retry, Stage, StepOutput, StepResult, StepStarted, Usage,
    MAX_STEP_LINE,
};
pub use output::Pending;
pub use policy::check_hardening_policy;
pub use project::archive::source_file as archive_source_file;
pub use project::{check_build_args, private_file, redact_url, Origin, Project};
pub use report::Report;
pub use request::{
    ArchiveLimits, ArchiveOptions, BlobCacheChoice, BootOptions, BuildRequest, BuildSecret,
    BuildSystem, CopyFormat, Ext4Options, FreeSpace, GitCredentials, GitOptions, Init,
    LayerOptions, PolicyOptions, ProjectOptions, RegistryOptions, Sandbox, StepLimits, StepNetwork,
    Steps,
};
pub use run::build;
pub use steps::sweep as sweep_steps;
