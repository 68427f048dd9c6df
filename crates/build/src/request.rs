//! `BuildRequest`: the one description of a build. The command line maps its
//! arguments to one; the service writes one as JSON for the build process it
//! starts (`builderd build --request FILE`). Credentials are never part of
//! the serialised form: they come from the process's environment.

use std::path::PathBuf;
use std::time::Duration;

use builderd_oci::{Credentials, RetryPolicy};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildRequest {
    /// The image, in skopeo's syntax: `docker://REF` or a bare REF,
    /// `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`, `docker-archive:FILE`.
    pub source: String,
    /// The image file to write; its metadata goes to OUT.json beside it.
    pub output: PathBuf,
    /// os/arch[/variant] to pick from an index; None: this machine's.
    #[serde(default)]
    pub platform: Option<String>,
    #[serde(default)]
    pub registry: RegistryOptions,
    #[serde(default)]
    pub cache: BlobCacheChoice,
    #[serde(default)]
    pub ext4: Ext4Options,
    #[serde(default)]
    pub boot: BootOptions,
    /// After resolving a registry image, tell `Event::Resolved` and ask the
    /// reporter whether to go on (the service looks in its artifact cache).
    #[serde(default)]
    pub hold_after_resolve: bool,
    /// Commands run in the image, isolated, before it is written.
    #[serde(default)]
    pub steps: Steps,
    /// How a project source (`dir:`, `git:`) is built.
    #[serde(default)]
    pub project: ProjectOptions,
    /// How a Git source is fetched.
    #[serde(default)]
    pub git: GitOptions,
    /// What the flatten leaves out of the image or changes in it.
    #[serde(default)]
    pub policy: PolicyOptions,
    /// Keep the image's layers as disks of their own instead of flattening.
    #[serde(default)]
    pub layers: LayerOptions,
    /// How an archive source (`archive:FILE`) is read and built.
    #[serde(default)]
    pub archive: ArchiveOptions,
    /// Registry credentials: never serialised.
    #[serde(skip)]
    pub credentials: Option<Credentials>,
    /// The Git source's credentials: never serialised.
    #[serde(skip)]
    pub git_credentials: Option<GitCredentials>,
}

/// An archive source: what it is said to be, its limits, and what builds
/// it (the seed's `archive_strategy`). `project.context` is its
/// `build_context`; `project.base_images` and `project.base_image` name the
/// runtime's image; `project.build_args` reach the build.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveOptions {
    /// `archive_type`: zip, tar, tar.gz, tar.xz or tar.zst; it must agree
    /// with the archive's first bytes.
    pub format: Option<String>,
    pub limits: ArchiveLimits,
    /// The base-image table's stack the build runs on (`node`, `python`…);
    /// None: found from the archive's files.
    pub runtime: Option<String>,
    /// The runtime's version; None: the archive's files say, else the
    /// table's default.
    pub version: Option<String>,
    /// A file of the archive run with `sh`, or a shell command; None: a
    /// `build.sh`, `package.json`'s build script or a Makefile, if any.
    pub build_script: Option<String>,
    /// Dependency files installed before the sources are copied
    /// (`package.json`, `requirements.txt`, `go.mod`); empty: those found.
    pub dependencies: Vec<String>,
    /// Where the archive's files go in the image, its working directory;
    /// None: `/app`.
    pub output_path: Option<String>,
    /// An archive named by URL is fetched from public addresses only.
    pub public_only: bool,
}

/// What an archive may hold (docs/archives.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveLimits {
    pub max_bytes: u64,
    pub max_entries: u64,
    pub max_entry_bytes: u64,
    pub max_depth: usize,
    pub max_ratio: u64,
}

impl Default for ArchiveLimits {
    fn default() -> ArchiveLimits {
        let l = builderd_archive::Limits::default();
        ArchiveLimits {
            max_bytes: l.max_bytes,
            max_entries: l.max_entries,
            max_entry_bytes: l.max_entry_bytes,
            max_depth: l.max_depth,
            max_ratio: l.max_ratio,
        }
    }
}

impl From<ArchiveLimits> for builderd_archive::Limits {
    fn from(l: ArchiveLimits) -> builderd_archive::Limits {
        builderd_archive::Limits {
            max_bytes: l.max_bytes,
            max_entries: l.max_entries,
            max_entry_bytes: l.max_entry_bytes,
            max_depth: l.max_depth,
            max_ratio: l.max_ratio,
        }
    }
}

/// An image's layers kept as disks (`preserve_layers`): each layer a
/// read-only ext4 in overlayfs form, shared through a store by every build
/// that uses it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LayerOptions {
    pub preserve: bool,
    /// The layer store; None: `layers/` in the default cache directory.
    pub store: Option<PathBuf>,
}

