//! The per-instance `bwrap` sandbox and bounded process execution.
//!
//! Owns: the bubblewrap argv for an instance ([`bwrap_args`], pure), spawning it with tokio,
//! running a command with a timeout and capped output ([`run_capped`]), and the small
//! process-record helpers runtimes use to find and kill their own processes after a node
//! restart ([`ProcessRecord`]).
//!
//! # Sandbox layout
//! The host root cannot simply be `--ro-bind / /`: bwrap then has no writable place to
//! create the `/data` mount point. So the sandbox root is an empty tmpfs into which every
//! top-level host entry is bound read-only (symlinks such as `/bin -> usr/bin` are
//! recreated), and `--remount-ro /` makes the tmpfs itself read-only at the end. The
//! effect is a read-only view of `/` with these differences:
//! - `/tmp`, `/run` are private tmpfs (host sockets under `/run` are unreachable; unix
//!   sockets would otherwise work across the unshared network namespace);
//! - `/dev` is a minimal devtmpfs, `/proc` belongs to the sandbox's pid namespace, no `/sys`;
//! - `/root`, `/home` are empty read-only dirs and a few secret files (`/etc/shadow`, …) are
//!   masked with `/dev/null`, in case the sandbox user can read them;
//! - the node's whole state dir is an empty tmpfs, so no instance sees any other
//!   instance's files, by any path;
//! - the instance's own data dir is bound writable at `/data` (also `HOME`);
//! - with a display, only that display's socket `/tmp/.X11-unix/X<n>` is bound in.
//!
//! The sandbox runs as an unprivileged host user ([`SandboxUser`]; `nobody` when the node
//! is root). All namespaces are unshared (`--unshare-all`, so no network), all capabilities are
//! dropped, the environment is cleared, and the sandbox dies with the node
//! (`--die-with-parent`) and cannot reach the node's terminal (`--new-session`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

use super::CommandOutput;

/// `PATH` inside every sandbox.
pub(crate) const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

/// Top-level host entries never bound into a sandbox: replaced by bwrap's own mounts, or
/// private to the host.
const SKIPPED_ROOT_ENTRIES: &[&str] = &[
    "proc",
    "dev",
    "tmp",
    "run",
    "sys",
    "data",
    "root",
    "home",
    "lost+found",
];

/// Top-level dirs shown empty and read-only (programs expect them to exist).
const EMPTY_ROOT_DIRS: &[&str] = &["root", "home"];

/// Top-level dirs shown as empty writable tmpfs (scratch space, lost when the command ends).
const SCRATCH_ROOT_DIRS: &[&str] = &["tmp", "run"];

/// Host files masked with `/dev/null` when they exist.
const SECRET_FILES: &[&str] = &[
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/shadow-",
    "/etc/gshadow-",
];

/// What one top-level entry of the host's `/` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RootEntryKind {
    Dir,
    File,
    Symlink(PathBuf),
}

/// One top-level entry of the host's `/`, e.g. `usr` (dir) or `bin -> usr/bin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RootEntry {
    pub name: String,
    pub kind: RootEntryKind,
}

/// The parts of the host filesystem the sandbox mirrors. Scanned once by a runtime
/// ([`HostLayout::scan`]) and passed to the pure [`bwrap_args`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct HostLayout {
    pub root_entries: Vec<RootEntry>,
    /// Existing secret files to mask.
    pub secret_files: Vec<PathBuf>,
}

impl HostLayout {
    /// Reads the host's `/`.
    pub(crate) fn scan() -> std::io::Result<Self> {
        let mut root_entries = Vec::new();
        for entry in std::fs::read_dir("/")? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                // A non-UTF-8 top-level name is not something a sandbox needs.
                continue;
            };
            let file_type = entry.file_type()?;
            let kind = if file_type.is_symlink() {
                RootEntryKind::Symlink(std::fs::read_link(entry.path())?)
            } else if file_type.is_dir() {
                RootEntryKind::Dir
            } else if file_type.is_file() {
                RootEntryKind::File
            } else {
                continue;
            };
            root_entries.push(RootEntry { name, kind });
        }
        root_entries.sort_by(|a, b| a.name.cmp(&b.name));
        let secret_files = SECRET_FILES
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .collect();
        Ok(Self {
            root_entries,
            secret_files,
        })
    }
}

/// The host user a sandbox runs as.
///
/// Dropping capabilities is not enough when the node runs as root: uid 0 still owns most
/// host files, so it could read any root-only file the read-only root shows. The sandbox
/// therefore runs as an unprivileged user (bwrap then builds its namespaces as that user),
/// and the instance's data dir is handed to that user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SandboxUser {
    pub uid: u32,
    pub gid: u32,
}

impl SandboxUser {
    /// `nobody:nogroup` on Debian.
    pub(crate) const NOBODY: Self = Self {
        uid: 65534,
        gid: 65534,
    };

