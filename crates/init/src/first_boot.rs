//! What each VM made from one image must have of its own, made at boot
//! when the image has none (a hardened build leaves them out, so that
//! clones do not share them): a machine-id and SSH host keys.

use std::path::Path;
use std::process::Command;

use builderd_init::SSH_HOST_KEYS_REMOVED;

use crate::console::say;
use crate::setup::warn;

const MACHINE_ID: &str = "/etc/machine-id";
const KEYGEN: &[&str] = &["/usr/bin/ssh-keygen", "/bin/ssh-keygen"];

pub fn run() {
    machine_id();
    ssh_host_keys();
}

/// An empty (or systemd's "uninitialized") /etc/machine-id gets a random
/// one, as systemd gives it on first boot.
fn machine_id() {
    let Ok(text) = std::fs::read_to_string(MACHINE_ID) else {
        return;
    };
    if !(text.trim().is_empty() || text.trim() == "uninitialized") {
        return;
    }
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        warn("cannot read random bytes for /etc/machine-id");
        return;
    }
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Err(e) = std::fs::write(MACHINE_ID, format!("{id}\n")) {
        warn(&format!("cannot write {MACHINE_ID}: {e}"));
    }
}

/// The build removed the image's host keys: make this VM's, once.
fn ssh_host_keys() {
    if !Path::new(SSH_HOST_KEYS_REMOVED).exists() {
        return;
    }
    let has_keys = std::fs::read_dir("/etc/ssh").is_ok_and(|d| {
        d.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("ssh_host_") && name.ends_with("_key")
        })
    });
    if has_keys {
        return;
    }
    let Some(keygen) = KEYGEN.iter().find(|p| Path::new(p).exists()) else {
        warn(
            "the build removed the image's SSH host keys and it has no ssh-keygen to make new ones",
        );
        return;
    };
    match Command::new(keygen).arg("-A").output() {
        Ok(o) if o.status.success() => say("builderd-init: made this VM's SSH host keys"),
        Ok(o) => warn(&format!(
            "ssh-keygen -A failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => warn(&format!("cannot run {keygen}: {e}")),
    }
}
