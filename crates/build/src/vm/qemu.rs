//! One QEMU microVM: the q35 machine (dependable everywhere; QEMU's microvm
//! machine is not), KVM when it works and TCG otherwise, the serial console
//! on a pipe, and a QMP socket to press Ctrl-Alt-Del (a clean shutdown
//! request to the guest's PID 1).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// KVM when /dev/kvm is usable, else TCG.
    Auto,
    Kvm,
    Tcg,
}

pub struct Machine<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub image: &'a Path,
    pub cmdline: &'a str,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Writes go to a throwaway overlay; the image stays as it was.
    pub snapshot: bool,
    /// Disks attached read-only after the image (the first is /dev/vdb):
    /// an image's kept layers.
    pub layers: &'a [PathBuf],
    /// More raw disks, after those.
    pub disks: &'a [PathBuf],
    pub qmp: PathBuf,
}

impl Accel {
    /// `Auto` made concrete: KVM when it can run guests here, else TCG.
    pub fn resolve(self) -> Accel {
        match self {
            Accel::Auto if kvm_usable() => Accel::Kvm,
            Accel::Auto => Accel::Tcg,
            a => a,
        }
    }
}

/// Whether KVM can run guests here: /dev/kvm opens, and the CPU has
/// hardware virtualisation (a software hypervisor behind /dev/kvm, as on
/// some cloud VMs, makes QEMU abort or crawl).
fn kvm_usable() -> bool {
    let opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    opens && hw
}

impl Machine<'_> {
    /// Starts QEMU with its console on a pipe.
    pub fn spawn(&self, accel: Accel) -> Result<Child> {
        let accel = match accel.resolve() {
            Accel::Kvm => "kvm",
            _ => "tcg",
        };
        // A retry (TCG after KVM failed) makes its socket afresh.
        let _ = std::fs::remove_file(&self.qmp);
        let mut drive = format!(
            "file={},format=raw,if=virtio,cache=unsafe",
            self.image.display()
        );
        if self.snapshot {
            drive += ",snapshot=on";
        }
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel",
            accel,
            "-M",
            "q35",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .args(["-cpu", if accel == "kvm" { "host" } else { "max" }])
        .args([
            "-m",
            &self.memory_mib.to_string(),
            "-smp",
            &self.cpus.to_string(),
        ])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(self.kernel)
        .arg("-initrd")
        .arg(self.initrd)
        .args(["-append", self.cmdline])
        .args(["-drive", &drive]);
        for layer in self.layers {
            cmd.arg("-drive").arg(format!(
                "file={},format=raw,if=virtio,readonly=on",
                layer.display()
            ));
        }
        for disk in self.disks {
            cmd.arg("-drive").arg(format!(
                "file={},format=raw,if=virtio,cache=unsafe",
                disk.display()
            ));
        }
        cmd.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", self.qmp.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        cmd.spawn()
            .context("starting qemu-system-x86_64 (Debian: apt-get install qemu-system-x86)")
    }
}

/// Presses Ctrl-Alt-Del on the VM's keyboard through QMP.
pub fn ctrl_alt_del(qmp: &Path) -> Result<()> {
    let stream = UnixStream::connect(qmp)
        .with_context(|| format!("connecting to QEMU's QMP socket {}", qmp.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?; // the greeting
    for msg in [
        r#"{"execute":"qmp_capabilities"}"#,
        r#"{"execute":"send-key","arguments":{"keys":[{"type":"qcode","data":"ctrl"},{"type":"qcode","data":"alt"},{"type":"qcode","data":"delete"}]}}"#,
    ] {
        writeln!(w, "{msg}")?;
        line.clear();
        reader.read_line(&mut line)?;
        if line.contains("\"error\"") {
            anyhow::bail!("QEMU refused {msg}: {line}");
        }
    }
    Ok(())
}