    /// `nobody` when the node runs as root; `None` (the node's own, already unprivileged,
    /// user) otherwise.
    pub(crate) fn for_this_node() -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        // /proc/self is owned by the process's effective uid.
        match std::fs::metadata("/proc/self") {
            Ok(meta) if meta.uid() != 0 => None,
            _ => Some(Self::NOBODY),
        }
    }

    /// The user an instance's sandboxes run as: its own uid (and the gid of the same number)
    /// when the node is root and allocated one, `nobody` when it is root without one, and the
    /// node's own user otherwise.
    pub(crate) fn for_instance(owner: Option<u32>) -> Option<Self> {
        let shared = Self::for_this_node()?;
        Some(owner.map_or(shared, |uid| Self { uid, gid: uid }))
    }

    /// Makes `path` itself (not its contents, never a symlink's target) belong to this user.
    pub(crate) fn take_ownership(&self, path: &Path) -> std::io::Result<()> {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
    }
}

/// Creates an instance's data dir (and `apps/` in it) if missing and hands them to the
/// sandbox user. Called before every sandbox use that may follow a wipe.
pub(crate) async fn prepare_data_dir(
    data: &Path,
    user: Option<SandboxUser>,
) -> std::io::Result<()> {
    let apps = data.join("apps");
    tokio::fs::create_dir_all(&apps).await?;
    if let Some(user) = user {
        user.take_ownership(data)?;
        user.take_ownership(&apps)?;
    }
    Ok(())
}

/// The node's sandbox settings (`[sandbox]` in its config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// First host uid (and gid) of the range instances run as, one each.
    pub(crate) uid_base: u32,
    /// How many uids the range holds: the most instances that can exist at once.
    pub(crate) uid_count: u32,
    /// Size of each instance sandbox's private `/tmp` and `/run`, in bytes.
    pub(crate) tmp_size: u64,
    /// Processes and threads one instance may have at once.
    pub(crate) pids_max: u64,
    /// Caps on the SKU's memory and CPU (`None`: the SKU's own), e.g. for small test hosts.
    pub(crate) memory_max: Option<u64>,
    pub(crate) cpu_max_millis: Option<u64>,
    /// Cap on the largest file an instance may write (`None`: the SKU's storage).
    pub(crate) file_size_max: Option<u64>,
    /// Cap on what an instance's data dir holds in total (`None`: the SKU's storage).
    pub(crate) data_max: Option<u64>,
    /// Host files a sandbox may run, read-only, as `RO_BIN_DIR/<name>`.
    pub(crate) ro_binds: std::collections::BTreeMap<String, PathBuf>,
    /// Host paths no sandbox may see: node config, TLS keys, backup storage.
    pub(crate) hidden: Vec<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            // Clear of the ids useradd and systemd hand out (< 65536) and of the first
            // subordinate ranges useradd writes to /etc/subuid (100000 + 65536 per user);
            // docs/deploy.md reserves it there for the node.
            uid_base: 400_000,
            uid_count: 65_536,
            tmp_size: 256 << 20,
            pids_max: 1024,
            memory_max: None,
            cpu_max_millis: None,
            file_size_max: None,
            data_max: None,
            ro_binds: std::collections::BTreeMap::new(),
            hidden: Vec::new(),
        }
    }
}

impl SandboxConfig {
    /// The uid range, when the node may use it (it runs as root).
    pub(crate) fn uids(&self) -> Option<std::ops::Range<u32>> {
        SandboxUser::for_this_node()?;
        Some(self.uid_base..self.uid_base.saturating_add(self.uid_count))
    }

    /// What the instance's SKU (its screen's definition) gives it, under the caps.
    pub(crate) fn limits(&self, width: u32, height: u32) -> (super::cgroup::CgroupLimits, u64) {
        let sku = cloudphone_core::video::Definition::for_screen(width, height).sku_resources();
        let cap = |sku: u64, max: Option<u64>| max.map_or(sku, |m| m.min(sku));
        let limits = super::cgroup::CgroupLimits {
            cpu_millis: cap(u64::from(sku.vcpus) * 1000, self.cpu_max_millis),
            memory_bytes: cap(u64::from(sku.memory_gib) << 30, self.memory_max),
            pids_max: self.pids_max,
        };
        (
            limits,
            cap(u64::from(sku.storage_gib) << 30, self.file_size_max),
        )
    }

    /// The size of the instance's data dir: the SKU's storage, under `data_max`.
    pub(crate) fn data_quota(&self, width: u32, height: u32) -> u64 {
        let sku = cloudphone_core::video::Definition::for_screen(width, height).sku_resources();
        let storage = u64::from(sku.storage_gib) << 30;
        self.data_max.map_or(storage, |max| max.min(storage))
    }

    /// The `ro_binds` as a sandbox gets them (see [`BinBind::copy`]).
    pub(crate) fn bin_binds(&self) -> Vec<BinBind> {
        self.ro_binds
            .iter()
            .map(|(name, host)| BinBind {
                host: host.clone(),
                dest: Path::new(RO_BIN_DIR).join(name),
                copy: !reachable_by_anyone(host),
            })
            .collect()
    }
}

