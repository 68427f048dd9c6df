//! Build steps: shell commands run in the image before it is written, for
//! a tenant we do not trust. In the oci sandbox the step engine (buildah
//! with runc, see `engine`) runs each command in a container of its own
//! namespaces under the steps' cgroup (`cell`), over the base image as a
//! disk our writer made from our own blobs (`disk`), and commits only
//! what they changed, as one uncompressed layer; the flatten reads that
//! layer over the image's own layers, which come from our cache as in any
//! build. In the microVM
//! sandbox (`microvm`) the booted image runs them and its whole tree comes
//! back as the image. docs/steps.md says what isolates a step and what it
//! may use.

mod base;
mod cell;
mod disk;
mod done;
mod engine;
mod from_lines;
mod host;
mod instructions;
mod layer;
mod microvm;
mod mounts;
mod network;
mod output;
mod owner;
mod run_mounts;
mod seccomp;
mod setting;
mod strict;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use builderd_oci::Image;

pub use base::BlobAt;
pub use done::Done;
pub use engine::ContainerfileBuild;
pub use setting::Setting;

use done::WorkDir;

use crate::error::{SourceError, StepError};
use crate::event::{Event, OutputStream, Reporter, StepOutput, StepResult, StepStarted};
use crate::request::{Sandbox, StepLimits, StepNetwork, Steps};

/// How often the steps' cgroup is looked at while they run.
const WATCH: Duration = Duration::from_millis(100);

/// Ends what builderd processes now gone left running or mounted on the
/// host: their steps' processes and cgroups, their network namespaces.
/// (Each engine storage's containers and work directories are swept when
/// it is next used.) Whoever kills a build process calls this after it.
pub fn sweep() {
    cell::sweep();
    network::sweep();
}

/// A cache directory is an absolute path of plain names (it goes into the
/// engine's mount options, where a comma would start another).
fn check_cache_dir(dir: &str) -> Result<()> {
    let plain = dir.starts_with('/')
        && dir.len() > 1
        && dir.len() <= 4096
        && !dir.contains(|c: char| c == ',' || c.is_control())
        && dir[1..]
            .split('/')
            .all(|part| !matches!(part, "" | "." | ".."));
    if !plain {
        anyhow::bail!(
            "cache directory {dir:?}: give an absolute path of plain names (no '.', '..', empty names or commas)"
        );
    }
    Ok(())
}

/// Runs `steps` over `image`, whose blobs are where `config` and `layers`
/// say; `storage` is the step engine's directory.
pub fn run(
    image: &Image,
    config: BlobAt,
    layers: Vec<BlobAt>,
    steps: &Steps,
    setting: &Setting<'_>,
) -> Result<Done> {
    let Setting {
        storage,
        epoch,
        reporter,
        ..
    } = *setting;
    if steps.sandbox == Sandbox::Microvm {
        if steps.network != StepNetwork::None || !steps.cache_dirs.is_empty() {
            anyhow::bail!(
                "the microVM sandbox has no network and no cache mounts yet: use the oci sandbox for them"
            );
        }
        return microvm::run(image, config, layers, steps, setting);
    }
    for dir in &steps.cache_dirs {
        check_cache_dir(dir)?;
    }
    sweep();
    let created = base::created(image, config)?;
    let engine = engine::Engine::new(storage)?;
    let work = WorkDir::new(storage)?;
    // The base's disk is written while the engine gets ready and makes the
    // container.
    let (lower, container) = std::thread::scope(|s| {
        let lower = s.spawn(|| {
            let disk = disk::provide(storage, image, layers, work.path())?;
            let mounted = disk::Mounted::new(&disk.path, &work.path().join("lower"))?;
            anyhow::Ok((disk.keeper(), mounted))
        });
        let cell = engine.ready().and_then(|()| cell::Cell::new(&steps.limits));
        let container = cell.and_then(|cell| {
            let container = engine.empty_container(&image.run, &cell.containers())?;
            anyhow::Ok((cell, container))
        });
        let lower = lower.join().expect("the base disk's thread panicked");
        (lower, container)
    });
    let ((keeper, lower), (cell, container)) = (lower?, container?);
    container.attach_base(lower.path())?;
    let egress = match steps.network {
        StepNetwork::None => None,
        StepNetwork::Egress => Some(network::Egress::new()?),
    };

    let network = egress.as_ref().map(|e| e.path());
    let how = engine::RunOptions {
        user: steps.run_as.as_deref(),
        network: network.as_deref(),
        caches: &steps.cache_dirs,
    };
    let results = supervised(
        &steps.commands,
        &steps.limits,
        &cell,
        reporter,
        &|i, line| container.run(&steps.commands[i], &how, line),
    )?;

    let commit_dir = work.path().join("commit");
    layer::commit_layout(&commit_dir)?;
    container.commit(&commit_dir, "steps")?;
    let layers = layer::committed_layers(&commit_dir, "steps")?;
    drop(container);
    drop(lower);
    drop(cell);
    drop(egress);
    Ok(Done {
        sandbox: Sandbox::Oci,
        layers,
        adjust: layer::adjust(epoch.or(created).unwrap_or(0)),
        results,
        base: keeper,
        _work: work,
    })
}

