//! `builderd boot OUT.ext4`: boots a built rootfs in a QEMU microVM with its
//! console on stdout, and exits with the app's exit code, so a build can be
//! tried at once. SIGINT or SIGTERM asks the guest to shut down (Ctrl-Alt-Del:
//! the app gets SIGTERM); a second one stops the VM at once.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use builderd_build::vm::{self, Accel};

/// `--accel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelArg {
    /// KVM when /dev/kvm is usable, else TCG.
    Auto,
    Kvm,
    Tcg,
}

impl From<AccelArg> for Accel {
    fn from(a: AccelArg) -> Accel {
        match a {
            AccelArg::Auto => Accel::Auto,
            AccelArg::Kvm => Accel::Kvm,
            AccelArg::Tcg => Accel::Tcg,
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// The rootfs image (its metadata, IMAGE.json, gives the kernel command line).
    image: PathBuf,
    /// The kernel (a bzImage); default: the newest /boot/vmlinuz-*.
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// An initramfs of your own that mounts root= and starts init=; default:
    /// one builderd makes with the kernel's virtio and ext4 modules.
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// The kernel's modules, for the initramfs builderd makes; default:
    /// /lib/modules/RELEASE of the kernel.
    #[arg(long, value_name = "DIR", conflicts_with = "initrd")]
    modules: Option<PathBuf>,
    /// Stop the VM after this many seconds.
    #[arg(long, value_name = "S", default_value_t = 300)]
    timeout: u64,
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelArg,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Keep the image unchanged: the guest's writes go to a throwaway overlay.
    #[arg(long)]
    snapshot: bool,
    /// More kernel command line (e.g. "loglevel=7"); the kernel is quiet by default.
    #[arg(long, value_name = "ARGS")]
    append: Option<String>,
}

/// The exit code when the timeout stops the VM, as timeout(1) uses.
const TIMED_OUT: u8 = 124;

/// A compressed copy (OUT.gz, OUT.zst) is not a disk the guest can mount:
/// refused here, with what to do, rather than failing inside the VM.
fn refuse_compressed(image: &Path) -> Result<()> {
    let mut magic = [0u8; 4];
    let n = std::io::Read::read(&mut std::fs::File::open(image)?, &mut magic)?;
    let what = match &magic[..n] {
        [0x1f, 0x8b, ..] => Some(("gzip", "gunzip -k")),
        [0x28, 0xb5, 0x2f, 0xfd] => Some(("zstd", "zstd -d")),
        _ => None,
    };
    if let Some((format, command)) = what {
        bail!(
            "{} is a {format} copy, not a disk image: boot the image itself, or decompress it first ({command} {})",
            image.display(),
            image.display()
        );
    }
    Ok(())
}

pub fn run(args: Args) -> Result<std::process::ExitCode> {
    if !args.image.is_file() {
        bail!("{}: no such image", args.image.display());
    }
    refuse_compressed(&args.image)?;
    let scratch = tempfile::Builder::new()
        .prefix("builderd-boot-")
        .tempdir()?;
    let boot = vm::Boot::prepare(
        args.kernel.as_deref(),
        args.initrd.as_deref(),
        args.modules.as_deref(),
        &builderd_oci::BlobCache::default_dir().join("kernels"),
        scratch.path(),
    )?;
    let (mut cmdline, layers) = from_metadata(&args.image)?;
    cmdline += " quiet";
    if let Some(extra) = &args.append {
        cmdline += " ";
        cmdline += extra;
    }
    let machine = vm::Machine {
        kernel: &boot.kernel,
        initrd: &boot.initrd,
        image: &args.image,
        cmdline: &cmdline,
        memory_mib: args.memory,
        cpus: args.cpus,
        snapshot: args.snapshot,
        layers: &layers,
        disks: &[],
        qmp: scratch.path().join("qmp.sock"),
    };
    let stop_requests = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_usize(sig, stop_requests.clone(), 1)?;
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let asked = Accel::from(args.accel);
    let accel = asked.resolve();
    let mut vm = supervise(&machine, accel, deadline, &stop_requests)?;
    if asked == Accel::Auto && accel == Accel::Kvm && vm.console_lines == 0 && !vm.status.success()
    {
        // KVM can be there and still fail (a nested or software hypervisor).
        eprintln!("builderd: QEMU failed with KVM before the guest said anything; trying TCG");
        vm = supervise(&machine, Accel::Tcg, deadline, &stop_requests)?;
    }
    if vm.timed_out {
        eprintln!(
            "builderd: the VM ran past --timeout {} s and was stopped",
            args.timeout
        );
        return Ok(std::process::ExitCode::from(TIMED_OUT));
    }
    match vm.exit_code {
        Some(code) => Ok(std::process::ExitCode::from(code.clamp(0, 255) as u8)),
        None => bail!(
            "the VM stopped ({}) without the app's exit line on the console; see the console output above",
            vm.status
        ),
    }
}

/// How one QEMU run ended.
struct Ended {
    status: std::process::ExitStatus,
    /// From the init's exit line.
    exit_code: Option<i32>,
    console_lines: usize,
    timed_out: bool,
}

/// Runs the VM to its end: the console echoed line by line and watched for
/// the init's exit line; a stop request presses Ctrl-Alt-Del, a second one
/// (or the deadline) kills QEMU.
fn supervise(
    machine: &vm::Machine,
    accel: Accel,
    deadline: Instant,
    stop_requests: &AtomicUsize,
) -> Result<Ended> {
    let mut child = machine.spawn(accel)?;
    let exit_code = Arc::new(Mutex::new(None));
    let lines = Arc::new(AtomicUsize::new(0));
    let console = child.stdout.take().expect("stdout is piped");
    let reader = {
        let (exit_code, lines) = (exit_code.clone(), lines.clone());
        std::thread::spawn(move || {
            let mut out = std::io::stdout();
            for line in BufReader::new(console).split(b'\n').map_while(Result::ok) {
                lines.fetch_add(1, Ordering::Relaxed);
                let _ = out.write_all(&line);
                let _ = out.write_all(b"\n");
                let _ = out.flush();
                if let Some(code) = builderd_init::parse_exit_line(&String::from_utf8_lossy(&line))
                {
                    *exit_code.lock().unwrap() = Some(code);
                }
            }
        })
    };
    let mut asked = false;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if stop_requests.swap(0, Ordering::Relaxed) > 0 {
            if asked {
                eprintln!("builderd: stopping the VM now");
                let _ = child.kill();
            } else {
                asked = true;
                eprintln!(
                    "builderd: asking the guest to shut down (Ctrl-Alt-Del); again to stop it now"
                );
                if let Err(e) = vm::ctrl_alt_del(&machine.qmp) {
                    eprintln!("builderd: {e:#}; stopping the VM");
                    let _ = child.kill();
                }
            }
        }
        if Instant::now() > deadline && !timed_out {
            timed_out = true;
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = reader.join();
    let exit_code = *exit_code.lock().unwrap();
    Ok(Ended {
        status,
        exit_code,
        console_lines: lines.load(Ordering::Relaxed),
        timed_out,
    })
}

/// The command line from the image's metadata file, else DIRECT_EXEC's,
/// and the disks of its kept layers (beside the image), in order.
fn from_metadata(image: &Path) -> Result<(String, Vec<PathBuf>)> {
    let mut meta = image.as_os_str().to_os_string();
    meta.push(".json");
    let meta = PathBuf::from(meta);
    let bytes = match std::fs::read(&meta) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((
                builderd_rootfs::kernel_cmdline(builderd_init::INIT_PATH),
                Vec::new(),
            ))
        }
        Err(e) => return Err(e).with_context(|| format!("{}", meta.display())),
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not valid JSON", meta.display()))?;
    let cmdline = v
        .get("kernel_cmdline")
        .and_then(|c| c.as_str())
        .map(str::to_string)
        .with_context(|| format!("{}: has no kernel_cmdline", meta.display()))?;
    let mut layers = Vec::new();
    for disk in v["layer_disks"].as_array().into_iter().flatten() {
        let name = disk["file"]
            .as_str()
            .and_then(|f| Path::new(f).file_name())
            .with_context(|| format!("{}: a layer disk without a file", meta.display()))?;
        let path = image.with_file_name(name);
        if !path.is_file() {
            bail!(
                "{}: the image's layer disk {} is missing (it is kept beside the image)",
                image.display(),
                path.display()
            );
        }
        layers.push(path);
    }
    // Each disk takes a slot of the q35 machine's PCIe root bus.
    if layers.len() > MAX_LAYER_DISKS {
        bail!(
            "{}: the image has {} layer disks; `builderd boot` attaches at most {MAX_LAYER_DISKS} (a slot each on QEMU's PCIe root bus): build it without --preserve-layers",
            image.display(),
            layers.len()
        );
    }
    Ok((cmdline, layers))
}

/// Layer disks `boot` attaches at most.
const MAX_LAYER_DISKS: usize = 24;
