//! Per-instance cgroups: one group per instance that enforces its SKU (CPU quota, memory
//! limit, pids limit), on cgroup v2 where the host has it with those controllers and on v1
//! where that is what is mounted.
//!
//! # Layout
//! - **v2** (Debian 12 under systemd, with `Delegate=yes` on the node unit): the node's own
//!   group `G` (from `/proc/self/cgroup`) may not hold processes once it has child groups with
//!   controllers ("no internal processes"), so the node first moves its processes into
//!   `G/supervisor`, then enables `cpu memory pids` for `G` and `G/instances`, and each instance
//!   gets `G/instances/<name>` (`cpu.max`, `memory.max`, `memory.swap.max` 0, `pids.max`).
//! - **v1**: for each of the `memory`, `pids` and `cpu` hierarchies, `<mount>/<node's group in
//!   it>/cloudphone/<name>` (`memory.limit_in_bytes` and, with swap accounting,
//!   `memory.memsw.limit_in_bytes`; `pids.max`; `cpu.cfs_quota_us` over a 100 ms period).
//!
//! `<name>` is the instance id and a digest of the node's instance dir (`x11::cgroup_name`):
//! two nodes on one host never share a group.
//!
//! Processes enter the group before they execute anything: the sandbox launcher writes its
//! own pid into each group's `cgroup.procs` and only then executes bwrap (see
//! `sandbox::command`), so nothing an instance starts ever ran outside it.
//!
//! Why not `cgroups-rs`: 0.5.1 (the current release) depends on `zbus` and a second `nix`,
//! and we need only the few files above plus placement before exec, which it does not do.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// `cpu.cfs_period_us` / the period in `cpu.max`: 100 ms, the kernel's default.
const CPU_PERIOD_US: u64 = 100_000;
/// The controllers an instance group limits.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];
/// Where cgroup file systems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// What one instance may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CgroupLimits {
    /// CPU time per wall-clock second, in thousandths of a CPU (2 vCPUs = 2000).
    pub(crate) cpu_millis: u64,
    pub(crate) memory_bytes: u64,
    /// Processes and threads at once; what stops a fork bomb.
    pub(crate) pids_max: u64,
}

/// The cgroup hierarchy this node puts its instances in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cgroups {
    /// `G/instances` on the unified hierarchy.
    V2 { parent: PathBuf },
    /// `<mount>/<G>/cloudphone` in each of the memory, pids and cpu hierarchies.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: PathBuf,
    },
}

/// One line of `/proc/self/cgroup`: the controllers of a hierarchy (empty for v2) and the
/// process's group in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Membership {
    controllers: Vec<String>,
    path: String,
}

fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(Membership {
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
                path: path.to_owned(),
            })
        })
        .collect()
}

/// `<root>/<path>` for a `/proc/self/cgroup` path (which starts with `/`).
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

impl Cgroups {
    /// Finds a hierarchy with the three controllers and prepares the node's part of it.
    /// `None` (logged by the caller) when there is none or it is not writable.
    pub(crate) fn detect() -> Result<Option<Self>, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
        let memberships = parse_proc_cgroup(&own);
        let root = Path::new(CGROUP_ROOT);
        let unified = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        if CONTROLLERS
            .iter()
            .all(|c| unified.split_whitespace().any(|have| have == *c))
        {
            let path = memberships
                .iter()
                .find(|m| m.controllers.is_empty())
                .map(|m| m.path.clone())
                .unwrap_or_else(|| "/".to_owned());
            return Self::prepare_v2(&under(root, &path)).map(Some);
        }
        let v1 = |controller: &str| -> Option<PathBuf> {
            let m = memberships
                .iter()
                .find(|m| m.controllers.iter().any(|c| c == controller))?;
            let mount = root.join(controller);
            mount
                .join("cgroup.procs")
                .exists()
                .then(|| under(&mount, &m.path).join("cloudphone"))
        };
        let (Some(memory), Some(pids), Some(cpu)) = (v1("memory"), v1("pids"), v1("cpu")) else {
            return Ok(None);
        };
        for dir in [&memory, &pids, &cpu] {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        Ok(Some(Cgroups::V1 { memory, pids, cpu }))
    }

    fn prepare_v2(own: &Path) -> Result<Self, String> {
        let err =
            |what: &str, path: &Path, e: std::io::Error| format!("{what} {}: {e}", path.display());
        let enable = CONTROLLERS
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        let is_root = own == Path::new(CGROUP_ROOT);
        if !is_root {
            // No internal processes: the node (and anything else of its unit) moves to a
            // leaf before its group may distribute controllers.
            let supervisor = own.join("supervisor");
            std::fs::create_dir_all(&supervisor).map_err(|e| err("creating", &supervisor, e))?;
            let procs = std::fs::read_to_string(own.join("cgroup.procs"))
                .map_err(|e| err("reading", own, e))?;
            for pid in procs.split_whitespace() {
                // A process that exited meanwhile is fine.
                let _ = std::fs::write(supervisor.join("cgroup.procs"), pid);
            }
            std::fs::write(own.join("cgroup.subtree_control"), &enable)
                .map_err(|e| err("enabling controllers in", own, e))?;
        }
        let parent = own.join("instances");
        std::fs::create_dir_all(&parent).map_err(|e| err("creating", &parent, e))?;
        std::fs::write(parent.join("cgroup.subtree_control"), &enable)
            .map_err(|e| err("enabling controllers in", &parent, e))?;
        Ok(Cgroups::V2 { parent })
    }

