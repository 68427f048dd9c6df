//! An archive with nothing to build, as one more layer over its runtime's
//! image: a tar stream under the output path, written on a thread as the
//! flatten reads it. Extracted, its tree is walked in name order, owned by
//! root, with the modes and times the extraction gave them, files linked
//! to each other still linked; not extracted (an archive planned from its
//! top), the archive itself is read into the stream, checked as the
//! extraction checks it (`builderd_archive::stream`). The same archive
//! gives the same stream, so its name (the "digest" the flatten and the
//! layer store know it by) is made from the archive's sha256, the way it
//! is read and the rules it is read by, and where it goes.

use std::collections::HashMap;
use std::fs;
use std::io::{self, PipeReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use builderd_archive::Extracted;
use builderd_oci::{Compression, Digest, LayerInfo};

use crate::project::archive::{Files, Streamed, Unpacked};

/// What the layer's name is made from besides its content's: bump when
/// the stream's form changes.
const FORM: &str = "builderd-archive-layer 1";
const STREAMED_FORM: &str = "builderd-archive-stream 1";

/// The files as a layer; keeps the extraction (or a fetched archive) until
/// it is dropped.
pub struct TreeLayer {
    pub info: LayerInfo,
    unpacked: Arc<Unpacked>,
    /// Where the last stream opened sends a streamed archive's reading
    /// (what it held, what it told) when it is over.
    read: Mutex<Option<mpsc::Receiver<Reading>>>,
}

/// An archive read into the stream.
pub struct Reading {
    pub archive: PathBuf,
    pub result: Result<Extracted, builderd_archive::Error>,
    /// Entries left out or changed, one line each.
    pub told: Vec<String>,
}

impl TreeLayer {
    pub fn new(unpacked: Unpacked) -> TreeLayer {
        // A layer kept from an earlier build (preserve_layers) is not read
        // again: streamed, its name holds the rules it passed.
        let form = match &unpacked.files {
            Files::Extracted(_) => FORM.to_string(),
            Files::Streamed(s) => format!("{STREAMED_FORM}\0{:?}\0{:?}", s.declared, s.limits),
        };
        let id = format!(
            "{form}\0{}\0{}\0{}",
            unpacked.info.sha256, unpacked.within, unpacked.plan.output_path
        );
        TreeLayer {
            info: LayerInfo {
                digest: Digest::of(id.as_bytes()),
                size: unpacked.info.bytes.max(1),
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                compression: Compression::None,
            },
            unpacked: Arc::new(unpacked),
            read: Mutex::default(),
        }
    }

    /// A streamed archive's reading, once its stream has ended (or been
    /// cut short by a refusal).
    /// Waits for the writing to end: the flatten may stop reading at the
    /// tar's end marker, before the thread has said how it went.
    /// Called once the flatten is over (its readers dropped), so that the
    /// thread is done or ending.
    pub fn reading(&self) -> Option<Reading> {
        let reading = self.read.lock().unwrap().take()?;
        reading.recv().ok()
    }

    /// The layer's tar stream, from its start.
    pub fn open(&self) -> io::Result<Box<dyn io::Read + Send>> {
        let (reader, mut writer) = io::pipe()?;
        widen(&writer);
        let unpacked = self.unpacked.clone();
        let (read, reading) = mpsc::sync_channel(1);
        *self.read.lock().unwrap() = Some(reading);
        let writing = std::thread::Builder::new()
            .name("archive-layer".into())
            .spawn(move || {
                let at = unpacked.plan.output_path.trim_start_matches('/');
                match &unpacked.files {
                    Files::Extracted(context) => {
                        let mut tar = tar::Builder::new(&mut writer);
                        write_tree(&mut tar, context, at, unpacked.info.newest_mtime)?;
                        tar.finish()?;
                        drop(tar);
                        writer.flush()
                    }
                    Files::Streamed(archive) => {
                        let r = stream(archive, &unpacked.info.sha256, &mut writer, at);
                        let failed = r
                            .result
                            .as_ref()
                            .err()
                            .map(|e| io::Error::other(e.to_string()));
                        // Nobody waits for it when the flatten failed first.
                        let _ = read.send(r);
                        failed.map_or(Ok(()), Err)
                    }
                }
            })?;
        Ok(Box::new(Stream {
            reader,
            writing: Some(writing),
        }))
    }
}

/// Reads `archive` into `out` as a tar stream under `at`.
fn stream(archive: &Streamed, sha256: &str, out: &mut impl Write, at: &str) -> Reading {
    let told = Mutex::new(Vec::new());
    let notice = |line: String| told.lock().unwrap().push(line);
    let result = builderd_archive::stream(
        &archive.archive,
        sha256.to_string(),
        io::BufWriter::with_capacity(STREAM_BUFFER, out),
        at,
        &archive.scratch,
        &builderd_archive::Options {
            declared: archive.declared,
            limits: archive.limits,
            notice: &notice,
        },
    );
    Reading {
        archive: archive.archive.clone(),
        result,
        told: told.into_inner().unwrap(),
    }
}

/// A pipe of `PIPE_BYTES` where the kernel allows it (64 KiB otherwise):
/// fewer switches between the writer and the flatten's reader.
fn widen(pipe: &impl std::os::fd::AsRawFd) {
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor this thread holds open; it
    // touches no memory. Refused (EPERM past an unprivileged user's
    // limit), the pipe keeps its size: only slower.
    unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
}

const PIPE_BYTES: libc::c_int = 1 << 20;

/// Bytes gathered before they go into the pipe: tar headers are 512 bytes.
const STREAM_BUFFER: usize = 256 << 10;

/// The stream's reader; at its end, the writer's own error if it failed
/// (a stream cut short would otherwise read as a truncated tar).
struct Stream {
    reader: PipeReader,
    writing: Option<JoinHandle<io::Result<()>>>,
}

impl io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.reader.read(buf)?;
        if n == 0 {
            if let Some(writing) = self.writing.take() {
                writing
                    .join()
                    .map_err(|_| io::Error::other("the archive layer's writer panicked"))??;
            }
        }
        Ok(n)
    }
}

