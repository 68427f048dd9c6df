//! An archive source (`archive:FILE`): extracted, validated as it streams
//! (builderd-archive), into a directory of the build's own beside its
//! output; its plan made from its files and the request; then built on its
//! runtime's image by the step engine, or, with nothing to run, handed back
//! for its files to go over that image as one more layer. An archive whose
//! top already shows nothing will run (a zip's by its central directory, a
//! tar's by reading it through once) is not extracted at all: it becomes
//! that layer as it is read.

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

/// An archive ready to build, and what it needs.
pub struct Unpacked {
    pub files: Files,
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

/// Where an archive's files are.
pub enum Files {
    /// Extracted: the directory they are built from (the extraction, or
    /// the `build_context` in it).
    Extracted(PathBuf),
    /// Not extracted (nothing runs): the archive, read into the image.
    Streamed(Streamed),
}

/// An archive to read straight into the image, as `builderd_archive::stream`
/// checks it.
pub struct Streamed {
    pub archive: PathBuf,
    pub declared: Option<builderd_archive::Format>,
    pub limits: builderd_archive::Limits,
    /// The build's own directory, for copies of files that may be zips.
    pub scratch: PathBuf,
}

/// The largest file of an archive's top read to plan its build without
/// extracting it.
const MAX_PLANNED_FILE: u64 = 1 << 20;

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
    let declared = req
        .archive
        .format
        .as_deref()
        .map(builderd_archive::Format::parse)
        .transpose()
        .map_err(|e| SourceError(e.to_string()))?;
    let within = req.project.context.clone().unwrap_or_default();
    if req.steps.commands.is_empty() && within.is_empty() {
        if let Some((streamed, plan, image, info)) = unextracted(path, declared, req, dir.path())? {
            return Ok(Unpacked {
                files: Files::Streamed(streamed),
                within,
                plan,
                image,
                info,
                _dir: dir,
            });
        }
    }
    let root = dir.path().join("files");
    std::fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
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
    .map_err(|e| refused(path, e))?;
    event::info(
        reporter,
        format!(
            "{}, extracted in {:.1}s",
            described(path, &extracted),
            started.elapsed().as_secs_f64()
        ),
    );
    let root = root.canonicalize()?;
    let context = match &req.project.context {
        Some(sub) => super::detect::subdirectory(&root, sub)?,
        None => root,
    };
    let plan = archive_plan::plan(&context, &req.archive)?;
    let image = runtime_image(&plan, req)?;
    let mut info = info(&extracted.format, &extracted.sha256, &plan, &image);
    info.counted(&extracted);
    Ok(Unpacked {
        files: Files::Extracted(context),
        within,
        plan,
        image,
        info,
        _dir: dir,
    })
}

/// The archive at `path` planned from its top alone, when nothing will
/// run: it need not be extracted. `None` otherwise (an archive whose build
/// runs something; anything the extraction should look at itself).
fn unextracted(
    path: &Path,
    declared: Option<builderd_archive::Format>,
    req: &BuildRequest,
    scratch: &Path,
) -> Result<Option<(Streamed, Plan, String, ArchiveInfo)>> {
    let limits: builderd_archive::Limits = req.archive.limits.into();
    let Some(top) = builderd_archive::top(
        path,
        declared,
        &limits,
        archive_plan::LOOKS_AT,
        MAX_PLANNED_FILE,
    ) else {
        return Ok(None);
    };
    // The few files the plan reads, and the top's directories.
    let planned = scratch.join("top");
    let laid_out = std::fs::create_dir(&planned)
        .and_then(|()| {
            top.dirs
                .iter()
                .try_for_each(|d| std::fs::create_dir(planned.join(d)))
        })
        .and_then(|()| {
            top.files
                .iter()
                .try_for_each(|(name, data)| std::fs::write(planned.join(name), data))
        })
        .and_then(|()| planned.canonicalize());
    let Ok(planned) = laid_out else {
        return Ok(None);
    };
    let plan = match archive_plan::plan(&planned, &req.archive) {
        Ok(plan) if !plan.runs() => plan,
        // Planned again from the extraction, which says it again if so.
        _ => return Ok(None),
    };
    let sha256 =
        builderd_archive::sha256(path).with_context(|| format!("reading {}", path.display()))?;
    let image = runtime_image(&plan, req)?;
    let mut info = info(&top.format, &sha256, &plan, &image);
    // What the headers declare, until the reading says what it held.
    info.bytes = top.bytes;
    let streamed = Streamed {
        archive: path.to_path_buf(),
        declared,
        limits,
        scratch: scratch.to_path_buf(),
    };
    Ok(Some((streamed, plan, image, info)))
}

/// An archive's refusal as the build's error: the archive's fault (SOURCE)
/// unless the disk failed.
pub fn refused(path: &Path, e: builderd_archive::Error) -> anyhow::Error {
    match e {
        builderd_archive::Error::Write(io) => {
            anyhow::Error::new(io).context("extracting the archive")
        }
        refused => SourceError(format!("{}: {refused}", path.display())).into(),
    }
}

/// What a log says of an archive read.
pub fn described(path: &Path, x: &builderd_archive::Extracted) -> String {
    format!(
        "{}: a {} archive, sha256 {}: {} entries ({} files, {} directories, {} links), {} bytes",
        path.display(),
        x.format.name(),
        x.sha256,
        x.entries,
        x.files,
        x.dirs,
        x.symlinks + x.hard_links,
        x.bytes,
    )
}

fn runtime_image(plan: &Plan, req: &BuildRequest) -> Result<String> {
    let bases = BaseImages::load(
        req.project.base_images.as_deref(),
        req.project.base_image.as_deref(),
    )?;
    plan.image(&bases)
}

/// The report's part, counts still to come.
fn info(format: &builderd_archive::Format, sha256: &str, plan: &Plan, image: &str) -> ArchiveInfo {
    ArchiveInfo {
        format: format.name().to_string(),
        sha256: sha256.to_string(),
        runtime: plan.runtime.clone(),
        runtime_image: image.to_string(),
        output_path: plan.output_path.clone(),
        ..ArchiveInfo::default()
    }
}
