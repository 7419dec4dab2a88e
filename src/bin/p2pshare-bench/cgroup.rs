//! A CPU quota for a process of the benchmark's own: a control group of its own with at most
//! `cores` of CPU time (the kernel's CFS bandwidth control), so that one machine can show what
//! several hosts of a given size would do. Used by the `tracker-redis` scenario, where each
//! tracker is given the CPU of a small host of its own: on a 2-core machine shared by Redis, the
//! trackers and the load generator, two uncapped trackers only split the same cores.
//!
//! cgroup v1 (`/sys/fs/cgroup/cpu`, `cpu.cfs_quota_us`) or v2 (`cpu.max`), as root. The group
//! is removed when dropped (its processes moved back to the parent group first).

use std::path::{Path, PathBuf};

/// Period of the quota: 10 ms, not the kernel's default 100 ms, so a process that used its
/// share waits at most about 10 ms for more (a tail latency a real small host does not have).
const PERIOD_US: u64 = 10_000;

/// Which cgroup interface holds the CPU controller.
#[derive(Debug, Clone, Copy)]
enum Version {
    /// `/sys/fs/cgroup/cpu/<group>/cpu.cfs_{period,quota}_us`.
    V1,
    /// `/sys/fs/cgroup/<group>/cpu.max`.
    V2,
}

/// A control group with a CPU quota.
#[derive(Debug)]
pub(crate) struct CpuQuota {
    dir: PathBuf,
    parent: PathBuf,
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("{}: {e}", path.display()))
}

impl CpuQuota {
    /// A new group `name` limited to `cores` of CPU time (e.g. 0.25 = a quarter of a core).
    pub(crate) fn new(name: &str, cores: f64) -> Result<Self, String> {
        if !(cores > 0.0 && cores <= 1024.0) {
            return Err(format!("a CPU quota of {cores} cores"));
        }
        let v2_root = Path::new("/sys/fs/cgroup");
        let (version, parent) = if std::fs::read_to_string(v2_root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
        {
            (Version::V2, v2_root.to_path_buf())
        } else if v2_root.join("cpu/cpu.cfs_quota_us").exists() {
            (Version::V1, v2_root.join("cpu"))
        } else {
            return Err("no cgroup CPU controller at /sys/fs/cgroup (needs Linux, root)".into());
        };
        let dir = parent.join(name);
        std::fs::create_dir(&dir)
            .map_err(|e| format!("cannot make cgroup {} (root?): {e}", dir.display()))?;
        let group = CpuQuota { dir, parent };
        let quota = (cores * PERIOD_US as f64).round() as u64;
        match version {
            Version::V1 => {
                write(&group.dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(&group.dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
            Version::V2 => write(&group.dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?,
        }
        Ok(group)
    }

    /// Moves the process `pid` (all its threads, and those it starts later) into the group.
    pub(crate) fn add(&self, pid: u32) -> Result<(), String> {
        write(&self.dir.join("cgroup.procs"), &pid.to_string())
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        // A group with processes in it cannot be removed: they go back to the parent first.
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(self.parent.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