/// How registries are reached.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryOptions {
    /// Hosts that may be reached over plain HTTP (loopback always may).
    pub insecure: Vec<String>,
    /// Connect to public addresses only (registries, realms, redirects).
    pub public_only: bool,
    /// Without credentials, use those of `~/.docker/config.json`.
    pub docker_config: bool,
    pub retry: RetryPolicy,
    /// A connection that sends nothing for this long fails its request.
    #[serde(with = "millis")]
    pub stall_timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure: Vec::new(),
            public_only: false,
            docker_config: true,
            retry: RetryPolicy::default(),
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// Where layer blobs are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobCacheChoice {
    /// `${XDG_CACHE_HOME:-~/.cache}/builderd`.
    #[default]
    Default,
    Dir(PathBuf),
    /// A scratch directory of this build's own, removed at its end.
    None,
}

/// The filesystem's shape.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ext4Options {
    /// A fixed size in bytes; None: the content plus `free`.
    pub size: Option<u64>,
    pub free: FreeSpace,
    pub label: String,
    pub uuid: Option<[u8; 16]>,
    pub journal: bool,
    /// The filesystem's own times (SOURCE_DATE_EPOCH).
    pub fs_time: Option<i64>,
}

impl Default for Ext4Options {
    fn default() -> Self {
        Ext4Options {
            size: None,
            free: FreeSpace::default(),
            label: String::new(),
            uuid: None,
            journal: true,
            fs_time: None,
        }
    }
}

/// Free space left when the size follows the content.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FreeSpace {
    Bytes(u64),
    Percent(f64),
}

impl Default for FreeSpace {
    fn default() -> Self {
        FreeSpace::Percent(5.0)
    }
}

impl Ext4Options {
    /// The writer's options, bounded by `max_bytes`.
    pub fn writer_options(&self, max_bytes: Option<u64>) -> builderd_ext4::Options {
        builderd_ext4::Options {
            size: self.size,
            free: match self.free {
                FreeSpace::Bytes(b) => builderd_ext4::Free::Bytes(b),
                FreeSpace::Percent(p) => builderd_ext4::Free::Percent(p),
            },
            label: self.label.clone(),
            uuid: self.uuid,
            journal: self.journal,
            fs_time: self.fs_time,
            max_bytes,
            implicit_owner: 0,
        }
    }
}

/// What PID 1 is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// builderd-init runs the image's entrypoint.
    #[default]
    DirectExec,
    /// systemd runs a generated unit for the app.
    Systemd,
    /// The user's script.
    Custom,
}

/// The compressed copy written beside the image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyFormat {
    #[default]
    None,
    Gzip,
    Zstd,
}

impl CopyFormat {
    pub fn name(self) -> &'static str {
        match self {
            CopyFormat::None => "none",
            CopyFormat::Gzip => "gzip",
            CopyFormat::Zstd => "zstd",
        }
    }
}

/// What makes the rootfs boot, and what bounds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootOptions {
    pub init: Init,
    /// CUSTOM's script, a file.
    pub init_script: Option<PathBuf>,
    /// Replaces the image's entrypoint (and, as `docker run` does, its cmd).
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `NAME=value`, each replacing the image's entry of that name.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub compression: CopyFormat,
    /// The image may not be larger (checked as content is written).
    pub size_limit: Option<u64>,
    /// What the size limit is called where it was set, for its error.
    pub size_limit_name: String,
    /// What is left of the tenant's storage quota (the service's bound).
    pub storage_left: Option<u64>,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            init: Init::default(),
            init_script: None,
            entrypoint: None,
            cmd: None,
            env: Vec::new(),
            working_dir: None,
            user: None,
            hostname: None,
            compression: CopyFormat::None,
            size_limit: None,
            size_limit_name: "--size-limit".into(),
            storage_left: None,
        }
    }
}

/// What the build leaves out of the image or changes in it as it is
/// flattened (docs/docker-strategy.md): nothing is run in the image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyOptions {
    /// Drop package caches and lists, language caches, /tmp, docs, man
    /// pages, other languages' locales and logs.
    pub optimize_for_size: bool,
    /// Remove development packages no kept package needs, by the image's
    /// package database.
    pub remove_dev_packages: bool,
    /// Remove SSH host keys (made anew at first boot), the machine-id,
    /// shell histories and credentials; fix world-writable modes.
    pub harden: bool,
    /// The operator's hardening policy file (JSON).
    pub hardening_policy: Option<PathBuf>,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            optimize_for_size: false,
            remove_dev_packages: false,
            harden: true,
            hardening_policy: None,
        }
    }
}

impl PolicyOptions {
    /// Nothing left out or changed: what a build for the step engine's
    /// own use asks.
    pub fn none() -> Self {
        PolicyOptions {
            harden: false,
            ..Default::default()
        }
    }
}