/// Runs one command: its output's lines go to the function given as they
/// come; answers its exit code and last lines.
type RunOne<'a> =
    dyn Fn(usize, &(dyn Fn(OutputStream, String) + Sync)) -> Result<(i32, Vec<String>)> + 'a;

/// Runs `commands` in turn with `run_one` under `cell`, telling
/// `reporter`; the first that fails (or goes over a limit) ends them.
/// Whatever runs when the time is up, or as soon as a process is refused
/// (a fork bomb would otherwise spin to the deadline), is killed.
fn supervised(
    commands: &[String],
    limits: &StepLimits,
    cell: &cell::Cell,
    reporter: &dyn Reporter,
    run_one: &RunOne<'_>,
) -> Result<Vec<StepResult>> {
    let deadline = Instant::now() + limits.timeout;
    let timed_out = AtomicBool::new(false);
    let finished = (Mutex::new(false), Condvar::new());
    std::thread::scope(|s| {
        s.spawn(|| {
            let (lock, wake) = &finished;
            let mut done = lock.lock().unwrap();
            while !*done {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    timed_out.store(true, Ordering::SeqCst);
                }
                if left.is_zero() || cell.pids_refused() {
                    cell.kill_all();
                    return;
                }
                done = wake.wait_timeout(done, left.min(WATCH)).unwrap().0;
            }
        });
        let ran = each(commands, limits, cell, &timed_out, reporter, run_one);
        *finished.0.lock().unwrap() = true;
        finished.1.notify_all();
        ran
    })
}

fn each(
    commands: &[String],
    limits: &StepLimits,
    cell: &cell::Cell,
    timed_out: &AtomicBool,
    reporter: &dyn Reporter,
    run_one: &RunOne<'_>,
) -> Result<Vec<StepResult>> {
    let mut results = Vec::new();
    for (index, command) in commands.iter().enumerate() {
        let number = index + 1;
        reporter.report(Event::StepStarted(StepStarted {
            index,
            command: command.clone(),
        }));
        let started = Instant::now();
        let (code, tail) = run_one(index, &|stream, line| {
            reporter.report(Event::StepOutput(StepOutput {
                index,
                stream,
                line,
            }))
        })?;
        let result = StepResult {
            index,
            command: command.clone(),
            exit_code: code,
            duration_ms: started.elapsed().as_millis() as u64,
        };
        reporter.report(Event::StepFinished(result.clone()));
        results.push(result);
        let command = command.clone();
        if timed_out.load(Ordering::SeqCst) {
            return Err(StepError::Timeout {
                number,
                command,
                limit: limits.timeout,
            }
            .into());
        }
        if code != 0 && cell.memory_exhausted() {
            return Err(StepError::Memory {
                number,
                command,
                limit: limits.memory_bytes,
            }
            .into());
        }
        if cell.pids_refused() {
            return Err(StepError::Pids {
                number,
                command,
                limit: limits.pids,
            }
            .into());
        }
        if code != 0 {
            return Err(StepError::Failed {
                number,
                command,
                code,
                tail,
            }
            .into());
        }
    }
    Ok(results)
}

/// How the flatten reads the layers a Containerfile build committed: as a
/// step's, the runtime's placeholders dropped (its times as they are; its
/// owners are the image's already, and any host id in the namespace's
/// range shifted back out of it).
pub fn built_layer_adjust() -> std::sync::Arc<builderd_flatten::Adjust> {
    layer::adjust(i64::MAX)
}