/// Can any user read `path` (and search every dir above it)?
fn reachable_by_anyone(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode());
    let file_ok = mode(path).is_ok_and(|m| m & 0o004 != 0);
    file_ok
        && path
            .ancestors()
            .skip(1)
            .all(|dir| mode(dir).is_ok_and(|m| m & 0o001 != 0))
}

/// Picks the lowest uid of `range` that no live instance holds.
pub(crate) fn free_uid(
    range: std::ops::Range<u32>,
    used: &std::collections::HashSet<u32>,
) -> Option<u32> {
    range.into_iter().find(|uid| !used.contains(uid))
}

/// What differs between one sandbox and another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SandboxSpec {
    /// The node's state dir; hidden entirely.
    pub(crate) state_dir: PathBuf,
    /// The instance's data dir; bound writable at `/data`.
    pub(crate) data_dir: PathBuf,
    /// X display number whose socket is bound in and exported as `DISPLAY`.
    pub(crate) display: Option<u32>,
    /// Extra host files or dirs bound read-only: (host path, sandbox path).
    pub(crate) ro_binds: Vec<(PathBuf, PathBuf)>,
    /// Extra host dirs bound writable, after the state dir is hidden: (host path, sandbox
    /// path). Only the x11 runtime's sound server has one (its socket dir).
    pub(crate) rw_binds: Vec<(PathBuf, PathBuf)>,
    /// Extra environment variables, after `PATH`, `HOME` and `DISPLAY`.
    pub(crate) env: Vec<(String, String)>,
    /// Host user to run as; `None` keeps the node's user.
    pub(crate) user: Option<SandboxUser>,
    /// What runs inside: an instance's programs, or its X server.
    pub(crate) role: SandboxRole,
    /// Size of each of the private `/tmp` and `/run` tmpfs; `None`: the kernel's default
    /// (half the host's RAM).
    pub(crate) tmp_size: Option<u64>,
    /// `RLIMIT_FSIZE`: the largest file a sandboxed process may write, in bytes.
    pub(crate) file_size_limit: Option<u64>,
    /// Host paths the sandbox must not see even read-only (node config, TLS keys, backup
    /// storage): a dir becomes an empty tmpfs, a file `/dev/null`.
    pub(crate) hidden: Vec<PathBuf>,
    /// `cgroup.procs` files the sandbox joins before bwrap runs (see [`command`]).
    pub(crate) cgroup_procs: Vec<PathBuf>,
    /// Compiled seccomp deny-list (`seccomp::deny_list_bpf`) bwrap loads before the program.
    pub(crate) seccomp: Option<PathBuf>,
    /// Host binaries the sandbox may run (`[sandbox] ro_binds`), under [`RO_BIN_DIR`].
    pub(crate) bin_binds: Vec<BinBind>,
}

/// One `[sandbox] ro_binds` entry as a sandbox gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BinBind {
    pub(crate) host: PathBuf,
    /// `RO_BIN_DIR/<name>`.
    pub(crate) dest: PathBuf,
    /// bwrap runs as the sandbox user, so it can bind only what that user may reach. A file
    /// in a private dir (a checkout under `/root`, a 0700 temp dir) is opened by the node's
    /// launcher instead and copied into the sandbox, read-only and executable
    /// (`--ro-bind-data`): a private copy per sandbox, at the cost of a copy per start.
    pub(crate) copy: bool,
}

/// At most this many `ro_binds` are copied (fds 3–8: the launcher is `/bin/sh`, whose
/// redirections take one digit; 9 is the seccomp filter).
pub(crate) const MAX_COPIED_BINDS: usize = 6;

/// What a sandbox runs; the display server's differs from the instance's in three ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum SandboxRole {
    /// Tenant programs: the data dir at `/data`, the display's socket read-only.
    #[default]
    App,
    /// The instance's Xvfb: no data dir; the host's `/tmp/.X11-unix` bound writable (it
    /// creates its socket there; the dir is sticky, so it can remove no other server's);
    /// and the host's IPC namespace kept, so the node's capture can use MIT-SHM with it.
    DisplayServer,
}

impl SandboxSpec {
    /// An instance's sandbox: its data dir, run as its own user.
    pub(crate) fn for_instance(paths: &super::InstancePaths) -> Self {
        let mut spec = Self::new(&super::common::state_dir_of(paths), &paths.data);
        spec.user = SandboxUser::for_instance(paths.owner);
        spec
    }

    pub(crate) fn new(state_dir: &Path, data_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            display: None,
            ro_binds: Vec::new(),
            rw_binds: Vec::new(),
            env: Vec::new(),
            user: SandboxUser::for_this_node(),
            role: SandboxRole::App,
            tmp_size: None,
            file_size_limit: None,
            hidden: Vec::new(),
            cgroup_procs: Vec::new(),
            seccomp: None,
            bin_binds: Vec::new(),
        }
    }
}

