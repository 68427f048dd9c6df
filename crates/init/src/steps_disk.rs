//! Build steps in a microVM (`builderd build --sandbox microvm`): the host
//! boots the built rootfs with a second disk holding the steps, the init
//! runs them and writes the root's tree back over that disk as a tar, and
//! the console tells the host how each step ended. This half, shared by
//! both sides, is the disk's format and the console lines.

use serde::{Deserialize, Serialize};

/// The kernel command line names the steps' disk: `builderd.steps=/dev/vdb`.
pub const CMDLINE_KEY: &str = "builderd.steps";

/// The most the steps' header may hold.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// What the init runs: each command with `/bin/sh -c`, in order, in the
/// run config's environment and working directory, as `user` (else the
/// run config's user).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StepsConfig {
    pub commands: Vec<String>,
    pub user: Option<String>,
}

/// The disk's header: the config's length (8 bytes, little endian), then
/// the config as JSON.
pub fn encode(config: &StepsConfig) -> Vec<u8> {
    let json = serde_json::to_vec(config).expect("the steps config serialises");
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out
}

pub fn decode(disk: &mut impl std::io::Read) -> Result<StepsConfig, String> {
    let mut len = [0u8; 8];
    disk.read_exact(&mut len)
        .map_err(|e| format!("reading the steps' disk: {e}"))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_CONFIG_BYTES {
        return Err(format!(
            "the steps' config is {len} bytes; at most {MAX_CONFIG_BYTES}"
        ));
    }
    let mut json = vec![0; len as usize];
    disk.read_exact(&mut json)
        .map_err(|e| format!("reading the steps' disk: {e}"))?;
    serde_json::from_slice(&json).map_err(|e| format!("the steps' config: {e}"))
}

/// How step `number` (from 1) ended.
pub fn step_line(number: usize, code: i32) -> String {
    format!("builderd-init: step {number} exited with code {code}")
}

pub fn parse_step_line(line: &str) -> Option<(usize, i32)> {
    let rest = line.trim_end().split("builderd-init: step ").nth(1)?;
    let (number, code) = rest.split_once(" exited with code ")?;
    Some((number.parse().ok()?, code.parse().ok()?))
}

/// The tree is on the disk, `bytes` of tar from its start.
pub fn written_line(bytes: u64) -> String {
    format!("builderd-init: steps' tree written, {bytes} bytes")
}

pub fn parse_written_line(line: &str) -> Option<u64> {
    line.trim_end()
        .split("builderd-init: steps' tree written, ")
        .nth(1)?
        .strip_suffix(" bytes")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_and_the_lines_round_trip() {
        let config = StepsConfig {
            commands: vec!["echo a > /b".into(), "exit 3".into()],
            user: Some("app".into()),
        };
        let disk = encode(&config);
        assert_eq!(decode(&mut &disk[..]).unwrap(), config);
        let mut huge = (MAX_CONFIG_BYTES + 1).to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(decode(&mut &huge[..]).unwrap_err().contains("at most"));
        assert_eq!(parse_step_line(&step_line(2, 3)), Some((2, 3)));
        assert_eq!(
            parse_step_line("[ 3.1] builderd-init: step 1 exited with code 0\r"),
            Some((1, 0))
        );
        assert_eq!(parse_written_line(&written_line(10240)), Some(10240));
        assert_eq!(
            parse_written_line("builderd-init: app exited with code 0"),
            None
        );
    }
}