/// Build steps: shell commands run in the image, one after another, each
/// isolated from the host (see `docs/steps.md`); what they change becomes
/// one more layer over the image's.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Steps {
    /// Each runs as `/bin/sh -c COMMAND` in the image's environment and
    /// working directory; the first that fails ends the build.
    pub commands: Vec<String>,
    /// USER[:GROUP] they run as; None: the image's `USER`.
    pub run_as: Option<String>,
    /// Directories of the image (absolute) whose contents are kept from
    /// build to build in the engine's storage, never in the image: a
    /// package manager's download cache, say (`RUN --mount=type=cache`).
    pub cache_dirs: Vec<String>,
    pub limits: StepLimits,
    pub network: StepNetwork,
    pub sandbox: Sandbox,
    /// Where the step engine keeps its storage (the base disks it wrote
    /// stay there for the next build from them); None:
    /// `DEFAULT_STEPS_DIR`.
    pub storage: Option<PathBuf>,
}

/// How a project source is built into its image.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProjectOptions {
    /// The Containerfile, relative to the context; None: `Dockerfile`,
    /// else `Containerfile`.
    pub dockerfile: Option<String>,
    /// The build context, a directory of the project (a monorepo's app);
    /// None: the project's root.
    pub context: Option<String>,
    /// `ARG` values, in order; `{{.GitCommit}}` and the other names of
    /// docs/projects.md are filled in.
    pub build_args: Vec<(String, String)>,
    /// Files `RUN --mount=type=secret,id=ID` steps may read; never part of
    /// a layer, a log or the metadata.
    pub secrets: Vec<BuildSecret>,
    /// What `{{.BuildID}}` is (the service's build id); None: `local`.
    pub build_id: Option<String>,
    /// What builds it: its Containerfile, or a detected stack.
    pub build_system: BuildSystem,
    /// The operator's base-image table (JSON), over builderd's.
    pub base_images: Option<PathBuf>,
    /// One base image for every stage of a generated Containerfile.
    pub base_image: Option<String>,
    /// Each instruction is cached between builds of the namespace (the
    /// dependency install reused while the files it copies are unchanged),
    /// and generated Containerfiles keep the package managers' downloads
    /// in cache mounts.
    pub cache_dependencies: bool,
    /// The Containerfile may take what the build host reaches: this
    /// machine's files in `FROM` (`oci:PATH`, `docker-archive:PATH`…),
    /// images named only in `--from`, URLs in `ADD`. A person's own
    /// command line does; the service never.
    pub host_sources: bool,
}

/// What a project is built with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildSystem {
    /// Its Containerfile if it has one, else its detected stack.
    #[default]
    Auto,
    /// Its Containerfile only.
    Docker,
    /// Its detected stack (a language, a static site), not a Containerfile.
    Buildpack,
    /// Its build.sh.
    Script,
}

/// A build secret: its id in the Containerfile, the file that holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSecret {
    pub id: String,
    pub src: PathBuf,
}

impl BuildSecret {
    /// `id=NAME,src=FILE`, as `--secret` takes it.
    pub fn parse(text: &str) -> Result<BuildSecret, String> {
        let (mut id, mut src) = (None, None);
        for part in text.split(',') {
            match part.split_once('=') {
                Some(("id", v)) => id = Some(v.to_string()),
                Some(("src", v)) => src = Some(PathBuf::from(v)),
                _ => return Err(format!("--secret {text:?}: give id=NAME,src=FILE")),
            }
        }
        match (id, src) {
            (Some(id), Some(src)) => BuildSecret { id, src }.checked(),
            _ => Err(format!("--secret {text:?}: give id=NAME,src=FILE")),
        }
    }

    /// Refuses an id a Containerfile could not name, or a path the
    /// engine's `--secret` could not take.
    pub fn checked(self) -> Result<BuildSecret, String> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 128
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !id_ok {
            return Err(format!(
                "the secret id {:?}: letters, digits, '-', '_' and '.' only",
                self.id
            ));
        }
        if self.src.to_str().is_none_or(|p| p.contains([',', '\n'])) {
            return Err(format!(
                "the secret {}: its file's path cannot hold ',' or a newline",
                self.id
            ));
        }
        Ok(self)
    }
}

/// How a Git source is fetched, and what bounds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitOptions {
    /// Hosts (`HOST` or `HOST:PORT`) that may be reached over plain
    /// `http` or `git://` (loopback always may).
    pub insecure_hosts: Vec<String>,
    /// Public addresses only, for the repository and its submodules.
    pub public_only: bool,
    /// The operator's known_hosts for `ssh` servers; without it, and
    /// without `accept_new_host_keys`, no ssh server is trusted.
    pub known_hosts: Option<PathBuf>,
    /// Trust an ssh server's key on first sight (for this build only).
    pub accept_new_host_keys: bool,
    /// The fetch (the repository and its submodules) must end within this.
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// Most bytes the checkout (with its submodules) may hold; also the
    /// largest pack a fetch may write.
    pub max_bytes: u64,
    /// Most files the checkout (with its submodules) may hold.
    pub max_files: u64,
    /// Whose source cache a fetch uses (the service's tenant): fetched
    /// objects are never shared between namespaces.
    pub cache_namespace: String,
}