/// Writes `root`'s tree under `at` (its own directory first).
fn write_tree(
    tar: &mut tar::Builder<impl Write>,
    root: &Path,
    at: &str,
    newest: i64,
) -> io::Result<()> {
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_uid(0);
    dir.set_gid(0);
    dir.set_mtime(newest.max(0) as u64);
    dir.set_size(0);
    tar.append_data(&mut dir, format!("{at}/"), io::empty())?;
    let mut linked: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let mut names: Vec<_> = fs::read_dir(root.join(&rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let rel = rel.join(&name);
            let path = root.join(&rel);
            let meta = fs::symlink_metadata(&path)?;
            let inside = Path::new(at).join(&rel);
            let mut h = tar::Header::new_gnu();
            h.set_mode(meta.mode() & 0o7777);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(meta.mtime().max(0) as u64);
            h.set_size(0);
            let kind = meta.file_type();
            if kind.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                tar.append_data(&mut h, &inside, io::empty())?;
                subdirs.push(rel);
            } else if kind.is_symlink() {
                h.set_entry_type(tar::EntryType::Symlink);
                tar.append_link(&mut h, &inside, fs::read_link(&path)?)?;
            } else if let Some(first) = (meta.nlink() > 1)
                .then(|| linked.get(&(meta.dev(), meta.ino())))
                .flatten()
            {
                h.set_entry_type(tar::EntryType::Link);
                tar.append_link(&mut h, &inside, first)?;
            } else {
                if meta.nlink() > 1 {
                    linked.insert((meta.dev(), meta.ino()), inside.clone());
                }
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(meta.len());
                tar.append_data(&mut h, &inside, fs::File::open(&path)?)?;
            }
        }
        // Depth first, in name order: the last pushed is read first.
        pending.extend(subdirs.into_iter().rev());
    }
    Ok(())
}
