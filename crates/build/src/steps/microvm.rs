//! The microVM sandbox (`--sandbox microvm`), the E2B way: the base image is
//! built as a rootfs with builderd-init, booted in a QEMU microVM (KVM when
//! it works, TCG otherwise) with a second disk holding the steps; the init
//! runs them (the VM is the sandbox: root in the guest is nobody on the
//! host), then writes the root's tree over that disk as a tar. That tar,
//! read by our own tar reader (never a mount of what the guest wrote), is
//! the whole image the flatten writes: what a step deleted is simply not
//! in it. The guest has no network.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use builderd_init::steps_disk::{self, StepsConfig};
use builderd_oci::Digest;

use super::base::{self, BlobAt};
use super::done::{Done, WorkDir};
use super::output::{read_lines, Tail};
use super::setting::Setting;
use crate::error::StepError;
use crate::event::{Event, OutputStream, Reporter, StepOutput, StepResult, StepStarted};
use crate::request::{BlobCacheChoice, BootOptions, BuildRequest, Sandbox, Steps};
use crate::vm::{Accel, Boot, Machine};

/// Room on the steps' disk for the tree, over the base image's size.
const TREE_ROOM: u64 = 256 << 20;
/// Free space in the booted rootfs for what the steps write.
const STEP_ROOM: u64 = 512 << 20;

/// Runs `steps` over `image` in a microVM; `storage` holds the work.
pub fn run(
    image: &builderd_oci::Image,
    config: BlobAt,
    layers: Vec<BlobAt>,
    steps: &Steps,
    setting: &Setting<'_>,
) -> Result<Done> {
    let reporter = setting.reporter;
    let work = WorkDir::new(setting.storage)?;
    let dir = work.path().to_path_buf();
    let base_dir = dir.join("base");
    let created = base::write(&base_dir, image, config, layers)?;
    let rootfs = dir.join("rootfs.ext4");
    let built = (setting.build_rootfs)(&BuildRequest {
        source: format!("oci:{}:{}", base_dir.display(), base::TAG),
        output: rootfs.clone(),
        platform: None,
        registry: Default::default(),
        cache: BlobCacheChoice::None,
        ext4: crate::request::Ext4Options {
            free: crate::request::FreeSpace::Bytes(STEP_ROOM),
            ..Default::default()
        },
        boot: BootOptions {
            // The init runs the steps, not the app: any command will do
            // for the image's run config (its environment, working
            // directory and user are what the steps get).
            cmd: Some(vec!["/bin/sh".into()]),
            ..Default::default()
        },
        hold_after_resolve: false,
        steps: Steps::default(),
        project: Default::default(),
        git: Default::default(),
        // The steps run in the image as it is.
        policy: crate::request::PolicyOptions::none(),
        layers: Default::default(),
        archive: Default::default(),
        credentials: None,
        git_credentials: None,
    })
    .context("building the microVM's rootfs")?;

    let disk = dir.join("steps.disk");
    let header = steps_disk::encode(&StepsConfig {
        commands: steps.commands.clone(),
        user: steps.run_as.clone(),
    });
    std::fs::write(&disk, &header)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&disk)?
                .set_len(built.image.size_bytes + TREE_ROOM)
        })
        .with_context(|| format!("writing {}", disk.display()))?;

    let boot = Boot::prepare(
        None,
        None,
        None,
        &builderd_oci::BlobCache::default_dir().join("kernels"),
        &dir,
    )?;
    let cmdline = format!(
        "{} quiet {}=/dev/vdb",
        built.kernel_cmdline,
        steps_disk::CMDLINE_KEY
    );
    let disks = [disk.clone()];
    let machine = Machine {
        layers: &[],
        kernel: &boot.kernel,
        initrd: &boot.initrd,
        image: &rootfs,
        cmdline: &cmdline,
        memory_mib: (steps.limits.memory_bytes >> 20).clamp(256, u32::MAX as u64) as u32,
        cpus: (steps.limits.cpus.ceil() as u32).max(1),
        snapshot: false,
        disks: &disks,
        qmp: dir.join("qmp.sock"),
    };
    let deadline = Instant::now() + steps.limits.timeout;
    let accel = Accel::Auto.resolve();
    let mut ran = watch(&machine, accel, steps, deadline, reporter)?;
    if accel == Accel::Kvm && ran.console_lines == 0 && ran.results.is_empty() && !ran.timed_out {
        // KVM can be there and still fail (a nested or software hypervisor).
        ran = watch(&machine, Accel::Tcg, steps, deadline, reporter)?;
    }
    if let Some(last) = ran.results.last() {
        if last.exit_code != 0 {
            return Err(StepError::Failed {
                number: last.index + 1,
                command: last.command.clone(),
                code: last.exit_code,
                tail: ran.tail.lines,
            }
            .into());
        }
    }
    if ran.timed_out {
        // The step that was running: the one after the last that ended.
        let number = (ran.results.len() + 1).min(steps.commands.len());
        return Err(StepError::Timeout {
            number,
            command: steps.commands[number - 1].clone(),
            limit: steps.limits.timeout,
        }
        .into());
    }
    let Some(bytes) = ran.written else {
        anyhow::bail!(
            "the microVM stopped without writing the steps' tree; its last console lines:\n{}",
            ran.tail.lines.join("\n")
        );
    };
    // The tar, named by its digest as the flatten lists layers. The guest
    // says how long it is: never past the disk it was given.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    let room = file.metadata()?.len();
    if bytes > room {
        anyhow::bail!("the microVM says it wrote {bytes} bytes of tree to a disk of {room}");
    }
    file.set_len(bytes)
        .with_context(|| format!("cutting {} to the tree", disk.display()))?;
    drop(file);
    let digest = {
        use sha2::Digest as _;
        let mut hash = sha2::Sha256::new();
        std::io::copy(&mut std::fs::File::open(&disk)?, &mut hash)?;
        Digest::of_hasher(hash)
    };
    let tree = dir.join(digest.hex());
    std::fs::rename(&disk, &tree)?;
    Ok(Done {
        layers: vec![tree],
        adjust: super::layer::clamp(setting.epoch.or(created).unwrap_or(0)),
        results: ran.results,
        sandbox: Sandbox::Microvm,
        base: None,
        _work: work,
    })
}

