//! The initramfs `builderd boot` gives the kernel: builderd-init as `/init`
//! and the kernel modules the root disk needs (virtio, virtio_blk, ext4,
//! overlay and what they depend on, from `/lib/modules/VERSION`), in the
//! newc cpio format the kernel unpacks.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// What the root disk needs, by module name; the kernel may have them built in.
const NEEDED: &[&str] = &["virtio_pci", "virtio_blk", "ext4"];
/// Needed at run time but not a symbol dependency (ext4's checksums use the
/// crypto API's crc32c; either implementation will do), and overlayfs for an
/// image whose layers are kept (its top disk mounts them as one).
const WANTED: &[&str] = &["crc32c_intel", "crc32c_generic", "overlay"];

/// The module files to load, dependencies first, under `modules_dir`.
fn module_files(modules_dir: &Path) -> Result<Vec<PathBuf>> {
    let dep_path = modules_dir.join("modules.dep");
    let deps = std::fs::read_to_string(&dep_path).with_context(|| {
        format!(
            "{}: cannot read the kernel's module list",
            dep_path.display()
        )
    })?;
    let builtin = std::fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    let name_of = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    };
    let is_builtin = |name: &str| builtin.lines().any(|l| name_of(l) == name);
    let table: Vec<(String, &str, Vec<&str>)> = deps
        .lines()
        .filter_map(|l| {
            let (module, needs) = l.split_once(':')?;
            Some((name_of(module), module, needs.split_whitespace().collect()))
        })
        .collect();
    let find = |name: &str| table.iter().find(|(n, _, _)| n == name);
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    let mut add = |module: &str, needs: &[&str], order: &mut Vec<PathBuf>| {
        // modules.dep lists the whole closure; loading it from the end puts
        // dependencies first.
        for m in needs.iter().rev().chain(std::iter::once(&module)) {
            if seen.insert(m.to_string()) {
                order.push(modules_dir.join(m));
            }
        }
    };
    for name in NEEDED {
        match find(name) {
            Some((_, module, needs)) => add(module, needs, &mut order),
            None if is_builtin(name) => {}
            None => bail!(
                "the kernel has no {name} module in {} and does not build it in",
                modules_dir.display()
            ),
        }
    }
    for name in WANTED {
        if let Some((_, module, needs)) = find(name) {
            add(module, needs, &mut order);
        }
    }
    Ok(order)
}

/// A newc cpio archive, written entry by entry.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let header =
            format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino, mode, 0, 0, 1, 0, data.len(), 0, 0, rdev.0, rdev.1, name.len() + 1, 0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

/// The initramfs for a kernel whose modules are in `modules_dir`.
pub fn build(modules_dir: &Path, out: &mut impl Write) -> Result<()> {
    let modules = module_files(modules_dir)?;
    let mut cpio = Cpio {
        out: Vec::new(),
        ino: 0,
    };
    for dir in ["dev", "proc", "modules", "newroot"] {
        cpio.entry(dir, 0o040755, (0, 0), &[]);
    }
    // The kernel opens it for /init's stdin, stdout and stderr.
    cpio.entry("dev/console", 0o020600, (5, 1), &[]);
    cpio.entry("init", 0o100755, (0, 0), builderd_rootfs::INIT);
    let mut order = String::new();
    for path in &modules {
        let name = path
            .file_name()
            .expect("module paths end in a file name")
            .to_string_lossy();
        let data = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        cpio.entry(&format!("modules/{name}"), 0o100644, (0, 0), &data);
        order += &format!("{name}\n");
    }
    cpio.entry("modules.order", 0o100644, (0, 0), order.as_bytes());
    out.write_all(&cpio.finish())?;
    Ok(())
}
