//! Tiers and the quotas they set (the table in docs/service.md).

use std::time::Duration;

use builderd_build::{ArchiveLimits, StepNetwork};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Free,
    Pro,
    Enterprise,
    Dedicated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub concurrent_builds: u32,
    pub daily_builds: u32,
    pub build_timeout: Duration,
    pub storage_bytes: u64,
    /// Memory one build's processes may use together.
    pub build_memory_bytes: u64,
    /// Processes and threads one build may run at once.
    pub build_processes: u64,
    /// A build's steps (`custom_commands`), all together: whole CPUs'
    /// worth of time, processes and threads at once, and what their
    /// network reaches unless the operator says otherwise. Their memory
    /// bound is the build's.
    pub step_cpus: u32,
    pub step_processes: u64,
    pub step_network: StepNetwork,
    /// What an archive source may hold (docs/archives.md).
    pub archive: ArchiveLimits,
}

const GIB: u64 = 1 << 30;

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Free, Tier::Pro, Tier::Enterprise, Tier::Dedicated];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Pro => "pro",
            Tier::Enterprise => "enterprise",
            Tier::Dedicated => "dedicated",
        }
    }

    pub fn parse(name: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn limits(self) -> Limits {
        let (concurrent_builds, daily_builds, minutes, storage_bytes, memory) = match self {
            Tier::Free => (1, 5, 5, GIB, GIB),
            Tier::Pro => (3, 100, 15, 10 * GIB, 2 * GIB),
            Tier::Enterprise => (10, 1000, 30, 100 * GIB, 4 * GIB),
            Tier::Dedicated => (50, 10000, 60, 1024 * GIB, 8 * GIB),
        };
        let (step_cpus, step_processes, step_network) = match self {
            Tier::Free => (1, 256, StepNetwork::None),
            Tier::Pro => (2, 512, StepNetwork::Egress),
            Tier::Enterprise => (2, 1024, StepNetwork::Egress),
            Tier::Dedicated => (4, 2048, StepNetwork::Egress),
        };
        // Uncompressed bytes, entries, one file's bytes; depth and ratio
        // as builderd's defaults.
        let (archive_bytes, archive_entries, archive_entry) = match self {
            Tier::Free => (GIB, 100_000, GIB / 2),
            Tier::Pro => (4 * GIB, 500_000, 2 * GIB),
            Tier::Enterprise => (16 * GIB, 1_000_000, 8 * GIB),
            Tier::Dedicated => (64 * GIB, 2_000_000, 16 * GIB),
        };
        Limits {
            archive: ArchiveLimits {
                max_bytes: archive_bytes,
                max_entries: archive_entries,
                max_entry_bytes: archive_entry,
                ..ArchiveLimits::default()
            },
            concurrent_builds,
            daily_builds,
            build_timeout: Duration::from_secs(minutes * 60),
            storage_bytes,
            build_memory_bytes: memory,
            // A build's threads: downloads, decompression lanes, the image's
            // read-back, compression workers; a few dozen at most.
            build_processes: 256,
            step_cpus,
            step_processes,
            step_network,
        }
    }

    pub fn proto(self) -> crate::proto::builder::v1::TenantTier {
        use crate::proto::builder::v1::TenantTier as T;
        match self {
            Tier::Free => T::TENANT_TIER_FREE,
            Tier::Pro => T::TENANT_TIER_PRO,
            Tier::Enterprise => T::TENANT_TIER_ENTERPRISE,
            Tier::Dedicated => T::TENANT_TIER_DEDICATED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_limits_grow_with_the_tier() {
        for t in Tier::ALL {
            assert_eq!(Tier::parse(t.name()), Some(t));
        }
        assert_eq!(Tier::parse("gold"), None);
        let l: Vec<Limits> = Tier::ALL.iter().map(|t| t.limits()).collect();
        assert_eq!(l[0].concurrent_builds, 1);
        assert_eq!(l[3].storage_bytes, 1 << 40);
        assert_eq!(l[0].step_network, StepNetwork::None, "free: no network");
        assert!(l[1..].iter().all(|l| l.step_network == StepNetwork::Egress));
        assert!(l.windows(2).all(|w| w[0].daily_builds < w[1].daily_builds
            && w[0].build_timeout < w[1].build_timeout
            && w[0].step_cpus <= w[1].step_cpus
            && w[0].step_processes < w[1].step_processes));
    }
}
