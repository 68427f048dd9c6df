//! The SYSTEMD strategy: a unit that runs the app from the run config,
//! enabled for the default target, which powers the VM off when the app
//! stops and reports its exit code on the console.

use builderd_ext4::{Metadata, Target};
use builderd_init::{RunConfig, INIT_PATH};

use crate::lookup::{self, Kind};
use crate::Error;

const UNIT: &str = "builderd-app.service";
const SSH_KEYGEN_UNIT: &str = "builderd-ssh-host-keys.service";

/// Where images keep systemd, in the order tried.
const SYSTEMD_PATHS: &[&str] = &["/lib/systemd/systemd", "/usr/lib/systemd/systemd"];

/// Adds the unit and answers the path of systemd to boot.
pub fn install(w: &mut dyn Target, run: &RunConfig, time: i64) -> Result<String, Error> {
    let mut systemd = None;
    for p in SYSTEMD_PATHS {
        if let Some((_, Kind::File)) = lookup::resolve(w, p)? {
            systemd = Some(p.to_string());
            break;
        }
    }
    let Some(systemd) = systemd else {
        return Err(Error::Invalid(format!(
            "the SYSTEMD init strategy needs systemd in the image, and it has none at {}; install systemd in the image or use --init direct-exec",
            SYSTEMD_PATHS.join(" or ")
        )));
    };
    let env = run.env_pairs();
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let mut argv = run.argv();
    let Some(program) = argv.first().cloned() else {
        return Err(Error::Invalid("the image has neither an entrypoint nor a cmd, so its unit has nothing to run; give --cmd or --entrypoint".into()));
    };
    // systemd looks programs up in its own PATH, not the app's.
    argv[0] = lookup::which(w, &program, path_var)?.ok_or_else(|| {
        Error::Invalid(format!(
            "the app's program {program:?} is not in the image's PATH ({path_var})"
        ))
    })?;
    let unit = unit_text(run, &argv, &env)?;
    let dir = lookup::ensure_dir(w, "/etc/systemd/system", time)?;
    let wants = lookup::ensure_dir(w, &format!("{dir}/multi-user.target.wants"), time)?;
    let unit_path = format!("{dir}/{UNIT}");
    if w.entry(unit_path.as_bytes())?.is_some() {
        return Err(Error::Invalid(format!("the image already has {unit_path}")));
    }
    let mut f = w.file(unit_path.as_bytes(), Metadata::root_owned(0o644, time))?;
    f.write(unit.as_bytes())?;
    f.finish()?;
    w.symlink(
        format!("{wants}/{UNIT}").as_bytes(),
        unit_path.as_bytes(),
        Metadata::root_owned(0o777, time),
    )?;
    Ok(systemd)
}

/// A unit that makes the VM's SSH host keys at boot, before sshd starts,
/// when it has none (the build removed the image's). Answers a warning when
/// the image has no ssh-keygen.
pub fn install_ssh_keygen(w: &mut dyn Target, time: i64) -> Result<Option<String>, Error> {
    let Some(keygen) = lookup::which(w, "ssh-keygen", "/usr/bin:/bin:/usr/sbin:/sbin")? else {
        return Ok(Some(
            "the image's SSH host keys were removed (hardening) and it has no ssh-keygen to make new ones at boot".into(),
        ));
    };
    let unit = format!(
        "[Unit]\n\
         Description=This VM's own SSH host keys (builderd removed the image's)\n\
         ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\
         Before=ssh.service sshd.service ssh.socket sshd.socket\n\n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart={}\n\n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        quote(&keygen, true)? + " -A"
    );
    let dir = lookup::ensure_dir(w, "/etc/systemd/system", time)?;
    let wants = lookup::ensure_dir(w, &format!("{dir}/multi-user.target.wants"), time)?;
    let unit_path = format!("{dir}/{SSH_KEYGEN_UNIT}");
    let mut f = w.file(unit_path.as_bytes(), Metadata::root_owned(0o644, time))?;
    f.write(unit.as_bytes())?;
    f.finish()?;
    w.symlink(
        format!("{wants}/{SSH_KEYGEN_UNIT}").as_bytes(),
        unit_path.as_bytes(),
        Metadata::root_owned(0o777, time),
    )?;
    Ok(None)
}

fn unit_text(run: &RunConfig, argv: &[String], env: &[(String, String)]) -> Result<String, Error> {
    let mut s = String::from(
        "# Written by builderd: the image's app, run as its config says; the VM\n\
         # powers off when it stops (these two are [Unit] settings: systemd\n\
         # ignores SuccessAction in [Service]).\n\
         [Unit]\nDescription=builderd app\nAfter=basic.target\n\
         SuccessAction=poweroff\nFailureAction=poweroff\n\n\
         [Service]\nType=exec\n",
    );
    let args: Vec<String> = argv
        .iter()
        .map(|a| quote(a, true))
        .collect::<Result<_, _>>()?;
    s += &format!("ExecStart={}\n", args.join(" "));
    if !run.working_dir.is_empty() {
        // A one-path setting: taken as written, specifiers aside.
        s += &format!("WorkingDirectory={}\n", run.working_dir.replace('%', "%%"));
    }
    if !run.user.is_empty() {
        let (user, group) = match run.user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (run.user.as_str(), None),
        };
        s += &format!("User={user}\n");
        if let Some(g) = group {
            s += &format!("Group={g}\n");
        }
    }
    for (k, v) in env {
        s += &format!("Environment={}\n", quote(&format!("{k}={v}"), false)?);
    }
    s += &format!(
        "StandardOutput=journal+console\nStandardError=journal+console\n\
         ExecStopPost={INIT_PATH} report-exit\n\n\
         [Install]\nWantedBy=multi-user.target\n"
    );
    Ok(s)
}

/// One word in systemd's unit syntax: double-quoted, with `%` specifiers
/// (and, in command lines, `$` variables) escaped so the text stays literal.
fn quote(word: &str, command: bool) -> Result<String, Error> {
    if word.contains(['\n', '\r', '\0']) {
        return Err(Error::Invalid(format!(
            "{word:?} has a line break or NUL, which a systemd unit cannot hold"
        )));
    }
    let mut out = String::from("\"");
    for c in word.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '%' => out.push_str("%%"),
            '$' if command => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_keep_arguments_literal() {
        let run = RunConfig {
            user: "app:staff".into(),
            working_dir: "/srv/my app".into(),
            ..Default::default()
        };
        let argv = vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo \"$HOME\" 100% \\o/".into(),
        ];
        let env = vec![("lower".to_string(), "a b%".to_string())];
        let unit = unit_text(&run, &argv, &env).unwrap();
        assert!(
            unit.contains(r#"ExecStart="/bin/sh" "-c" "echo \"$$HOME\" 100%% \\o/""#),
            "{unit}"
        );
        assert!(unit.contains("WorkingDirectory=/srv/my app\n"), "{unit}");
        assert!(unit.contains("User=app\nGroup=staff\n"), "{unit}");
        assert!(unit.contains("Environment=\"lower=a b%%\"\n"), "{unit}");
        assert!(unit_text(&run, &["a\nb".into()], &[]).is_err());
    }
}
