//! The run config: what to start and how, from the image config with the
//! build request's overrides. builderd writes it as JSON; the init reads it.

use serde::{Deserialize, Serialize};

/// The PATH docker gives a container whose image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` entries, names exactly as the image has them.
    pub env: Vec<String>,
    /// Empty means `/`.
    pub working_dir: String,
    /// `name`, `uid`, `name:group` or `uid:gid`; empty means root.
    pub user: String,
    /// Empty means `builderd`.
    pub hostname: String,
}

impl RunConfig {
    /// The command line: the entrypoint followed by the cmd, as docker runs it.
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }

    /// The environment as name and value pairs, with docker's PATH added when
    /// the image has none. An entry without `=` is a name with an empty value.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = self
            .env
            .iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e.clone(), String::new()),
            })
            .collect();
        if !pairs.iter().any(|(k, _)| k == "PATH") {
            pairs.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        pairs
    }

    pub fn working_dir(&self) -> &str {
        if self.working_dir.is_empty() {
            "/"
        } else {
            &self.working_dir
        }
    }

    pub fn hostname(&self) -> &str {
        if self.hostname.is_empty() {
            "builderd"
        } else {
            &self.hostname
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_and_env_follow_docker() {
        let rc = RunConfig {
            entrypoint: vec!["/bin/app".into(), "--flag".into()],
            cmd: vec!["serve".into()],
            env: vec![
                "lower_case=1".into(),
                "EMPTY=".into(),
                "BARE".into(),
                "A=b=c".into(),
            ],
            ..Default::default()
        };
        assert_eq!(rc.argv(), ["/bin/app", "--flag", "serve"]);
        let env = rc.env_pairs();
        assert_eq!(env[0], ("lower_case".into(), "1".into()));
        assert_eq!(env[1], ("EMPTY".into(), "".into()));
        assert_eq!(env[2], ("BARE".into(), "".into()));
        assert_eq!(env[3], ("A".into(), "b=c".into()));
        assert_eq!(env[4], ("PATH".into(), DEFAULT_PATH.into()));
        assert_eq!(rc.working_dir(), "/");
    }

    #[test]
    fn missing_fields_read_as_defaults() {
        let rc: RunConfig = serde_json::from_str(r#"{"cmd":["sh"]}"#).unwrap();
        assert_eq!(rc.argv(), ["sh"]);
        assert_eq!(rc.hostname(), "builderd");
    }
}
