//! An archive source (`archive:FILE`): extracted, validated as it streams
//! (builderd-archive), into a directory of the build's own beside its
//! output; its plan made from its files and the request; then built on its
//! runtime's image by the step engine, or, with nothing to run, handed back
//! for its files to go over that image as one more layer.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use super::archive_fetch;
use super::archive_plan::{self, Plan};
use super::base_images::BaseImages;
use crate::error::SourceError;
use crate::event::{self, Event, Reporter, Stage};
use crate::report::{ArchiveInfo, Generated};
use crate::request::BuildRequest;

/// An archive source's file, if `source` names one.
pub fn source_file(source: &str) -> Option<&str> {
    source.strip_prefix("archive:")
}

/// An archive extracted, and what it needs.
pub struct Unpacked {
    /// The directory its files are built from (the extraction, or the
    /// `build_context` in it).
    pub context: PathBuf,
    /// The `build_context` within the archive ("" for its root).
    pub within: String,
    pub plan: Plan,
    /// The runtime's image.
    pub image: String,
    pub info: ArchiveInfo,
    /// Removed with this.
    _dir: Removable,
}

impl Unpacked {
    /// Whether anything runs (dependency installs, a build, build steps);
    /// if not, the files are one more layer over the runtime's image.
    pub fn runs(&self, req: &BuildRequest) -> bool {
        self.plan.runs() || !req.steps.commands.is_empty()
    }

    /// The Containerfile that builds it, for the project build.
    pub fn generated(&self) -> Generated {
        Generated {
            stack: self.plan.runtime.clone(),
            version: self.plan.version.clone(),
            containerfile: self.plan.containerfile(&self.image),
        }
    }

    /// The image's run config for the files laid over it: their directory
    /// is the working directory, and the app's start its command.
    pub fn configure(&self, run: &mut builderd_oci::RunConfig) {
        run.working_dir = self.plan.output_path.clone();
        if let Some(start) = &self.plan.start {
            run.cmd = start.clone();
        }
    }
}

/// The extraction's directory, removed when dropped: an archive's
/// read-only directories made writable first, so that a user other than
/// root can remove what is in them.
struct Removable(tempfile::TempDir);

impl Removable {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Removable {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let mut pending = vec![self.0.path().to_path_buf()];
        while let Some(dir) = pending.pop() {
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push(entry.path());
                }
            }
        }
    }
}

/// Extracts the archive at `file` and plans its build.
pub fn unpack(file: &str, req: &BuildRequest, reporter: &dyn Reporter) -> Result<Unpacked> {
    let started = Instant::now();
    reporter.report(Event::Stage(Stage::Downloading));
    if file.is_empty() {
        return Err(SourceError("archive: names no file".into()).into());
    }
    let beside = req
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = tempfile::Builder::new()
        .prefix(".builderd-archive-")
        .tempdir_in(beside)
        .with_context(|| {
            format!(
                "a directory for the archive beside {}",
                req.output.display()
            )
        })?;
    let dir = Removable(dir);
    let downloaded = dir.path().join("download");
    let path = match archive_fetch::is_url(file) {
        true => {
            let bytes = archive_fetch::fetch(
                file,
                &downloaded,
                req.archive.limits.max_bytes,
                req.archive.public_only,
            )?;
            event::info(
                reporter,
                format!(
                    "{}: fetched {bytes} bytes in {:.1}s",
                    file.split('#').next().unwrap_or(file),
                    started.elapsed().as_secs_f64()
                ),
            );
            downloaded.as_path()
        }
        false => Path::new(file),
    };
    let root = dir.path().join("files");
    std::fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
    let declared = req
        .archive
        .format
        .as_deref()
        .map(builderd_archive::Format::parse)
        .transpose()
        .map_err(|e| SourceError(e.to_string()))?;
    let notice = |line: String| event::warn(reporter, line);
    let extracted = builderd_archive::extract(
        path,
        &root,
        &builderd_archive::Options {
            declared,
            limits: req.archive.limits.into(),
            notice: &notice,
        },
    )
    .map_err(|e| match e {
        builderd_archive::Error::Write(io) => {
            anyhow::Error::new(io).context("extracting the archive")
        }
        refused => SourceError(format!("{}: {refused}", path.display())).into(),
    })?;
    event::info(
        reporter,
        format!(
            "{}: a {} archive, sha256 {}: {} entries ({} files, {} directories, {} links), {} \
             bytes, extracted in {:.1}s",
            path.display(),
            extracted.format.name(),
            extracted.sha256,
            extracted.entries,
            extracted.files,
            extracted.dirs,
            extracted.symlinks + extracted.hard_links,
            extracted.bytes,
            started.elapsed().as_secs_f64()
        ),
    );
    let root = root.canonicalize()?;
    let context = match &req.project.context {
        Some(sub) => super::detect::subdirectory(&root, sub)?,
        None => root,
    };
    let plan = archive_plan::plan(&context, &req.archive)?;
    let bases = BaseImages::load(
        req.project.base_images.as_deref(),
        req.project.base_image.as_deref(),
    )?;
    let image = plan.image(&bases)?;
    let info = ArchiveInfo {
        format: extracted.format.name().to_string(),
        sha256: extracted.sha256.clone(),
        archive_bytes: extracted.archive_bytes,
        entries: extracted.entries,
        files: extracted.files,
        bytes: extracted.bytes,
        left_out: extracted.dropped,
        bits_cleared: extracted.bits_cleared,
        runtime: plan.runtime.clone(),
        runtime_image: image.clone(),
        output_path: plan.output_path.clone(),
        built: false,
        newest_mtime: extracted.newest_mtime,
    };
    Ok(Unpacked {
        context,
        within: req.project.context.clone().unwrap_or_default(),
        plan,
        image,
        info,
        _dir: dir,
    })
}