/// Where X servers put their sockets.
pub(crate) const X11_SOCKET_DIR: &str = "/tmp/.X11-unix";

/// Where `[sandbox] ro_binds` binaries appear inside a sandbox: `/run/cloudphone/bin/<name>`.
/// Under the sandbox's private `/run` (a tmpfs, so bwrap can create the mount points) and the
/// same on every host.
pub const RO_BIN_DIR: &str = "/run/cloudphone/bin";

/// The fd bwrap reads the seccomp filter from.
const SECCOMP_FD: &str = "9";

/// The script `/bin/sh` runs as the node's user before bwrap, for `copies` copied binaries:
/// its arguments are the seccomp filter, the copied binaries, each `cgroup.procs` to join,
/// `--`, and the command. It joins the cgroups, then executes the command with the filter
/// open as fd 9 and the binaries as fds 3, 4…. Joining before exec means nothing the
/// sandbox starts ever runs outside its cgroup. Paths are arguments, never script text.
fn launch_script(copies: usize) -> String {
    let mut script = String::from("bpf=$1; shift\n");
    let fds: Vec<usize> = (3..3 + copies).collect();
    for fd in &fds {
        script.push_str(&format!("b{fd}=$1; shift\n"));
    }
    script.push_str("while [ \"$1\" != -- ]; do echo $$ > \"$1\" || exit 125; shift; done\n");
    script.push_str("shift\nexec \"$@\" 9<\"$bpf\"");
    for fd in &fds {
        script.push_str(&format!(" {fd}<\"$b{fd}\""));
    }
    script
}

/// Path of X display `n`'s unix socket.
pub(crate) fn x11_socket_path(display: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/.X11-unix/X{display}"))
}

/// The bwrap arguments (without the `bwrap` program itself) that run `argv` in the sandbox
/// described by `spec`. Pure: the same inputs always give the same argv.
pub(crate) fn bwrap_args(
    layout: &HostLayout,
    spec: &SandboxSpec,
    argv: &[String],
) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let chdir = match spec.role {
        SandboxRole::App => "/data",
        SandboxRole::DisplayServer => "/",
    };
    let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| {
        for item in items {
            args.push(item.as_ref().to_os_string());
        }
    };

    push(&[&"--tmpfs", &"/"]);
    for entry in &layout.root_entries {
        if SKIPPED_ROOT_ENTRIES.contains(&entry.name.as_str()) {
            continue;
        }
        let dest = format!("/{}", entry.name);
        let host = Path::new("/").join(&entry.name);
        match &entry.kind {
            RootEntryKind::Dir | RootEntryKind::File => push(&[&"--ro-bind", &host, &dest]),
            RootEntryKind::Symlink(target) => push(&[&"--symlink", target, &dest]),
        }
    }
    push(&[&"--dev", &"/dev", &"--proc", &"/proc"]);
    for dir in SCRATCH_ROOT_DIRS {
        let dest = format!("/{dir}");
        if let Some(size) = spec.tmp_size {
            // bwrap 0.8: `--size` applies to the next `--tmpfs`.
            let size = size.to_string();
            push(&[&"--size", &size]);
        }
        push(&[&"--tmpfs", &dest]);
    }
    for dir in EMPTY_ROOT_DIRS {
        // A plain directory in the root tmpfs, read-only after `--remount-ro /`.
        let dest = format!("/{dir}");
        push(&[&"--dir", &dest]);
    }
    for secret in &layout.secret_files {
        push(&[&"--ro-bind", &"/dev/null", secret]);
    }
    // Hide every instance's files (including this one's, by their host path) before binding
    // this instance's data dir at /data.
    push(&[&"--tmpfs", &spec.state_dir]);
    for hidden in &spec.hidden {
        if hidden.is_dir() {
            push(&[&"--tmpfs", hidden]);
        } else if hidden.exists() {
            push(&[&"--ro-bind", &"/dev/null", hidden]);
        }
    }
    match spec.role {
        SandboxRole::App => {
            push(&[&"--bind", &spec.data_dir, &"/data"]);
            if let Some(display) = spec.display {
                let socket = x11_socket_path(display);
                push(&[&"--ro-bind", &socket, &socket]);
            }
        }
        SandboxRole::DisplayServer => {
            push(&[&"--bind", &X11_SOCKET_DIR, &X11_SOCKET_DIR]);
        }
    }
    for (host, dest) in &spec.ro_binds {
        push(&[&"--ro-bind", host, dest]);
    }
    for (host, dest) in &spec.rw_binds {
        push(&[&"--bind", host, dest]);
    }
    let mut fd = 3;
    for bind in &spec.bin_binds {
        if bind.copy {
            // The launcher opened it as this fd (see `command`).
            let fd_text = fd.to_string();
            push(&[&"--perms", &"0555", &"--ro-bind-data", &fd_text, &bind.dest]);
            fd += 1;
        } else {
            push(&[&"--ro-bind", &bind.host, &bind.dest]);
        }
    }
    push(&[&"--remount-ro", &"/"]);
    match spec.role {
        SandboxRole::App => push(&[&"--unshare-all"]),
        SandboxRole::DisplayServer => push(&[
            &"--unshare-pid",
            &"--unshare-net",
            &"--unshare-uts",
            &"--unshare-cgroup-try",
        ]),
    }
    // No user namespace inside the sandbox's own: nested namespaces are kernel attack
    // surface no phone app needs (bwrap 0.8; needs `--unshare-user`).
    push(&[&"--unshare-user", &"--disable-userns"]);
    if spec.seccomp.is_some() {
        // The launcher opens the filter as fd SECCOMP_FD for bwrap (see `command`).
        push(&[&"--seccomp", &SECCOMP_FD]);
    }
    push(&[
        &"--cap-drop",
        &"ALL",
        &"--die-with-parent",
        &"--new-session",
        &"--hostname",
        &"phone",
        &"--chdir",
        &chdir,
        &"--clearenv",
        &"--setenv",
        &"PATH",
        &SANDBOX_PATH,
        &"--setenv",
        &"HOME",
        &"/data",
    ]);
    if let Some(display) = spec.display {
        let value = format!(":{display}");
        push(&[&"--setenv", &"DISPLAY", &value]);
    }
    for (key, value) in &spec.env {
        push(&[&"--setenv", key, value]);
    }
    // The agent may raise its own threads to SCHED_RR (systemd's LimitRTPRIO=); the apps must
    // not, or one tenant's app could starve every other phone on the host.
    push(&[&"--", &"/usr/bin/prlimit", &"--rtprio=0:0"]);
    if let Some(limit) = spec.file_size_limit {
        let fsize = format!("--fsize={limit}:{limit}");
        push(&[&fsize]);
    }
    push(&[&"--"]);
    for arg in argv {
        push(&[arg]);
    }
    args
}

