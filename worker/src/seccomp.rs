//! The seccomp filter every fork-mode child installs before any workflow code runs: the
//! system calls no workflow needs, and every way of signalling its template, fail with
//! `EPERM` (`ENOSYS` for `clone3`).
//!
//! Why a deny list and not an allow list: workflows run arbitrary Python, its C
//! extensions and any program they `exec`; an allow list would break them in ways no
//! test of ours would see. What is denied is what reaches other processes or the kernel's
//! global state (the same families as Docker's default profile):
//!
//! | family | syscalls | why |
//! | --- | --- | --- |
//! | other processes' memory and fds | `ptrace`, `process_vm_readv/writev`, `pidfd_getfd`, `kcmp` | the template and the spare are the same user's processes |
//! | signals to the template and the supervisor | `kill`/`tkill`/`tgkill`/`rt_sigqueueinfo`/`rt_tgsigqueueinfo` aimed at the template's or the supervisor's pid, their groups (`-pid`) or everyone (`-1`); `pidfd_open` of either; `pidfd_send_signal` | a stopped or killed template takes its slot's next executions with it |
//! | the host's Unix sockets | `socket(AF_UNIX, ...)` (`socketpair` stays allowed) | PostgreSQL's and Redis's sockets, abstract sockets; TCP to the host is the firewall's ([`warden`'s `pool::firewall`]) |
//! | namespaces and mounts | `unshare`, `setns`, `mount`, `umount2`, `pivot_root`, `chroot`, `open_by_handle_at`; `clone` with a `CLONE_NEW*` flag; `clone3` (its flags are behind a pointer: `ENOSYS`, so libc falls back to `clone`) | a new user namespace is the usual first step of a kernel exploit |
//! | kernel attack surface | `bpf`, `perf_event_open`, `userfaultfd`, `io_uring_*` (its operations bypass this filter), `keyctl`, `add_key`, `request_key`, module and kexec calls, `reboot`, `swapon/off`, `acct`, `quotactl`, `personality` | none of them is needed by a workflow |
//!
//! The template installs it on itself once, right after its start-up ([`confine_template`];
//! after `PR_SET_NO_NEW_PRIVS`, which the supervisor set): it needs none of what is
//! denied, and every child it forks inherits the filter, and passes it on to everything it
//! `exec`s. A template that reads Redis over a Unix socket keeps `socket(AF_UNIX)`, and its
//! children deny it themselves ([`deny_unix_sockets`], one rule).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// The one-rule filter a child adds when its template kept Unix sockets (see
/// [`confine_template`]).
static UNIX_ONLY: OnceLock<Result<BpfProgram, String>> = OnceLock::new();

/// System calls denied whatever their arguments.
const DENIED: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_pidfd_send_signal,
    libc::SYS_kcmp,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_mount_setattr,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_personality,
    libc::SYS_lookup_dcookie,
];

/// Signal-sending calls whose first argument is a pid (or thread group id).
const SIGNALLING: &[libc::c_long] = &[
    libc::SYS_kill,
    libc::SYS_tkill,
    libc::SYS_tgkill,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_tgsigqueueinfo,
];

/// Every `CLONE_NEW*` flag: `clone` with any of them makes a new namespace.
const CLONE_NEW_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// Confines the calling template with the filter, for good: every child it forks
/// inherits it at no cost (a filter installed per child costs its compilation and JIT
/// on every execution: about 10% of fork-mode throughput, measured). The template itself
/// needs none of what is denied. `deny_unix_sockets`: false when the template reads the
/// module cache over a Unix socket itself; its children then add [`deny_unix_sockets`].
pub fn confine_template(deny_unix_sockets: bool) -> Result<(), String> {
    let [deny, clone3] = build(std::process::id() as i32, deny_unix_sockets)?;
    for program in [&deny, &clone3] {
        seccompiler::apply_filter(program)
            .map_err(|e| format!("cannot install the seccomp filter: {e}"))?;
    }
    if !deny_unix_sockets {
        UNIX_ONLY.get_or_init(build_unix_only);
    }
    Ok(())
}