/// Builds a Containerfile with the step engine, each of its `RUN`
/// instructions isolated as a build step is and all of them under one
/// cgroup bounded by `steps.limits`, on `steps.network`; answers how many
/// of the image's layers it made (over its last stage's base).
pub fn build_containerfile(
    build: &ContainerfileBuild<'_>,
    steps: &Steps,
    storage: &Path,
    reporter: &dyn Reporter,
) -> Result<usize> {
    if steps.sandbox == Sandbox::Microvm {
        anyhow::bail!("a Containerfile builds in the oci sandbox only");
    }
    let text = std::fs::read_to_string(build.containerfile)
        .with_context(|| format!("reading {}", build.containerfile.display()))?;
    if !build.host_sources {
        strict::check(&text)?;
    }
    let caches = run_mounts::check(&text, engine::HOST_ID_RANGE)?;
    sweep();
    let engine = engine::Engine::for_builds(&namespace_storage(storage, build.namespace))?;
    engine.ready()?;
    engine.prepare_caches(&caches)?;
    let pinned = pin_images(&engine, build, &text, reporter)?;
    if let Some(identity) = build.hold {
        reporter.report(Event::Resolved(resolved(identity, pinned.path())?));
        if !reporter.go_on() {
            return Err(crate::error::Stopped.into());
        }
    }
    let cell = cell::Cell::new(&steps.limits)?;
    let egress = match steps.network {
        StepNetwork::None => None,
        StepNetwork::Egress => Some(network::Egress::new()?),
    };
    let network = egress.as_ref().map(|e| e.path());
    let name = build
        .containerfile
        .strip_prefix(build.context)
        .unwrap_or(build.containerfile)
        .display()
        .to_string();
    let image = format!("localhost/builderd-built-{}", std::process::id());
    let cgroup_parent = cell.containers();
    let run = |layers: bool| {
        let how = engine::BuildOptions {
            build,
            image: &image,
            cgroup_parent: &cgroup_parent,
            network: network.as_deref(),
            layers,
            containerfile: pinned.path(),
        };
        supervised(
            &[format!("build {name}")],
            &steps.limits,
            &cell,
            reporter,
            &|_, line| engine.build(&how, line),
        )
    };
    let mut cache = build.layer_cache;
    match run(cache.is_some()) {
        Err(e) if cache.is_some() && lacks_history(&e) => {
            crate::event::info(
                reporter,
                "a base image has no layer history, which the layer cache needs: building again without it",
            );
            cache = None;
            run(false)?;
        }
        ran => {
            ran?;
        }
    }
    let built = engine.built_layers(&image);
    let pushed = engine.push_layout(&image, build.layout, build.tag);
    match cache {
        Some(key) => engine.keep_as_cache(&image, key)?,
        None => engine.remove_image(&image),
    }
    pushed?;
    built
}

/// The Containerfile `text` with its `FROM` images pulled, checked and
/// named by id (`from_lines`), written to a file of the engine's.
fn pin_images(
    engine: &engine::Engine,
    build: &ContainerfileBuild<'_>,
    text: &str,
    reporter: &dyn Reporter,
) -> Result<tempfile::NamedTempFile> {
    let outbound = match build.public_only {
        true => builderd_oci::Outbound::public_only("--allow-private-registries"),
        false => builderd_oci::Outbound::any(),
    };
    let mut pulled: Vec<(String, String)> = Vec::new();
    let text = from_lines::pin(text, build.build_args, build.host_sources, &mut |image| {
        if let Some((_, id)) = pulled.iter().find(|(i, _)| i == image) {
            return Ok(id.clone());
        }
        from_lines::allowed(image, build.host_sources, &outbound)?;
        let (id, triggers) = engine.pull(image, build.insecure)?;
        // The triggers run in this build as if the Containerfile held them:
        // the service takes none.
        if !triggers.is_empty() && !build.host_sources {
            return Err(SourceError(format!(
                "the image {image} has ONBUILD triggers, which builds here do not run"
            ))
            .into());
        }
        run_mounts::check(&triggers.join("\n"), engine::HOST_ID_RANGE)
            .map_err(|e| SourceError(format!("the image {image}'s ONBUILD triggers: {e}")))?;
        crate::event::info(reporter, format!("FROM {image}: image {id}"));
        pulled.push((image.to_string(), id.clone()));
        Ok(id)
    })?;
    let mut file = tempfile::NamedTempFile::new_in(engine.tmp())
        .context("a file for the Containerfile as built")?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .context("writing the Containerfile as built")?;
    Ok(file)
}

/// A project's build as the service's cache keys it: one digest of what it
/// is of and of its Containerfile as built (its images pinned by id); no
/// blobs to lease.
fn resolved(identity: &str, containerfile: &Path) -> Result<crate::event::Resolved> {
    use sha2::{Digest, Sha256};
    let text = std::fs::read(containerfile).context("reading the Containerfile as built")?;
    let mut h = Sha256::new();
    h.update(identity.as_bytes());
    h.update([0]);
    h.update(&text);
    let digest = format!("sha256:{:x}", h.finalize());
    Ok(crate::event::Resolved {
        manifest_digest: digest.clone(),
        config_digest: digest,
        config_size: 0,
        layers: Vec::new(),
    })
}

/// The engine storage of a namespace's Containerfile builds.
fn namespace_storage(storage: &Path, namespace: &str) -> std::path::PathBuf {
    use sha2::{Digest, Sha256};
    let hash = format!("{:x}", Sha256::digest(namespace.as_bytes()));
    storage.join("builds").join(&hash[..32])
}

/// Whether a cached build failed because a base image's history does not
/// match its layers (buildah 1.28 cannot commit over such a base with
/// `--layers`; images written by tools that record no history are).
fn lacks_history(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<StepError>(),
        Some(StepError::Failed { tail, .. })
            if tail.iter().any(|l| l.contains("history lists") && l.contains("layers on disk"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_directories_are_absolute_paths_of_plain_names() {
        for good in ["/root/.npm", "/var/cache/apt", "/a b/c"] {
            assert!(check_cache_dir(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/",
            "root/.npm",
            "/a/../b",
            "/a/./b",
            "/a//b",
            "/a,b",
            "/a\nb",
        ] {
            assert!(check_cache_dir(bad).is_err(), "{bad:?}");
        }
    }
}