    /// "v1" or "v2", for logs.
    pub(crate) fn version(&self) -> &'static str {
        match self {
            Cgroups::V2 { .. } => "v2",
            Cgroups::V1 { .. } => "v1",
        }
    }

    /// The instance's group dirs (one on v2, one per controller on v1).
    pub(crate) fn dirs(&self, instance_id: &str) -> Vec<PathBuf> {
        match self {
            Cgroups::V2 { parent } => vec![parent.join(instance_id)],
            Cgroups::V1 { memory, pids, cpu } => {
                vec![
                    memory.join(instance_id),
                    pids.join(instance_id),
                    cpu.join(instance_id),
                ]
            }
        }
    }

    /// Creates (or updates) the instance's groups with `limits`; returns the `cgroup.procs`
    /// files a process writes itself into to join them.
    pub(crate) fn create(
        &self,
        instance_id: &str,
        limits: &CgroupLimits,
    ) -> std::io::Result<Vec<PathBuf>> {
        let dirs = self.dirs(instance_id);
        for dir in &dirs {
            std::fs::create_dir_all(dir)?;
        }
        for (file, value) in limit_files(self, limits) {
            let (dir_index, name) = file;
            let path = dirs[dir_index.min(dirs.len() - 1)].join(name);
            match std::fs::write(&path, &value) {
                Ok(()) => {}
                // Optional knobs (swap accounting) may not exist on this kernel.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && name.contains("sw") => {}
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("{}: {e}", path.display()),
                    ));
                }
            }
        }
        Ok(dirs.iter().map(|d| d.join("cgroup.procs")).collect())
    }

    /// Kills whatever still runs in the instance's groups and removes them. Missing groups
    /// are fine.
    pub(crate) async fn remove(&self, instance_id: &str) {
        for dir in self.dirs(instance_id) {
            if !dir.exists() {
                continue;
            }
            for _ in 0..50 {
                kill_members(&dir);
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    // Busy until the killed processes are reaped.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            if dir.exists() {
                tracing::warn!(group = %dir.display(), "instance cgroup could not be removed");
            }
        }
    }
}

/// (index into [`Cgroups::dirs`], file name) and the value written, in order.
fn limit_files(cgroups: &Cgroups, l: &CgroupLimits) -> Vec<((usize, &'static str), String)> {
    let quota = l.cpu_millis.saturating_mul(CPU_PERIOD_US) / 1000;
    match cgroups {
        Cgroups::V2 { .. } => vec![
            ((0, "cpu.max"), format!("{quota} {CPU_PERIOD_US}")),
            ((0, "memory.max"), l.memory_bytes.to_string()),
            ((0, "memory.swap.max"), "0".to_owned()),
            ((0, "pids.max"), l.pids_max.to_string()),
        ],
        Cgroups::V1 { .. } => vec![
            ((0, "memory.limit_in_bytes"), l.memory_bytes.to_string()),
            (
                (0, "memory.memsw.limit_in_bytes"),
                l.memory_bytes.to_string(),
            ),
            ((1, "pids.max"), l.pids_max.to_string()),
            ((2, "cpu.cfs_period_us"), CPU_PERIOD_US.to_string()),
            ((2, "cpu.cfs_quota_us"), quota.to_string()),
        ],
    }
}

/// SIGKILL to every process in the group (`cgroup.kill` where the kernel has it).
fn kill_members(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v1_and_v2_lines() {
        let text =
            "4:memory:/process_api/abc\n1:cpu:/\n2:cpu,cpuacct:/x\n0::/system.slice/n.service\n";
        let m = parse_proc_cgroup(text);
        assert_eq!(m[0].controllers, ["memory"]);
        assert_eq!(m[0].path, "/process_api/abc");
        assert_eq!(m[2].controllers, ["cpu", "cpuacct"]);
        assert!(m[3].controllers.is_empty());
        assert_eq!(
            under(Path::new("/sys/fs/cgroup"), &m[3].path),
            Path::new("/sys/fs/cgroup/system.slice/n.service")
        );
    }

    #[test]
    fn limits_as_files() {
        let l = CgroupLimits {
            cpu_millis: 2000,
            memory_bytes: 4 << 30,
            pids_max: 512,
        };
        let v2 = limit_files(
            &Cgroups::V2 {
                parent: "/p".into(),
            },
            &l,
        );
        assert!(v2.contains(&((0, "cpu.max"), "200000 100000".to_owned())));
        assert!(v2.contains(&((0, "pids.max"), "512".to_owned())));
        let v1 = limit_files(
            &Cgroups::V1 {
                memory: "/m".into(),
                pids: "/p".into(),
                cpu: "/c".into(),
            },
            &l,
        );
        assert!(v1.contains(&((2, "cpu.cfs_quota_us"), "200000".to_owned())));
        assert!(v1.contains(&((0, "memory.limit_in_bytes"), (4u64 << 30).to_string())));
    }
}
