//! USER as docker resolves it, from the image's own `/etc/passwd` and
//! `/etc/group` (never the host's): `name`, `uid`, `name:group`, `uid:gid`.

/// Who the app runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: every group that lists the user as a member.
    pub groups: Vec<u32>,
    pub home: String,
}

struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = Passwd<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || line.starts_with('#') {
            return None;
        }
        Some(Passwd {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

struct Group<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn group_entries(text: &str) -> impl Iterator<Item = Group<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || line.starts_with('#') {
            return None;
        }
        Some(Group {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f[3].split(',').filter(|m| !m.is_empty()).collect(),
        })
    })
}

/// Resolves `spec` against the image's passwd and group files (either may
/// be empty when the image has none). A name that is not there is an error;
/// a number that is not there is used as it is, with gid 0 and HOME `/`.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Identity, String> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let found = match user.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|p| p.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|p| p.name == user)
                .ok_or_else(|| format!("no user named {user:?} in the image's /etc/passwd"))?,
        ),
    };
    let (uid, mut gid, home, name) = match &found {
        Some(p) => (p.uid, p.gid, p.home.to_string(), Some(p.name)),
        None => (
            user.parse().expect("numeric: names were found or refused"),
            0,
            String::new(),
            None,
        ),
    };
    if let Some(g) = grp.filter(|g| !g.is_empty()) {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| format!("no group named {g:?} in the image's /etc/group"))?,
        };
    }
    let mut groups = vec![gid];
    if let Some(name) = name {
        for g in group_entries(group) {
            if g.members.contains(&name) && !groups.contains(&g.gid) {
                groups.push(g.gid);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str =
        "root:x:0:\napp:x:1000:\nvideo:x:44:app,other\naudio:x:29:other\nstaff:x:50:\n";

    #[test]
    fn names_and_numbers() {
        let root = resolve("", PASSWD, GROUP).unwrap();
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        let app = resolve("app", PASSWD, GROUP).unwrap();
        assert_eq!(
            app,
            Identity {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 44],
                home: "/home/app".into()
            }
        );
        assert_eq!(resolve("1000", PASSWD, GROUP).unwrap(), app);
        let staff = resolve("app:staff", PASSWD, GROUP).unwrap();
        assert_eq!((staff.gid, staff.groups.clone()), (50, vec![50, 44]));
        assert_eq!(resolve("app:7", PASSWD, GROUP).unwrap().gid, 7);
    }

    #[test]
    fn unknown_numbers_run_as_given_and_unknown_names_fail() {
        let anon = resolve("4242:99", PASSWD, GROUP).unwrap();
        assert_eq!(
            anon,
            Identity {
                uid: 4242,
                gid: 99,
                groups: vec![99],
                home: "/".into()
            }
        );
        assert_eq!(resolve("4242", "", "").unwrap().gid, 0);
        assert!(resolve("ghost", PASSWD, GROUP)
            .unwrap_err()
            .contains("\"ghost\""));
        assert!(resolve("app:ghosts", PASSWD, GROUP)
            .unwrap_err()
            .contains("/etc/group"));
    }
}