/// A tokio command running `argv` inside the sandbox, in its own process group (so a
/// timeout can kill everything it started) and with stdin closed.
pub(crate) fn command(
    bwrap: &Path,
    layout: &HostLayout,
    spec: &SandboxSpec,
    argv: &[String],
) -> tokio::process::Command {
    let args = bwrap_args(layout, spec, argv);
    let copies: Vec<&Path> = spec
        .bin_binds
        .iter()
        .filter(|b| b.copy)
        .map(|b| b.host.as_path())
        .take(MAX_COPIED_BINDS)
        .collect();
    let mut cmd = if spec.seccomp.is_none() && spec.cgroup_procs.is_empty() && copies.is_empty() {
        let mut cmd = tokio::process::Command::new(bwrap);
        cmd.args(args);
        if let Some(user) = spec.user {
            // std also drops root's supplementary groups when switching from root.
            cmd.uid(user.uid);
            cmd.gid(user.gid);
        }
        cmd
    } else {
        // Joining a cgroup takes the node's rights (on v2, write access to the common
        // ancestor's `cgroup.procs`), so the launcher runs as the node and drops to the
        // sandbox user with `setpriv` right before bwrap.
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(launch_script(copies.len()))
            .arg("cloudphone-sandbox");
        cmd.arg(spec.seccomp.as_deref().unwrap_or(Path::new("/dev/null")));
        cmd.args(&copies).args(&spec.cgroup_procs).arg("--");
        if let Some(user) = spec.user {
            cmd.args([
                "/usr/bin/setpriv".to_owned(),
                format!("--reuid={}", user.uid),
                format!("--regid={}", user.gid),
                "--clear-groups".to_owned(),
                "--".to_owned(),
            ]);
        }
        cmd.arg(bwrap).args(args);
        cmd
    };
    cmd.stdin(Stdio::null());
    cmd.process_group(0);
    cmd
}

/// `/bin/sh -c <script>` argv.
pub(crate) fn shell_argv(script: &str) -> Vec<String> {
    vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()]
}

/// How long to keep draining output pipes after the process was killed: a grandchild
/// outside the process group could hold them open forever.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(2);

/// Runs `cmd` to completion or until `timeout`, keeping at most `max_output_bytes` of each
/// of stdout and stderr (the rest is read and dropped so the child never blocks on a full
/// pipe). On timeout the whole process group is killed. `cmd` should have been built with
/// `process_group(0)` (as [`command`] does) so the group is the command's own.
pub(crate) async fn run_capped(
    mut cmd: tokio::process::Command,
    timeout: Duration,
    max_output_bytes: usize,
) -> std::io::Result<CommandOutput> {
    let started = Instant::now();
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_task = tokio::spawn(read_capped(stdout, max_output_bytes));
    let err_task = tokio::spawn(read_capped(stderr, max_output_bytes));

    let (status, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => (Some(status?), false),
        Err(_) => {
            if let Some(pid) = pid {
                kill_group(pid, nix::sys::signal::Signal::SIGKILL);
            }
            // Reap it; the kill above makes this return promptly.
            let _ = child.wait().await;
            (None, true)
        }
    };
    // Ordinarily the pipes close with the process. If something else still holds them
    // (only possible after a kill), stop waiting after a grace.
    let drain_limit = if timed_out {
        DRAIN_AFTER_KILL
    } else {
        timeout.max(DRAIN_AFTER_KILL)
    };
    let (stdout, out_cut) = join_reader(out_task, drain_limit).await;
    let (stderr, err_cut) = join_reader(err_task, drain_limit).await;

    let exit_code = match status {
        Some(status) => status.code().unwrap_or(-1),
        None => -1,
    };
    Ok(CommandOutput {
        exit_code,
        stdout,
        stderr,
        truncated: out_cut || err_cut,
        timed_out,
        duration: started.elapsed(),
    })
}