impl Default for GitOptions {
    fn default() -> Self {
        GitOptions {
            insecure_hosts: Vec::new(),
            public_only: false,
            known_hosts: None,
            accept_new_host_keys: false,
            timeout: Duration::from_secs(600),
            max_bytes: 4 << 30,
            max_files: 1_000_000,
            cache_namespace: String::new(),
        }
    }
}

/// What a Git server is given to let the build read a repository.
#[derive(Clone, PartialEq, Eq)]
pub enum GitCredentials {
    /// A token, sent as the password of `x-access-token` (GitHub's,
    /// GitLab's and Gitea's convention for tokens over HTTPS).
    Token(String),
    Basic {
        username: String,
        password: String,
    },
    /// A private key, in OpenSSH's text form.
    SshKey(String),
}

impl GitCredentials {
    /// What to say it is, in errors.
    pub fn kind(&self) -> &'static str {
        match self {
            GitCredentials::Token(_) => "token",
            GitCredentials::Basic { .. } => "user and password",
            GitCredentials::SshKey(_) => "SSH key",
        }
    }

    /// The login an HTTP server is given; None for a key.
    pub fn user_password(&self) -> Option<(&str, &str)> {
        match self {
            GitCredentials::Token(t) => Some(("x-access-token", t)),
            GitCredentials::Basic { username, password } => Some((username, password)),
            GitCredentials::SshKey(_) => None,
        }
    }
}

/// Never prints the secret.
impl std::fmt::Debug for GitCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GitCredentials({})", self.kind())
    }
}

/// The step engine's storage unless a build names one: a system place
/// (steps need root), whose parents every user may pass through (see
/// `docs/steps.md`), as container engines keep theirs in /var/lib.
pub const DEFAULT_STEPS_DIR: &str = "/var/lib/builderd/steps";

/// What isolates the steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sandbox {
    /// Containers: buildah with runc, a user namespace.
    #[default]
    Oci,
    /// A microVM booted from the image (KVM when it works, else TCG).
    Microvm,
}

impl Sandbox {
    pub fn name(self) -> &'static str {
        match self {
            Sandbox::Oci => "oci",
            Sandbox::Microvm => "microvm",
        }
    }
}

/// What a step's network reaches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepNetwork {
    /// Nothing: loopback of its own only.
    #[default]
    None,
    /// Public addresses, through NAT; loopback, private, link-local and the
    /// host's own addresses dropped (DNS to the host's nameservers only).
    Egress,
}

impl StepNetwork {
    pub fn name(self) -> &'static str {
        match self {
            StepNetwork::None => "none",
            StepNetwork::Egress => "egress",
        }
    }
}

/// What the steps of one build may use, all of them together.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StepLimits {
    pub memory_bytes: u64,
    /// CPUs' worth of time (1.5: one and a half cores).
    pub cpus: f64,
    /// Processes and threads at once.
    pub pids: u64,
    /// Wall time for all the steps.
    #[serde(with = "millis")]
    pub timeout: Duration,
}

impl Default for StepLimits {
    fn default() -> Self {
        StepLimits {
            memory_bytes: 2 << 30,
            cpus: 1.0,
            pids: 1024,
            timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// Durations as whole milliseconds.
pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_without_its_credentials() {
        let mut r: BuildRequest =
            serde_json::from_str(r#"{"source": "alpine", "output": "/w/rootfs.ext4"}"#).unwrap();
        assert!(r.registry.docker_config && r.ext4.journal);
        r.credentials = Some(Credentials {
            username: "u".into(),
            password: "registry-pa55".into(),
        });
        r.git_credentials = Some(GitCredentials::Token("git-t0ken".into()));
        r.boot.env = vec!["A=1".into()];
        let text = serde_json::to_string(&r).unwrap();
        assert!(
            !text.contains("registry-pa55") && !text.contains("git-t0ken"),
            "{text}"
        );
        assert!(!format!("{r:?}").contains("git-t0ken"));
        let back: BuildRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back.boot.env, ["A=1"]);
        assert!(back.credentials.is_none() && back.git_credentials.is_none());
        // A field this version does not know is an error, not a default.
        let e =
            serde_json::from_str::<BuildRequest>(r#"{"source": "a", "output": "o", "sorce": 1}"#)
                .unwrap_err();
        assert!(e.to_string().contains("sorce"), "{e}");
    }
}
