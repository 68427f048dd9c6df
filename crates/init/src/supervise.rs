//! The app's life: started as the configured user, signals forwarded, every
//! orphan reaped, and a shutdown request (Ctrl-Alt-Del from the VMM, or
//! SIGPWR) turned into SIGTERM, a grace period, then SIGKILL.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use builderd_init::{user, RunConfig};

use crate::setup::warn;

/// How long the app has between SIGTERM and SIGKILL on shutdown.
const GRACE: Duration = Duration::from_secs(10);
/// How long the app's leftover processes have after it exits.
const LEFTOVER_GRACE: Duration = Duration::from_secs(2);

/// The signals this process takes synchronously; all others keep their
/// defaults (which for PID 1 means ignored).
fn handled() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [
            libc::SIGCHLD,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGPWR,
        ] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Starts the app, supervises it, and answers its exit code (128 + the
/// signal's number when a signal ended it).
pub fn run_app(config: &RunConfig) -> Result<i32, String> {
    let argv = config.argv();
    let Some(program) = argv.first() else {
        return Err(
            "the image has neither an entrypoint nor a cmd: nothing to run (give --cmd)".into(),
        );
    };
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let who = user::resolve(&config.user, &read("/etc/passwd"), &read("/etc/group"))?;
    let workdir = config.working_dir();
    if std::fs::metadata(workdir).is_err() {
        std::fs::create_dir_all(workdir)
            .map_err(|e| format!("cannot make the working dir {workdir}: {e}"))?;
    }
    let mut env = config.env_pairs();
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push(("HOME".into(), who.home.clone()));
    }

    let set = handled();
    // SAFETY: blocks the handled signals for this (single-threaded) process.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    let mut cmd = Command::new(program);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env)
        .current_dir(workdir);
    let groups = who.groups.clone();
    let (uid, gid) = (who.uid, who.gid);
    // SAFETY: between fork and exec only async-signal-safe calls are made.
    unsafe {
        cmd.pre_exec(move || {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::setsid();
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program:?}: {e}"))?;
    let app = child.id() as libc::pid_t;
    // The Child handle is not used to wait: the reaping loop below collects
    // every exited process, the app included.
    drop(child);

    let mut exit: Option<i32> = None;
    let mut kill_at: Option<Instant> = None;
    while exit.is_none() {
        let Some((signal, from_kernel)) = wait_signal(&set, kill_at) else {
            // The grace period ran out.
            // SAFETY: kill with a pid we started.
            unsafe { libc::kill(app, libc::SIGKILL) };
            kill_at = None;
            continue;
        };
        match signal {
            libc::SIGCHLD => exit = reap_all(Some(app)).0,
            libc::SIGPWR => kill_at = Some(shutdown(app, kill_at)),
            libc::SIGINT if from_kernel => kill_at = Some(shutdown(app, kill_at)),
            s => {
                // SAFETY: kill with a pid we started.
                unsafe { libc::kill(app, s) };
            }
        }
    }
    end_leftovers(&set);
    Ok(exit.expect("the loop ends with the exit code"))
}

/// A shutdown request: SIGTERM now, SIGKILL after the grace period.
fn shutdown(app: libc::pid_t, pending: Option<Instant>) -> Instant {
    if pending.is_none() {
        eprintln!("builderd-init: shutdown requested: sending SIGTERM to the app");
        // SAFETY: kill with a pid we started.
        unsafe { libc::kill(app, libc::SIGTERM) };
    }
    pending.unwrap_or_else(|| Instant::now() + GRACE)
}

/// The next handled signal, and whether the kernel sent it (Ctrl-Alt-Del
/// arrives as a SIGINT from the kernel); `None` when `deadline` passes first.
fn wait_signal(set: &libc::sigset_t, deadline: Option<Instant>) -> Option<(i32, bool)> {
    loop {
        // SAFETY: siginfo_t is plain data the call fills in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = match deadline {
            // SAFETY: valid set and info pointers.
            None => unsafe { libc::sigwaitinfo(set, &mut info) },
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                let ts = libc::timespec {
                    tv_sec: left.as_secs() as _,
                    tv_nsec: left.subsec_nanos() as _,
                };
                // SAFETY: valid set, info and timeout pointers.
                unsafe { libc::sigtimedwait(set, &mut info, &ts) }
            }
        };
        if rc > 0 {
            return Some((rc, info.si_code == libc::SI_KERNEL));
        }
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
            return None;
        }
        // EINTR: wait again.
    }
}

/// Collects every exited child: the app's exit code if it was one, and
/// whether any process is left. Every process in the VM descends from this
/// one (orphans are re-parented to PID 1), so no child left means none.
fn reap_all(app: Option<libc::pid_t>) -> (Option<i32>, bool) {
    let mut app_exit = None;
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return (app_exit, pid == 0);
        }
        if Some(pid) == app {
            app_exit = Some(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            });
        }
    }
}

/// After the app exits, the rest of its processes get SIGTERM, a short
/// grace, then SIGKILL, as a container's would when it stops.
fn end_leftovers(set: &libc::sigset_t) {
    if !reap_all(None).1 {
        return;
    }
    // SAFETY: kill(-1) signals every process but this one.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    let deadline = Instant::now() + LEFTOVER_GRACE;
    loop {
        if !reap_all(None).1 {
            return;
        }
        if wait_signal(set, Some(deadline)).is_none() {
            break;
        }
    }
    warn("processes the app left still ran 2 s after SIGTERM: killing them");
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    while reap_all(None).1 {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `report-exit`: systemd runs this after the app's unit stops, with
/// EXIT_CODE (exited, killed, dumped) and EXIT_STATUS (a number or a signal
/// name) set; it writes the exit line to the console.
pub fn report_exit() -> i32 {
    let kind = std::env::var("EXIT_CODE").unwrap_or_default();
    let status = std::env::var("EXIT_STATUS").unwrap_or_default();
    let code = match (kind.as_str(), status.parse::<i32>()) {
        ("exited", Ok(n)) => n,
        (_, Ok(n)) => 128 + n,
        (_, Err(_)) => 128 + signal_number(&status).unwrap_or(0),
    };
    let line = builderd_init::exit_line(code);
    match std::fs::OpenOptions::new().write(true).open("/dev/console") {
        Ok(mut console) => {
            use std::io::Write;
            let _ = writeln!(console, "{line}");
        }
        Err(_) => println!("{line}"),
    }
    0
}

fn signal_number(name: &str) -> Option<i32> {
    let name = name.strip_prefix("SIG").unwrap_or(name);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ABRT" => libc::SIGABRT,
        "KILL" => libc::SIGKILL,
        "SEGV" => libc::SIGSEGV,
        "PIPE" => libc::SIGPIPE,
        "TERM" => libc::SIGTERM,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        _ => return None,
    })
}