async fn join_reader(
    task: tokio::task::JoinHandle<(Vec<u8>, bool)>,
    limit: Duration,
) -> (String, bool) {
    let abort = task.abort_handle();
    match tokio::time::timeout(limit, task).await {
        Ok(Ok((bytes, cut))) => (utf8_lossy_capped(bytes), cut),
        Ok(Err(_)) => (String::new(), false),
        Err(_) => {
            abort.abort();
            (String::new(), true)
        }
    }
}

/// Reads `reader` to its end, keeping the first `cap` bytes. Returns (kept, cut).
async fn read_capped<R: AsyncRead + Unpin>(reader: Option<R>, cap: usize) -> (Vec<u8>, bool) {
    let Some(mut reader) = reader else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::with_capacity(cap.min(64 * 1024));
    let mut cut = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                if n > room {
                    cut = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, cut)
}

/// Bytes to text without growing past the cap: a multi-byte character cut at the cap is
/// dropped rather than turned into a (longer) replacement character.
fn utf8_lossy_capped(mut bytes: Vec<u8>) -> String {
    if let Err(e) = std::str::from_utf8(&bytes)
        && e.error_len().is_none()
    {
        bytes.truncate(e.valid_up_to());
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Sends `signal` to process group `pgid`; a group that is already gone is fine.
pub(crate) fn kill_group(pgid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(pgid) = i32::try_from(pgid) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), signal);
    }
}

/// A process a runtime started, identified well enough to find it again after a node
/// restart without killing an unrelated process that reused the pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessRecord {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

impl ProcessRecord {
    /// Records the running process `pid`; `None` if it is already gone.
    pub(crate) fn of(pid: u32) -> Option<Self> {
        Some(Self {
            pid,
            start_time: proc_start_time(pid)?,
        })
    }

    /// True while this exact process (not a pid reuse) exists.
    pub fn is_alive(&self) -> bool {
        proc_start_time(self.pid) == Some(self.start_time)
    }

