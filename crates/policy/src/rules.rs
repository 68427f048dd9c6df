//! Every rule a build may apply, with the reason for it: what OUT.json and
//! docs/docker-strategy.md name.

use builderd_flatten::Rule;

/// What a rule is part of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// `optimize_for_size`.
    Size,
    /// `remove_dev_packages`.
    DevPackages,
    /// Hardening.
    Harden,
}

pub struct RuleInfo {
    pub name: &'static str,
    pub group: Group,
    /// Is each path it touched listed in the report (not only counted)?
    pub listed: bool,
}

macro_rules! rules {
    ($($id:ident = $name:literal, $group:ident, $listed:literal;)*) => {
        rules!(@ids 0u16, $($id,)*);
        pub const RULES: &[RuleInfo] = &[
            $(RuleInfo { name: $name, group: Group::$group, listed: $listed },)*
        ];
    };
    (@ids $n:expr, $id:ident, $($rest:ident,)*) => {
        pub const $id: Rule = $n;
        rules!(@ids $n + 1, $($rest,)*);
    };
    (@ids $n:expr,) => {};
}

rules! {
    APT_CACHE = "apt-cache", Size, false;
    APT_LISTS = "apt-lists", Size, false;
    APK_CACHE = "apk-cache", Size, false;
    DNF_YUM_CACHE = "dnf-yum-cache", Size, false;
    PIP_CACHE = "pip-cache", Size, false;
    NPM_YARN_CACHE = "npm-yarn-cache", Size, false;
    GO_BUILD_CACHE = "go-build-cache", Size, false;
    TMP = "tmp", Size, false;
    DOCS = "docs", Size, false;
    MAN_INFO = "man-info", Size, false;
    LOCALES = "locales", Size, false;
    LOGS = "logs", Size, false;
    DEV_PACKAGE_FILES = "dev-package-files", DevPackages, false;
    DEV_PACKAGE_DATABASE = "package-database", DevPackages, false;
    SSH_HOST_KEYS = "ssh-host-keys", Harden, true;
    MACHINE_ID = "machine-id", Harden, true;
    SHELL_HISTORY = "shell-history", Harden, true;
    CREDENTIALS = "credentials", Harden, true;
    WORLD_WRITABLE = "world-writable", Harden, true;
    SETUID = "setuid-setgid", Harden, true;
    POLICY_REMOVE = "policy-remove", Harden, true;
    POLICY_MODE = "policy-mode", Harden, true;
}