/// What one boot did.
struct Ran {
    results: Vec<StepResult>,
    /// The tree's size, once the init says it is written.
    written: Option<u64>,
    tail: Tail,
    console_lines: usize,
    timed_out: bool,
}

/// Boots the VM and follows its console to its end: each line is the
/// steps' output, except the init's own lines, which say how each step
/// ended and when the tree is written. Lines are cut at `MAX_STEP_LINE`
/// bytes, and the init's lines are taken only in order (a step printing
/// one cannot grow what is kept).
fn watch(
    machine: &Machine,
    accel: Accel,
    steps: &Steps,
    deadline: Instant,
    reporter: &dyn Reporter,
) -> Result<Ran> {
    let mut child = machine.spawn(accel)?;
    let console = child.stdout.take().expect("stdout is piped");
    let pid = child.id() as libc::pid_t;
    let mut ran = Ran {
        results: Vec::new(),
        written: None,
        tail: Tail::default(),
        console_lines: 0,
        timed_out: false,
    };
    let start = |index: usize| {
        if let Some(command) = steps.commands.get(index) {
            reporter.report(Event::StepStarted(StepStarted {
                index,
                command: command.clone(),
            }));
        }
    };
    start(0);
    let done = AtomicBool::new(false);
    let timed_out = AtomicBool::new(false);
    std::thread::scope(|s| {
        // The deadline ends the VM; the console then closes.
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if Instant::now() >= deadline {
                    timed_out.store(true, Ordering::Relaxed);
                    // SAFETY: kill(2) on the QEMU process this function started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let mut step_started = Instant::now();
        read_lines(Box::new(console), |line| {
            let line = line.trim_end_matches('\r').to_string();
            ran.console_lines += 1;
            let next = ran.results.len();
            if let Some((number, code)) = steps_disk::parse_step_line(&line)
                .filter(|&(n, _)| n == next + 1 && n <= steps.commands.len())
            {
                let result = StepResult {
                    index: next,
                    command: steps.commands[next].clone(),
                    exit_code: code,
                    duration_ms: step_started.elapsed().as_millis() as u64,
                };
                reporter.report(Event::StepFinished(result.clone()));
                ran.results.push(result);
                step_started = Instant::now();
                if code == 0 {
                    start(number);
                }
                return;
            }
            if ran.written.is_none() && next == steps.commands.len() {
                if let Some(bytes) = steps_disk::parse_written_line(&line) {
                    ran.written = Some(bytes);
                    return;
                }
            }
            // The init's and the kernel's last words: not the steps'.
            if builderd_init::parse_exit_line(&line).is_some()
                || line.ends_with("] reboot: Power down")
            {
                return;
            }
            ran.tail.push(&line);
            reporter.report(Event::StepOutput(StepOutput {
                index: next.min(steps.commands.len().saturating_sub(1)),
                stream: OutputStream::Stdout,
                line,
            }));
        });
        let _ = child.wait();
        done.store(true, Ordering::Relaxed);
    });
    ran.timed_out = timed_out.load(Ordering::Relaxed);
    Ok(ran)
}
