//! MicroVMs for built rootfs images: the kernel QEMU boots, the initramfs
//! builderd makes for it, and the QEMU machine itself. `builderd boot` and
//! the microVM sandbox of build steps both start their VMs from here.

mod initramfs;
mod kernel;
mod qemu;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use kernel::Kernel;
pub use qemu::{ctrl_alt_del, Accel, Machine};

/// What a VM boots: the kernel as QEMU enters it, and the initramfs.
pub struct Boot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl Boot {
    /// The kernel (`kernel`, else the newest in /boot), unpacked once into
    /// `kernels` (a cache), and an initramfs: `initrd`, else one made in
    /// `scratch` with the kernel's modules (`modules`, else
    /// /lib/modules/RELEASE).
    pub fn prepare(
        kernel: Option<&Path>,
        initrd: Option<&Path>,
        modules: Option<&Path>,
        kernels: &Path,
        scratch: &Path,
    ) -> Result<Boot> {
        let kernel = Kernel::read(&match kernel {
            Some(k) => k.to_path_buf(),
            None => newest_kernel()?,
        })?;
        let initrd = match initrd {
            Some(i) => i.to_path_buf(),
            None => {
                let modules = match modules {
                    Some(m) => m.to_path_buf(),
                    None => Path::new("/lib/modules").join(kernel.release()?),
                };
                let path = scratch.join("initrd.cpio");
                let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
                initramfs::build(&modules, &mut f)?;
                f.flush()?;
                path
            }
        };
        Ok(Boot {
            kernel: kernel.bootable(kernels)?,
            initrd,
        })
    }
}

/// The newest /boot/vmlinuz-* by modification time.
fn newest_kernel() -> Result<PathBuf> {
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir("/boot").context("/boot")? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("vmlinuz-") {
            let t = entry.metadata()?.modified()?;
            if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
                best = Some((t, entry.path()));
            }
        }
    }
    best.map(|(_, p)| p).context(
        "no kernel in /boot (Debian: apt-get install linux-image-amd64); give --kernel FILE",
    )
}
