//! The `git` binary, run the one way builderd runs it: a clean
//! environment (no user or system configuration, no prompts, no proxies or
//! helpers of the machine's), only the transports builderd allows, every
//! fetched object checked, files no larger than the build allows, and the
//! whole process group killed at the build's deadline. Its failures are
//! told apart (credentials, a missing repository or ref, the network), so
//! the service can say which it was and retry only the network.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

pub use crate::error::{failure_of, GitError, GitFailure as Failure};

/// Most bytes of a command's output kept (ref lists, tree listings).
const MAX_STDOUT: usize = 64 << 20;
/// The end of its errors kept for the message.
const STDERR_TAIL: usize = 4 << 10;
const POLL: Duration = Duration::from_millis(20);

/// What every `git` command of one fetch shares.
pub struct GitEnv {
    pub deadline: Instant,
    /// The largest file a command may write (a pack): RLIMIT_FSIZE.
    pub max_file_bytes: u64,
    /// `-c NAME=VALUE` settings (credential files, pinned addresses).
    pub config: Vec<String>,
    /// Environment variables (`GIT_SSH_COMMAND`, `HOME`).
    pub env: Vec<(String, String)>,
    /// Whether local paths (`file`) may be fetched from: a person's own
    /// `git:PATH`, never a submodule's URL.
    pub allow_file: bool,
}

impl GitEnv {
    /// `git` with `args`, in the repository `git_dir` when given.
    pub fn git(&self, git_dir: Option<&Path>) -> Git<'_> {
        let mut c = Command::new("git");
        c.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("LANG", "C")
            .env("LC_ALL", "C")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_ASKPASS", "/bin/false")
            .env("SSH_ASKPASS", "/bin/false")
            .env("GIT_PROTOCOL_FROM_USER", "0")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let file = if self.allow_file { "always" } else { "never" };
        let mut settings = vec![
            "protocol.allow=never".to_string(),
            "protocol.https.allow=always".into(),
            "protocol.http.allow=always".into(),
            "protocol.ssh.allow=always".into(),
            "protocol.git.allow=always".into(),
            format!("protocol.file.allow={file}"),
            "transfer.fsckObjects=true".into(),
            "gc.auto=0".into(),
            "maintenance.auto=false".into(),
            "http.followRedirects=false".into(),
            "http.lowSpeedLimit=1024".into(),
            "http.lowSpeedTime=60".into(),
            "core.hooksPath=/dev/null".into(),
            "core.fsmonitor=false".into(),
            "core.symlinks=true".into(),
            "fetch.recurseSubmodules=false".into(),
            "submodule.recurse=false".into(),
            "credential.helper=".into(),
            "advice.detachedHead=false".into(),
        ];
        if let Some(dir) = git_dir {
            settings.push(format!("safe.directory={}", dir.display()));
        }
        settings.extend(self.config.iter().cloned());
        for s in settings {
            c.arg("-c").arg(s);
        }
        if let Some(dir) = git_dir {
            c.arg("--git-dir").arg(dir);
        }
        Git { cmd: c, env: self }
    }
}

pub struct Git<'a> {
    cmd: Command,
    env: &'a GitEnv,
}

impl Git<'_> {
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(mut self, args: I) -> Self {
        self.cmd.args(args);
        self
    }

    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.arg(arg);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// Runs it to its end (or the deadline); answers its stdout.
    pub fn run(self, what: &str) -> Result<String> {
        let Git { mut cmd, env } = self;
        let limit = env.max_file_bytes;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: setrlimit is async-signal-safe; nothing else runs here.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .context("running git (Debian: apt-get install git)")?;
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let pid = child.id() as i32;
        let (status, stdout, stderr, timed_out) = std::thread::scope(|s| {
            let stdout = s.spawn(move || {
                let mut buf = Vec::new();
                let n = (&mut out).take(MAX_STDOUT as u64 + 1).read_to_end(&mut buf);
                // Drain the rest so git never blocks on a full pipe.
                let _ = std::io::copy(&mut out, &mut std::io::sink());
                n.map(|_| buf)
            });
            let stderr = s.spawn(move || {
                let mut tail = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = err.read(&mut chunk) {
                    tail.extend_from_slice(&chunk[..n]);
                    if tail.len() > STDERR_TAIL * 2 {
                        tail.drain(..tail.len() - STDERR_TAIL);
                    }
                }
                tail
            });
            let mut timed_out = false;
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Ok(status),
                    Ok(None) if Instant::now() >= env.deadline => {
                        timed_out = true;
                        // SAFETY: kills the process group git leads.
                        unsafe { libc::kill(-pid, libc::SIGKILL) };
                        break child.wait();
                    }
                    Ok(None) => std::thread::sleep(POLL),
                    Err(e) => break Err(e),
                }
            };
            // Helpers git left behind hold the pipes open: end them.
            // SAFETY: as above; the group is gone or about to be.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            (
                status,
                stdout.join().expect("reader"),
                stderr.join().expect("reader"),
                timed_out,
            )
        });
        let status = status.context("waiting for git")?;
        let detail = last_words(&stderr);
        if timed_out {
            return Err(GitError {
                what: what.into(),
                failure: Failure::Timeout,
                detail: String::new(),
            }
            .into());
        }
        if !status.success() {
            use std::os::unix::process::ExitStatusExt;
            let failure = if status.signal() == Some(libc::SIGXFSZ) {
                Failure::TooLarge
            } else {
                classify(&detail)
            };
            return Err(GitError {
                what: what.into(),
                failure,
                detail,
            }
            .into());
        }
        let stdout = stdout.context("reading git's output")?;
        if stdout.len() > MAX_STDOUT {
            anyhow::bail!("git's answer to {what} is longer than {MAX_STDOUT} bytes");
        }
        Ok(String::from_utf8_lossy(&stdout).trim_end().to_string())
    }
}

