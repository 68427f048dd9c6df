//! What a builderd process leaves on the host (cgroups, network namespaces,
//! containers, work directories) is named `PREFIX{pid}-...`: whoever finds
//! one whose process is gone may end it.

/// `name` is `PREFIX{pid}-...`, made by a builderd process that is gone.
pub fn gone(name: &str, prefix: &str) -> bool {
    let pid = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<i32>().ok());
    pid.is_some_and(|pid| pid > 0 && !exists(pid))
}

fn exists(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let sent = unsafe { libc::kill(pid, 0) };
    sent == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_gone_only_when_its_process_is() {
        let me = std::process::id();
        assert!(!gone(&format!("work-{me}-1"), "work-"));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        assert!(gone(&format!("work-{dead}-7"), "work-"));
        // Not one of ours: never gone.
        assert!(!gone(&format!("other-{dead}-7"), "work-"));
        assert!(!gone("work-x-7", "work-"));
    }
}
