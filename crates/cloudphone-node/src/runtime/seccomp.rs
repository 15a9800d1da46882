//! The sandbox's seccomp deny-list: the syscalls no instance process may make, compiled to a
//! classic BPF program with `seccompiler` and handed to bwrap (`--seccomp FD`), which loads it
//! right before it executes the sandboxed program.
//!
//! A deny-list, not an allow-list: instances run arbitrary tenant programs (shells, X apps,
//! package scripts), and an allow-list that fits them all would be large and brittle. What it
//! denies is what no phone app needs and what widens the kernel's attack surface or reaches
//! outside the sandbox: mounting and namespace changes (bwrap's own setup is done by then),
//! module and kexec loading, eBPF, perf, ptrace and cross-process memory access, the kernel
//! keyring, userfaultfd (a classic exploit helper), clock and swap changes, raw I/O ports.
//! Denied calls fail with `EPERM`; nothing is killed, so programs that probe (e.g. `unshare`)
//! degrade cleanly.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// The denied syscalls, by name (for the docs and tests) and number.
pub(crate) const DENIED: &[(&str, libc::c_long)] = &[
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("syslog", libc::SYS_syslog),
    ("acct", libc::SYS_acct),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("quotactl", libc::SYS_quotactl),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
];

/// Why the filter could not be built (an architecture seccompiler does not know).
#[derive(Debug, thiserror::Error)]
#[error("seccomp filter: {0}")]
pub(crate) struct SeccompError(String);

/// The deny-list as the raw `struct sock_filter` array bwrap reads from its `--seccomp` fd
/// (8 bytes per instruction, native byte order).
pub(crate) fn deny_list_bpf() -> Result<Vec<u8>, SeccompError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| SeccompError(format!("{}: {e}", std::env::consts::ARCH)))?;
    // An empty rule list matches the syscall whatever its arguments.
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| SeccompError(e.to_string()))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError(e.to_string()))?;
    let mut bytes = Vec::with_capacity(program.len() * 8);
    for insn in program {
        bytes.extend_from_slice(&insn.code.to_ne_bytes());
        bytes.push(insn.jt);
        bytes.push(insn.jf);
        bytes.extend_from_slice(&insn.k.to_ne_bytes());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_whole_number_of_instructions() {
        let bpf = deny_list_bpf().unwrap();
        assert!(!bpf.is_empty());
        assert_eq!(bpf.len() % 8, 0);
        // One comparison per denied syscall at least.
        assert!(bpf.len() / 8 > DENIED.len(), "{}", bpf.len() / 8);
    }
}