/// git's errors, without its progress lines, on one line.
fn last_words(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("From ") && !l.starts_with(" * "))
        .collect();
    let start = lines.len().saturating_sub(4);
    let mut s = lines[start..].join(" / ");
    if s.len() > 1000 {
        let mut cut = s.len() - 1000;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s = s[cut..].to_string();
    }
    s
}

/// The failure git's (LANG=C) words describe.
fn classify(detail: &str) -> Failure {
    let d = detail.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| d.contains(n));
    if any(&[
        "host key verification failed",
        "remote host identification has changed",
        "no matching host key",
    ]) {
        Failure::HostKey
    } else if any(&[
        "authentication failed",
        "could not read username",
        "could not read password",
        "permission denied (publickey",
        "the requested url returned error: 401",
        "the requested url returned error: 403",
    ]) {
        Failure::Credentials
    } else if any(&[
        "not found",
        "does not appear to be a git repository",
        "access denied or repository not exported",
        "repository not exported",
        "no such repository",
    ]) {
        Failure::NoRepository
    } else if any(&[
        "could not resolve host",
        "connection refused",
        "connection timed out",
        "failed to connect",
        "connection reset",
        "unable to connect",
        "operation timed out",
        "the remote end hung up unexpectedly",
        "early eof",
        "couldn't connect",
        "returned error: 502",
        "returned error: 503",
        "returned error: 504",
    ]) {
        Failure::Network
    } else {
        Failure::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_told_apart_by_gits_words() {
        for (words, failure) in [
            (
                "fatal: Authentication failed for 'http://127.0.0.1:5/r.git/'",
                Failure::Credentials,
            ),
            (
                "fatal: could not read Username for 'http://h': terminal prompts disabled",
                Failure::Credentials,
            ),
            (
                "git@127.0.0.1: Permission denied (publickey).",
                Failure::Credentials,
            ),
            (
                "remote: Repository not found. / fatal: repository 'https://h/x/' not found",
                Failure::NoRepository,
            ),
            (
                "fatal: remote error: access denied or repository not exported: /x.git",
                Failure::NoRepository,
            ),
            (
                "fatal: unable to access 'https://h/': Could not resolve host: h",
                Failure::Network,
            ),
            (
                "fatal: unable to connect to 127.0.0.1: Connection refused",
                Failure::Network,
            ),
            (
                "Host key verification failed. / fatal: Could not read from remote repository.",
                Failure::HostKey,
            ),
            ("fatal: bad object", Failure::Other),
        ] {
            assert_eq!(classify(words), failure, "{words}");
        }
    }

    #[test]
    fn a_command_past_the_deadline_is_killed_with_its_group() {
        let env = GitEnv {
            deadline: Instant::now() + Duration::from_millis(300),
            max_file_bytes: 1 << 20,
            config: vec![],
            env: vec![],
            allow_file: false,
        };
        // `git -c alias.x=!sleep` runs a shell: the group is what is killed.
        let started = Instant::now();
        let err = env
            .git(None)
            .args(["-c", "alias.nap=!sleep 30", "nap"])
            .run("sleep")
            .unwrap_err();
        assert_eq!(failure_of(&err), Some(Failure::Timeout), "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