    /// SIGTERM to the process group, SIGKILL after `grace` if it is still there. The process
    /// was started as a group leader, so this also takes its children. Does nothing if the
    /// pid now belongs to another process.
    pub(crate) async fn terminate(&self, grace: Duration) {
        if !self.is_alive() {
            return;
        }
        kill_group(self.pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_alive() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.is_alive() {
            kill_group(self.pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Start time of `pid` in clock ticks since boot. A zombie still counts (it holds the pid).
pub(crate) fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of `/proc/<pid>/stat`. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted after its last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After the comm come field 3 (state) onwards; field 22 is the 20th of those.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Is `pid` a zombie (exited, not yet reaped)?
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> HostLayout {
        HostLayout {
            root_entries: vec![
                RootEntry {
                    name: "bin".into(),
                    kind: RootEntryKind::Symlink("usr/bin".into()),
                },
                RootEntry {
                    name: "etc".into(),
                    kind: RootEntryKind::Dir,
                },
                RootEntry {
                    name: "home".into(),
                    kind: RootEntryKind::Dir,
                },
                RootEntry {
                    name: "proc".into(),
                    kind: RootEntryKind::Dir,
                },
                RootEntry {
                    name: "root".into(),
                    kind: RootEntryKind::Dir,
                },
                RootEntry {
                    name: "tmp".into(),
                    kind: RootEntryKind::Dir,
                },
                RootEntry {
                    name: "usr".into(),
                    kind: RootEntryKind::Dir,
                },
                RootEntry {
                    name: "marker".into(),
                    kind: RootEntryKind::File,
                },
            ],
            secret_files: vec!["/etc/shadow".into()],
        }
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    /// Index of the first occurrence of the consecutive run `needle`.
    fn find(haystack: &[String], needle: &[&str]) -> Option<usize> {
        haystack
            .windows(needle.len())
            .position(|w| w.iter().zip(needle).all(|(a, b)| a == b))
    }

    #[test]
    fn mirrors_root_read_only_and_skips_private_entries() {
        let spec = SandboxSpec::new(Path::new("/var/lib/cp"), Path::new("/var/lib/cp/i/a/data"));
        let args = strings(bwrap_args(&layout(), &spec, &shell_argv("true")));
        assert_eq!(&args[..2], ["--tmpfs", "/"]);
        assert!(find(&args, &["--symlink", "usr/bin", "/bin"]).is_some());
        assert!(find(&args, &["--ro-bind", "/etc", "/etc"]).is_some());
        assert!(find(&args, &["--ro-bind", "/usr", "/usr"]).is_some());
        assert!(find(&args, &["--ro-bind", "/marker", "/marker"]).is_some());
        for private in ["/home", "/root", "/tmp", "/proc"] {
            assert!(
                find(&args, &["--ro-bind", private, private]).is_none(),
                "{private}"
            );
        }
        for tmpfs in ["/tmp", "/run"] {
            assert!(find(&args, &["--tmpfs", tmpfs]).is_some(), "{tmpfs}");
        }
        for empty in ["/root", "/home"] {
            assert!(find(&args, &["--dir", empty]).is_some(), "{empty}");
            assert!(
                find(&args, &["--tmpfs", empty]).is_none(),
                "{empty} must stay read-only"
            );
        }
        assert!(find(&args, &["--ro-bind", "/dev/null", "/etc/shadow"]).is_some());
        assert!(find(&args, &["--dev", "/dev"]).is_some());
        assert!(find(&args, &["--proc", "/proc"]).is_some());
    }

    #[test]
    fn hides_state_dir_then_binds_data_then_remounts_read_only() {
        let spec = SandboxSpec::new(Path::new("/var/lib/cp"), Path::new("/var/lib/cp/i/a/data"));
        let args = strings(bwrap_args(&layout(), &spec, &shell_argv("true")));
        let hide = find(&args, &["--tmpfs", "/var/lib/cp"]).unwrap();
        let data = find(&args, &["--bind", "/var/lib/cp/i/a/data", "/data"]).unwrap();
        let ro = find(&args, &["--remount-ro", "/"]).unwrap();
        let last_ro_bind = args.iter().rposition(|a| a == "--ro-bind").unwrap();
        // Order matters: the data bind must come after the state dir is hidden, and the
        // root is made read-only after every mount point was created.
        assert!(hide < data && data < ro && last_ro_bind < ro, "{args:?}");
        assert_eq!(
            args.iter().filter(|a| *a == "--bind").count(),
            1,
            "only /data is writable"
        );
    }

    #[test]
    fn isolation_flags_and_clean_environment() {
        let spec = SandboxSpec::new(Path::new("/s"), Path::new("/s/i/a/data"));
        let args = strings(bwrap_args(&layout(), &spec, &shell_argv("echo hi")));
        for flag in [
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
        ] {
            assert!(args.contains(&flag.to_owned()), "{flag}");
        }
        assert!(find(&args, &["--cap-drop", "ALL"]).is_some());
        let clear = find(&args, &["--clearenv"]).unwrap();
        let path = find(&args, &["--setenv", "PATH", SANDBOX_PATH]).unwrap();
        let home = find(&args, &["--setenv", "HOME", "/data"]).unwrap();
        assert!(clear < path && clear < home);
        assert!(
            !args.iter().any(|a| a == "DISPLAY"),
            "no display without x11"
        );
        assert!(!args.iter().any(|a| a.starts_with("/tmp/.X11-unix")));
        assert_eq!(
            &args[args.len() - 7..],
            [
                "--",
                "/usr/bin/prlimit",
                "--rtprio=0:0",
                "--",
                "/bin/sh",
                "-c",
                "echo hi"
            ]
        );
    }

    #[test]
    fn writable_binds_come_after_the_state_dir_is_hidden() {
        let mut spec = SandboxSpec::new(Path::new("/s"), Path::new("/s/i/a/data"));
        spec.rw_binds.push((
            PathBuf::from("/s/i/a/pulse"),
            PathBuf::from("/run/cloudphone/pulse"),
        ));
        let args = strings(bwrap_args(&layout(), &spec, &shell_argv("true")));
        let hide = find(&args, &["--tmpfs", "/s"]).unwrap();
        let bind = find(&args, &["--bind", "/s/i/a/pulse", "/run/cloudphone/pulse"]).unwrap();
        assert!(
            hide < bind,
            "the bind must not be covered by the hiding tmpfs"
        );
    }

    #[test]
    fn display_binds_its_socket_and_sets_display() {
        let mut spec = SandboxSpec::new(Path::new("/s"), Path::new("/s/i/a/data"));
        spec.display = Some(107);
        spec.env.push(("WIDTH".into(), "720".into()));
        spec.ro_binds
            .push(("/host/pkg.tar".into(), "/tmp/pkg.tar".into()));
        let args = strings(bwrap_args(&layout(), &spec, &shell_argv("xeyes")));
        let socket = find(
            &args,
            &["--ro-bind", "/tmp/.X11-unix/X107", "/tmp/.X11-unix/X107"],
        );
        let tmp = find(&args, &["--tmpfs", "/tmp"]).unwrap();
        assert!(socket.unwrap() > tmp, "socket bound after /tmp is replaced");
        assert!(find(&args, &["--setenv", "DISPLAY", ":107"]).is_some());
        assert!(find(&args, &["--setenv", "WIDTH", "720"]).is_some());
        assert!(find(&args, &["--ro-bind", "/host/pkg.tar", "/tmp/pkg.tar"]).is_some());
    }

    #[test]
    fn limits_seccomp_and_binds_in_the_argv() {
        let mut spec = SandboxSpec::new(Path::new("/s"), Path::new("/s/i/a/data"));
        spec.tmp_size = Some(1 << 20);
        spec.file_size_limit = Some(4096);
        spec.seccomp = Some("/s/i/a/seccomp.bpf".into());
        spec.hidden.push("/dev/null".into());
        spec.bin_binds = vec![
            BinBind {
                host: "/usr/bin/id".into(),
                dest: "/run/cloudphone/bin/id".into(),
                copy: false,
            },
            BinBind {
                host: "/root/x".into(),
                dest: "/run/cloudphone/bin/x".into(),
                copy: true,
            },
        ];
        let args = strings(bwrap_args(&layout(), &spec, &shell_argv("true")));
        for dir in ["/tmp", "/run"] {
            assert!(
                find(&args, &["--size", "1048576", "--tmpfs", dir]).is_some(),
                "{dir}"
            );
        }
        assert!(find(&args, &["--unshare-user", "--disable-userns"]).is_some());
        assert!(find(&args, &["--seccomp", SECCOMP_FD]).is_some());
        assert!(find(&args, &["--ro-bind", "/dev/null", "/dev/null"]).is_some());
        assert!(
            find(
                &args,
                &["--ro-bind", "/usr/bin/id", "/run/cloudphone/bin/id"]
            )
            .is_some()
        );
        assert!(
            find(
                &args,
                &[
                    "--perms",
                    "0555",
                    "--ro-bind-data",
                    "3",
                    "/run/cloudphone/bin/x"
                ]
            )
            .is_some()
        );
        assert!(find(&args, &["--rtprio=0:0", "--fsize=4096:4096", "--"]).is_some());
        // The launcher hands the copied binary over as fd 3 and the filter as fd 9.
        let script = launch_script(1);
        assert!(script.ends_with(r#"9<"$bpf" 3<"$b3""#), "{script}");

        spec.role = SandboxRole::DisplayServer;
        let args = strings(bwrap_args(&layout(), &spec, &["/usr/bin/Xvfb".to_owned()]));
        assert!(find(&args, &["--bind", X11_SOCKET_DIR, X11_SOCKET_DIR]).is_some());
        assert!(
            find(&args, &["--bind", "/s/i/a/data", "/data"]).is_none(),
            "no data dir for Xvfb"
        );
        assert!(
            !args
                .iter()
                .any(|a| a == "--unshare-all" || a == "--unshare-ipc")
        );
    }

    #[test]
    fn uids_are_never_shared() {
        let used = [400_000, 400_001].into_iter().collect();
        assert_eq!(free_uid(400_000..400_010, &used), Some(400_002));
        assert_eq!(free_uid(400_000..400_002, &used), None);
    }

    #[test]
    fn parses_start_time_after_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1000 10 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("garbage"), None);
        let me = ProcessRecord::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        let reused = ProcessRecord {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(
            !reused.is_alive(),
            "a different start time is a different process"
        );
    }

    #[test]
    fn capped_text_never_splits_a_character() {
        assert_eq!(utf8_lossy_capped("héllo".as_bytes()[..2].to_vec()), "h");
        assert_eq!(utf8_lossy_capped(b"ok".to_vec()), "ok");
        assert_eq!(utf8_lossy_capped(vec![0xff, b'a']), "\u{fffd}a");
    }

    #[tokio::test]
    async fn run_capped_cuts_output_and_kills_on_timeout() {
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.args([
            "-c",
            "head -c 100000 /dev/zero | tr '\\0' x; echo err >&2; exit 3",
        ]);
        cmd.process_group(0);
        let out = run_capped(cmd, Duration::from_secs(10), 1000)
            .await
            .unwrap();
        assert_eq!(out.exit_code, 3);
        assert_eq!(out.stdout.len(), 1000);
        assert_eq!(out.stderr, "err\n");
        assert!(out.truncated && !out.timed_out);

        let mut cmd = tokio::process::Command::new("/bin/sh");
        // The background sleep is in the same group and must die too, or the pipe stays open.
        cmd.args(["-c", "sleep 30 & echo started; sleep 30"]);
        cmd.process_group(0);
        let out = run_capped(cmd, Duration::from_millis(300), 1000)
            .await
            .unwrap();
        assert!(out.timed_out);
        assert_eq!(out.exit_code, -1);
        assert_eq!(out.stdout, "started\n");
        assert!(out.duration < Duration::from_secs(3), "{:?}", out.duration);
    }
}