/// In a child of a template that kept Unix sockets for itself: denies them from here on
/// (a one-rule filter). Nothing to do otherwise.
pub fn deny_unix_sockets() -> Result<(), String> {
    match UNIX_ONLY.get() {
        None => Ok(()),
        Some(Ok(program)) => seccompiler::apply_filter(program)
            .map_err(|e| format!("cannot install the seccomp filter: {e}")),
        Some(Err(e)) => Err(e.clone()),
    }
}

/// The template's parent: the supervisor. Without a uid of their own (a supervisor that
/// is not root), children share its uid, so they must not signal it either.
fn supervisor_pid() -> i32 {
    nix::unistd::getppid().as_raw()
}

fn err(e: impl std::fmt::Display) -> String {
    format!("cannot build the seccomp filter: {e}")
}

fn arch() -> Result<seccompiler::TargetArch, String> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("no seccomp support for this architecture: {e}"))
}

fn unix_rule() -> Result<SeccompRule, String> {
    SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::AF_UNIX as u64,
    )
    .and_then(|c| SeccompRule::new(vec![c]))
    .map_err(err)
}

fn build_unix_only() -> Result<BpfProgram, String> {
    let rules = BTreeMap::from([(libc::SYS_socket, vec![unix_rule()?])]);
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    SeccompFilter::new(rules, SeccompAction::Allow, eperm, arch()?)
        .map_err(err)?
        .try_into()
        .map_err(err)
}

/// The deny list (as guarded by `template_pid`), then `clone3` → `ENOSYS` (a filter has
/// one action on match, and these two need different errnos).
fn build(template_pid: i32, deny_unix_sockets: bool) -> Result<[BpfProgram; 2], String> {
    // "argument `arg` (low 32 bits) equals `value`", or "has every bit of `mask` set".
    let rule = |arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64| {
        SeccompCondition::new(arg, len, op, value)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(err)
    };
    let pid_is = |pid: i32| {
        // pid_t is 32 bits: the low word, so -pid and -1 match as the kernel reads them.
        rule(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            pid as u32 as u64,
        )
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in DENIED {
        rules.insert(nr, Vec::new());
    }
    for &nr in SIGNALLING {
        let chain = [
            template_pid,
            -template_pid,
            supervisor_pid(),
            -supervisor_pid(),
            -1,
        ]
        .map(pid_is);
        rules.insert(nr, chain.into_iter().collect::<Result<_, _>>()?);
    }
    rules.insert(
        libc::SYS_pidfd_open,
        vec![pid_is(template_pid)?, pid_is(supervisor_pid())?],
    );
    // No Unix socket of the host (PostgreSQL's, Redis's, D-Bus, abstract ones): a child
    // cannot create one to connect with. `socketpair` (asyncio, multiprocessing) is
    // another system call and stays allowed.
    // (A reuse template keeps them: it reads the module cache itself, maybe over one.)
    if deny_unix_sockets {
        rules.insert(libc::SYS_socket, vec![unix_rule()?]);
    }
    // One rule per flag, "that flag is set": any CLONE_NEW* flag matches.
    let clone_chain = CLONE_NEW_FLAGS
        .iter()
        .map(|&flag| {
            let flag = flag as u64;
            rule(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )
        })
        .collect::<Result<_, _>>()?;
    rules.insert(libc::SYS_clone, clone_chain);

    let arch = arch()?;
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let deny = SeccompFilter::new(rules, SeccompAction::Allow, eperm, arch).map_err(err)?;
    // clone3 passes its flags in a struct the filter cannot read: ENOSYS makes libc fall
    // back to clone(2), whose flags it can.
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(err)?;
    Ok([
        deny.try_into().map_err(err)?,
        clone3.try_into().map_err(err)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_for_this_architecture() {
        let [deny, clone3] = build(1234, true).expect("filter");
        assert!(deny.len() > DENIED.len());
        assert!(!clone3.is_empty());
    }
}
