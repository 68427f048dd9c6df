//! builderd-init: what runs as PID 1 in a DIRECT_EXEC microVM rootfs. The
//! library half is what the build side shares with it: the run config
//! builderd writes to `/.builderd/run.json`, the exit line the host reads off
//! the console, and the user lookup (kept pure so it is tested on the host).

pub mod layered;
pub mod run_config;
pub mod steps_disk;
pub mod user;

pub use layered::Layers;
pub use run_config::RunConfig;

/// Where builderd puts its own files in an image.
pub const DIR: &str = "/.builderd";
/// The init itself.
pub const INIT_PATH: &str = "/.builderd/init";
/// The run config it reads.
pub const RUN_CONFIG_PATH: &str = "/.builderd/run.json";
/// A CUSTOM strategy's script.
pub const CUSTOM_INIT_PATH: &str = "/.builderd/init-custom";
/// Present when the build removed the image's SSH host keys: the init
/// makes the VM's own at first boot.
pub const SSH_HOST_KEYS_REMOVED: &str = "/.builderd/ssh-host-keys-removed";

/// The console line that reports the app's exit code; `builderd boot` exits
/// with the code it names.
pub fn exit_line(code: i32) -> String {
    format!("builderd-init: app exited with code {code}")
}

/// The exit code in a console line written by [`exit_line`], if it is one.
pub fn parse_exit_line(line: &str) -> Option<i32> {
    let rest = line
        .trim_end()
        .split("builderd-init: app exited with code ")
        .nth(1)?;
    rest.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_lines_round_trip() {
        for code in [0, 1, 42, 137, 255] {
            assert_eq!(parse_exit_line(&exit_line(code)), Some(code));
        }
        // The console may put the kernel's carriage return or a prefix on it.
        assert_eq!(
            parse_exit_line("[  1.2] builderd-init: app exited with code 3\r"),
            Some(3)
        );
        assert_eq!(
            parse_exit_line("builderd-init: app exited with code x"),
            None
        );
        assert_eq!(parse_exit_line("app exited"), None);
    }
}
