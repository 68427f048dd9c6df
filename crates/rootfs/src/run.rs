//! The run config from the image's own config and the request's overrides,
//! with `docker run`'s rules.

use builderd_init::RunConfig;

/// What a request may change; `None` keeps the image's value.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `NAME=value`: replaces the image's entry of that name, or adds one.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

impl Overrides {
    /// A command given on a command line: a JSON array of strings
    /// (`["sh", "-c", "echo hi"]`), or else one word.
    pub fn parse_command(text: &str) -> Result<Vec<String>, ParseError> {
        if text.trim_start().starts_with('[') {
            serde_json::from_str(text)
                .map_err(|e| ParseError(format!("{text:?} is not a JSON array of strings: {e}")))
        } else if text.is_empty() {
            Ok(Vec::new())
        } else {
            Ok(vec![text.to_string()])
        }
    }

    /// Applies the overrides to the image's config. As with `docker run
    /// --entrypoint`, a new entrypoint drops the image's cmd unless a cmd is
    /// given too.
    pub fn apply(&self, image: RunConfig) -> Result<RunConfig, ParseError> {
        let mut rc = image;
        if let Some(e) = &self.entrypoint {
            rc.entrypoint = e.clone();
            rc.cmd = Vec::new();
        }
        if let Some(c) = &self.cmd {
            rc.cmd = c.clone();
        }
        for kv in &self.env {
            let Some((name, _)) = kv.split_once('=') else {
                return Err(ParseError(format!("--env {kv:?}: give NAME=value")));
            };
            if name.is_empty() {
                return Err(ParseError(format!("--env {kv:?}: the name is empty")));
            }
            rc.env
                .retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != name);
            rc.env.push(kv.clone());
        }
        if let Some(w) = &self.working_dir {
            if !w.starts_with('/') {
                return Err(ParseError(format!(
                    "--workdir {w:?}: give an absolute path"
                )));
            }
            rc.working_dir = w.clone();
        }
        if let Some(u) = &self.user {
            rc.user = u.clone();
        }
        if let Some(h) = &self.hostname {
            rc.hostname = h.clone();
        }
        Ok(rc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> RunConfig {
        RunConfig {
            entrypoint: vec!["/docker-entrypoint.sh".into()],
            cmd: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
            env: vec!["PATH=/usr/bin".into(), "lower=1".into()],
            working_dir: "/srv".into(),
            user: "app".into(),
            hostname: String::new(),
        }
    }

    #[test]
    fn docker_run_rules() {
        let none = Overrides::default().apply(image()).unwrap();
        assert_eq!(none, image());
        let ep = Overrides {
            entrypoint: Some(vec!["/bin/sh".into()]),
            ..Default::default()
        };
        assert_eq!(ep.apply(image()).unwrap().argv(), ["/bin/sh"]);
        let both = Overrides {
            entrypoint: Some(vec!["/bin/sh".into()]),
            cmd: Some(vec!["-c".into(), "true".into()]),
            ..Default::default()
        };
        assert_eq!(
            both.apply(image()).unwrap().argv(),
            ["/bin/sh", "-c", "true"]
        );
        let cmd = Overrides {
            cmd: Some(vec!["nginx".into()]),
            ..Default::default()
        };
        assert_eq!(
            cmd.apply(image()).unwrap().argv(),
            ["/docker-entrypoint.sh", "nginx"]
        );
        let env = Overrides {
            env: vec!["lower=2".into(), "NEW=x=y".into()],
            ..Default::default()
        };
        assert_eq!(
            env.apply(image()).unwrap().env,
            ["PATH=/usr/bin", "lower=2", "NEW=x=y"]
        );
    }

    #[test]
    fn bad_overrides_are_refused() {
        assert!(Overrides {
            env: vec!["NOVALUE".into()],
            ..Default::default()
        }
        .apply(image())
        .is_err());
        assert!(Overrides {
            working_dir: Some("rel".into()),
            ..Default::default()
        }
        .apply(image())
        .is_err());
        assert_eq!(
            Overrides::parse_command(r#"["sh", "-c", "a b"]"#).unwrap(),
            ["sh", "-c", "a b"]
        );
        assert_eq!(Overrides::parse_command("/bin/app").unwrap(), ["/bin/app"]);
        assert!(Overrides::parse_command("[not json").is_err());
    }
}
