//! The seccomp allow-list of the running engine, as data, one group per job.
//!
//! Installed once the tunnel is up, on every thread at once
//! (`SECCOMP_FILTER_FLAG_TSYNC`), with firecracker's `seccompiler` (allow-lists
//! as data compiled to classic BPF, x86_64 and aarch64). A call outside the
//! list kills the process (`SECCOMP_RET_KILL_PROCESS`; see the module above
//! for why not `EPERM`).
//!
//! Where the list comes from: the e2e tests (attach, run and tools: traffic
//! both ways, `wg set`/`show`, listen-port and key changes, peers added and
//! removed, rekey, every way of stopping, `run`'s signal forwarding and
//! reaping) run under `strace -f -ff -ttt`, and every call an engine process
//! made, on any thread, from the moment it logged the tunnel up (`run`: sent
//! "go") to its exit. Added to that: what glibc and std need to start a
//! thread (tokio starts blocking-pool threads on demand). The UAPI peer
//! check's own calls are not here: it runs in the inspector process
//! ([`crate::inspector`]), which the engine reaches with `sendmsg`/`recvmsg`. Numbers come from `libc`
//! for the architecture being built; where x86_64 has a legacy call that
//! aarch64 lacks, both spellings are listed.
//!
//! Arguments are restricted where that is cheap and closes something real:
//! `socket` to unix/IPv4/IPv6 (no `AF_PACKET`, no netlink), `ioctl` to the
//! request numbers in use, `fcntl` to flag and duplicate commands, no `open`
//! at all, `mmap`/`mprotect` to never executable, `clone` to threads,
//! `prctl` to naming a thread, `kill` to `run`'s command and the signals it
//! forwards (none in the attach form).
//! `clone3` passes its flags in memory, out of a filter's reach, so a second,
//! tiny filter answers it `ENOSYS`, and glibc falls back to `clone`.

use std::collections::BTreeMap;

use std::os::fd::RawFd;

use libc::c_long;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::SandboxError;

/// Which arguments of a call are allowed.
#[derive(Debug, Clone, Copy)]
pub enum Args {
    /// Any.
    Any,
    /// Argument `index` (compared as 32 bits) is one of these values.
    OneOf(u8, &'static [u64]),
    /// Argument `index` has none of the bits of the mask set.
    NoneOf(u8, u64),
    /// Argument `index` has all the bits of the mask set.
    AllOf(u8, u64),
}

/// One job of the running engine and the calls it needs.
#[derive(Debug)]
pub struct Group {
    pub why: &'static str,
    pub calls: &'static [(c_long, Args)],
}

use Args::{AllOf, Any, NoneOf, OneOf};

/// The ioctls of the running engine.
#[allow(
    clippy::unnecessary_cast,
    reason = "the ioctl number type is c_ulong on glibc but c_int on musl"
)]
const IOCTLS: &[u64] = &[
    // Blocking mode and close-on-exec of accepted and new sockets.
    libc::FIONBIO as u64,
    libc::FIOCLEX as u64,
];

/// The allow-list, group by group.
pub const GROUPS: &[Group] = &[
    Group {
        why: "memory: the allocator (brk, mmap arenas, mremap for growing \
              buffers, madvise to give pages back), thread stacks and their \
              guard pages; never executable",
        calls: &[
            (libc::SYS_brk, Any),
            (libc::SYS_mmap, NoneOf(2, libc::PROT_EXEC as u64)),
            (libc::SYS_mprotect, NoneOf(2, libc::PROT_EXEC as u64)),
            (libc::SYS_munmap, Any),
            (libc::SYS_mremap, Any),
            (libc::SYS_madvise, Any),
        ],
    },
    Group {
        why: "threads: tokio's workers park on futexes; its blocking pool \
              starts and ends threads on demand, and so does a \
              reconfiguration the data path's helper threads (--threads), \
              started and joined with each connection (clone with \
              CLONE_THREAD, robust list, rseq, the name, the alternate \
              signal stack std sets up, the CPU mask std reads)",
        calls: &[
            (libc::SYS_futex, Any),
            (libc::SYS_sched_yield, Any),
            (
                libc::SYS_clone,
                AllOf(0, (libc::CLONE_THREAD | libc::CLONE_VM) as u64),
            ),
            // Passes the list so that the second filter's ENOSYS is the
            // answer (the kernel takes the strictest of all filters).
            (libc::SYS_clone3, Any),
            (libc::SYS_set_robust_list, Any),
            (libc::SYS_rseq, Any),
            (libc::SYS_prctl, OneOf(0, &[libc::PR_SET_NAME as u64])),
            (libc::SYS_sigaltstack, Any),
            (libc::SYS_sched_getaffinity, Any),
            (libc::SYS_gettid, Any),
            (libc::SYS_getpid, Any),
            (libc::SYS_rt_sigprocmask, Any),
            (libc::SYS_rt_sigreturn, Any),
            (libc::SYS_restart_syscall, Any),
            (libc::SYS_exit, Any),
            (libc::SYS_exit_group, Any),
        ],
    },
    Group {
        why: "the event loop: epoll on every descriptor, eventfd wake-ups \
              (read/write), timers as epoll timeouts and sleeps",
        calls: &[
            (libc::SYS_epoll_pwait, Any),
            (libc::SYS_epoll_ctl, Any),
            (libc::SYS_clock_gettime, Any),
            (libc::SYS_clock_nanosleep, Any),
            (libc::SYS_nanosleep, Any),
            (libc::SYS_ppoll, Any),
        ],
    },
    Group {
        why: "data path: TUN frames in and out (readv/writev, read/write), \
              UDP batches (recvmmsg/sendmmsg with GSO/GRO, single \
              sendmsg/sendto/recvfrom), random numbers for handshakes and \
              cookies",
        calls: &[
            (libc::SYS_read, Any),
            (libc::SYS_write, Any),
            (libc::SYS_readv, Any),
            (libc::SYS_writev, Any),
            (libc::SYS_recvfrom, Any),
            (libc::SYS_recvmsg, Any),
            (libc::SYS_recvmmsg, Any),
            (libc::SYS_sendto, Any),
            (libc::SYS_sendmsg, Any),
            (libc::SYS_sendmmsg, Any),
            (libc::SYS_getrandom, Any),
        ],
    },
    Group {
        why: "UDP re-bind: a ListenPort or key change over the UAPI makes \
              gotatun open new sockets (socket only for unix, IPv4 and IPv6: \
              no packet or netlink sockets)",
        calls: &[
            (
                libc::SYS_socket,
                OneOf(
                    0,
                    &[
                        libc::AF_UNIX as u64,
                        libc::AF_INET as u64,
                        libc::AF_INET6 as u64,
                    ],
                ),
            ),
            (libc::SYS_bind, Any),
            (libc::SYS_setsockopt, Any),
            (libc::SYS_getsockopt, Any),
            (libc::SYS_getsockname, Any),
            (libc::SYS_close, Any),
        ],
    },
    Group {
        why: "descriptor flags: close-on-exec and non-blocking mode of new \
              sockets, duplicating the listener",
        calls: &[
            (
                libc::SYS_fcntl,
                OneOf(
                    1,
                    &[
                        libc::F_GETFD as u64,
                        libc::F_SETFD as u64,
                        libc::F_GETFL as u64,
                        libc::F_SETFL as u64,
                        libc::F_DUPFD_CLOEXEC as u64,
                    ],
                ),
            ),
            (libc::SYS_ioctl, OneOf(1, IOCTLS)),
        ],
    },
    Group {
        why: "the UAPI socket: accept, and hand each connection to the \
              peer-check process (sendmsg/recvmsg with SCM_RIGHTS, listed \
              above; the check's own calls, pidfd_open, the pidfd and nsfs \
              ioctls and the opens of /proc/PID files, run there, see \
              crate::inspector); fstat/statx (lstat) of our files",
        calls: &[
            (libc::SYS_accept4, Any),
            (libc::SYS_shutdown, Any),
            (libc::SYS_fstat, Any),
            (libc::SYS_newfstatat, Any),
            (libc::SYS_statx, Any),
        ],
    },
    Group {
        why: "stopping: dismiss and reap the janitor, and in `run` check \
              the command's process group and session (to forward signals, \
              see SIGNALS) and reap it; removing our files is `unlinkat`, \
              added for the socket directory alone (see install)",
        calls: &[
            (libc::SYS_wait4, Any),
            (libc::SYS_waitid, Any),
            (libc::SYS_getpgid, Any),
            (libc::SYS_getsid, Any),
        ],
    },
];

/// x86_64's older spellings of calls listed above, which glibc still uses
/// there (aarch64 only has the newer ones).
#[cfg(target_arch = "x86_64")]
pub const ARCH_GROUPS: &[Group] = &[Group {
    why: "x86_64 spellings: epoll_wait, poll, getpgrp, the same jobs as \
          epoll_pwait, ppoll, getpgid(0)",
    calls: &[
        (libc::SYS_epoll_wait, Any),
        (libc::SYS_poll, Any),
        (libc::SYS_getpgrp, Any),
    ],
}];
#[cfg(target_arch = "aarch64")]
pub const ARCH_GROUPS: &[Group] = &[];

/// Every group for the architecture being built.
pub fn groups() -> impl Iterator<Item = &'static Group> {
    GROUPS.iter().chain(ARCH_GROUPS)
}

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// The signals `run` forwards to its command (SIGINT, SIGTERM, SIGHUP) or
/// stops it with (SIGKILL). `kill` is allowed only with these and only to the
/// command's PID ([`install`]'s `signal_target`); the attach form sends no
/// signal, so it gets no `kill` at all. A root engine without this
/// restriction could `kill(-1, SIGKILL)` every root process.
const SIGNALS: &[libc::c_int] = &[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGKILL];

/// Number of distinct system calls on the list (with `kill`, as for `run`).
pub fn allowed_count() -> usize {
    rules(Some(1), Some(3)).map(|r| r.len()).unwrap_or(0)
}

/// `unlinkat(dir, name, 0)`: files (not directories) in that one directory.
/// With Landlock this is already all the filesystem there is; without it
/// (older kernels) this keeps a compromised engine, root's in particular,
/// from removing files anywhere else. (A name with a `/` could still reach
/// below `dir`: the filter cannot read strings.)
fn unlink_rules(dir: RawFd) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let dir = u64::try_from(dir).unwrap_or(u64::MAX);
    Ok(vec![SeccompRule::new(vec![
        condition(0, SeccompCmpOp::Eq, dir)?,
        condition(2, SeccompCmpOp::Eq, 0)?,
    ])?])
}

fn condition(
    index: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
}

/// The rule chain for one entry; empty means "any arguments".
fn rule_chain(args: Args) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    match args {
        Any => Ok(Vec::new()),
        OneOf(index, values) => values
            .iter()
            .map(|&v| SeccompRule::new(vec![condition(index, SeccompCmpOp::Eq, v)?]))
            .collect(),
        NoneOf(index, mask) => Ok(vec![SeccompRule::new(vec![condition(
            index,
            SeccompCmpOp::MaskedEq(mask),
            0,
        )?])?]),
        AllOf(index, mask) => Ok(vec![SeccompRule::new(vec![condition(
            index,
            SeccompCmpOp::MaskedEq(mask),
            mask,
        )?])?]),
    }
}

/// `kill(pid, one of SIGNALS)`.
fn kill_rules(pid: u32) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    SIGNALS
        .iter()
        .map(|&signal| {
            SeccompRule::new(vec![
                condition(0, SeccompCmpOp::Eq, u64::from(pid))?,
                condition(1, SeccompCmpOp::Eq, signal as u64)?,
            ])
        })
        .collect()
}

/// Every group merged by call number, plus `kill` to `signal_target`. A
/// call listed unrestricted anywhere stays unrestricted.
fn rules(
    signal_target: Option<u32>,
    unlink_dir: Option<RawFd>,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for (nr, args) in groups().flat_map(|g| g.calls.iter()) {
        let chain = rule_chain(*args)?;
        let entry = map.entry(*nr).or_insert_with(|| Some(Vec::new()));
        match (entry.as_mut(), chain.is_empty()) {
            (_, true) => *entry = None,
            (Some(rules), false) => rules.extend(chain),
            (None, false) => {}
        }
    }
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = map
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect();
    if let Some(pid) = signal_target {
        rules.insert(libc::SYS_kill, kill_rules(pid)?);
    }
    if let Some(dir) = unlink_dir {
        rules.insert(libc::SYS_unlinkat, unlink_rules(dir)?);
    }
    Ok(rules)
}

/// The allow-list, compiled; `kill` only to `signal_target`, `unlinkat`
/// only in `unlink_dir`.
pub fn allow_list(
    signal_target: Option<u32>,
    unlink_dir: Option<RawFd>,
) -> Result<BpfProgram, SandboxError> {
    let filter = SeccompFilter::new(
        rules(signal_target, unlink_dir).map_err(SandboxError::SeccompBuild)?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        ARCH,
    )
    .map_err(SandboxError::SeccompBuild)?;
    filter.try_into().map_err(SandboxError::SeccompBuild)
}

/// The second filter: `clone3` answers `ENOSYS`, so glibc uses `clone`,
/// whose flags the allow-list can check. (With several filters the kernel
/// takes the strictest answer: this `ENOSYS` beats the list's allow.)
pub fn clone3_enosys() -> Result<BpfProgram, SandboxError> {
    let filter = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        ARCH,
    )
    .map_err(SandboxError::SeccompBuild)?;
    filter.try_into().map_err(SandboxError::SeccompBuild)
}

/// Install both filters on every thread of the process. `signal_target`:
/// the one process the engine may signal (`run`'s command), if any;
/// `unlink_dir`: the directory (descriptor) it may remove files from.
pub fn install(signal_target: Option<u32>, unlink_dir: Option<RawFd>) -> Result<(), SandboxError> {
    let clone3 = clone3_enosys()?;
    let list = allow_list(signal_target, unlink_dir)?;
    // The allow-list last: it does not allow `seccomp` itself.
    seccompiler::apply_filter_all_threads(&clone3).map_err(SandboxError::SeccompInstall)?;
    seccompiler::apply_filter_all_threads(&list).map_err(SandboxError::SeccompInstall)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::in_child;
    use super::*;
    use nix::sys::signal::Signal;
    use nix::sys::wait::WaitStatus;

    #[test]
    fn the_list_compiles_and_has_no_call_twice_by_accident() {
        assert!(allow_list(None, None).is_ok());
        // `kill` is added for `run`'s command, `unlinkat` for the socket dir.
        let listed: usize = groups().map(|g| g.calls.len()).sum::<usize>() + 2;
        // ioctl and friends appear once each; only restricted entries may
        // repeat, and none do today.
        assert_eq!(allowed_count(), listed);
        eprintln!("the allow-list has {listed} system calls");
    }

    fn killed_by_sigsys(status: WaitStatus) -> bool {
        matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _))
    }

    #[test]
    fn calls_outside_the_list_kill_the_process() {
        let refused: [(&str, fn()); 5] = [
            ("execve", || {
                let _ = nix::unistd::execv(c"/bin/true", &[c"true"]);
            }),
            ("mount", || {
                let _ = nix::mount::mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    nix::mount::MsFlags::MS_REMOUNT,
                    None::<&str>,
                );
            }),
            ("socket(AF_PACKET)", || {
                let _ = nix::sys::socket::socket(
                    nix::sys::socket::AddressFamily::Packet,
                    nix::sys::socket::SockType::Raw,
                    nix::sys::socket::SockFlag::empty(),
                    None,
                );
            }),
            ("mkdirat", || {
                let _ = std::fs::create_dir("/tmp/w4n-seccomp-must-not-exist");
            }),
            ("openat(O_WRONLY)", || {
                let _ = std::fs::OpenOptions::new().append(true).open("/dev/null");
            }),
        ];
        for (name, call) in refused {
            let status = in_child(|| {
                if install(None, None).is_err() {
                    return 2;
                }
                call();
                3
            });
            assert!(killed_by_sigsys(status), "{name}: {status:?}");
        }
    }

    /// `kill` reaches the one process named at install, with the signals
    /// `run` forwards, and nothing else; without a target there is no `kill`.
    #[test]
    fn kill_reaches_only_the_command() {
        let spawn = || {
            std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .expect("spawn sleep")
        };
        let (mut target, mut other) = (spawn(), spawn());
        let (target_pid, other_pid) = (target.id(), other.id());
        let signal = |pid: u32, sig: Signal| {
            let pid = nix::unistd::Pid::from_raw(pid.cast_signed());
            nix::sys::signal::kill(pid, sig)
        };
        // Allowed: the target, with a forwarded signal.
        let allowed = in_child(|| {
            if install(Some(target_pid), None).is_err() {
                return 2;
            }
            if signal(target_pid, Signal::SIGTERM).is_ok() {
                0
            } else {
                3
            }
        });
        assert!(matches!(allowed, WaitStatus::Exited(_, 0)), "{allowed:?}");
        // Refused: another process, another signal, or any kill without a target.
        for (target, pid, sig) in [
            (Some(target_pid), other_pid, Signal::SIGTERM),
            (Some(target_pid), target_pid, Signal::SIGSTOP),
            (None, other_pid, Signal::SIGTERM),
        ] {
            let status = in_child(|| {
                if install(target, None).is_err() {
                    return 2;
                }
                let _ = signal(pid, sig);
                3
            });
            assert!(
                killed_by_sigsys(status),
                "kill({pid}, {sig}) with target {target:?}: {status:?}"
            );
        }
        let _ = other.kill();
        let _ = target.kill();
        let _ = (target.wait(), other.wait());
        assert!(other_pid != target_pid);
    }

    /// Files may be removed in the socket directory, by its descriptor, and
    /// nowhere else: not by path, not in another directory.
    #[test]
    fn unlink_only_in_the_socket_directory() {
        use nix::unistd::{UnlinkatFlags, unlinkat};
        use std::os::fd::AsRawFd;
        let ours = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        for dir in [&ours, &other] {
            std::fs::write(dir.path().join("f"), "x").unwrap();
        }
        let ours_fd = std::fs::File::open(ours.path()).unwrap();
        let other_fd = std::fs::File::open(other.path()).unwrap();
        let allowed = in_child(|| {
            if install(None, Some(ours_fd.as_raw_fd())).is_err() {
                return 2;
            }
            match unlinkat(&ours_fd, "f", UnlinkatFlags::NoRemoveDir) {
                Ok(()) => 0,
                Err(_) => 3,
            }
        });
        assert!(matches!(allowed, WaitStatus::Exited(_, 0)), "{allowed:?}");
        assert!(!ours.path().join("f").exists());
        let other_file = other.path().join("f");
        for by_path in [false, true] {
            let status = in_child(|| {
                if install(None, Some(ours_fd.as_raw_fd())).is_err() {
                    return 2;
                }
                if by_path {
                    let _ = std::fs::remove_file(&other_file);
                } else {
                    let _ = unlinkat(&other_fd, "f", UnlinkatFlags::NoRemoveDir);
                }
                3
            });
            assert!(killed_by_sigsys(status), "by path {by_path}: {status:?}");
        }
        assert!(other.path().join("f").exists());
    }

    /// A contained panic under the filter stays contained, also when
    /// `RUST_BACKTRACE` asks for a backtrace (which the default hook would
    /// symbolize by opening files).
    #[test]
    fn a_caught_panic_under_the_filter_is_survived() {
        let status = in_child(|| {
            // SAFETY: the forked child is single-threaded, so nothing reads
            // the environment while it changes.
            unsafe { std::env::set_var("RUST_BACKTRACE", "full") };
            super::super::quiet_panics();
            if install(None, None).is_err() {
                return 2;
            }
            let caught = std::panic::catch_unwind(|| panic!("deliberate, caught by this test"));
            if caught.is_err() { 0 } else { 3 }
        });
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
    }

    #[test]
    fn calls_on_the_list_still_work() {
        let status = in_child(|| {
            if install(None, None).is_err() {
                return 2;
            }
            // The allowed socket families, lstat of a file, random bytes, a
            // thread (clone3 answered ENOSYS, clone with CLONE_THREAD
            // allowed), and a signal from the forwarded set.
            let udp = std::net::UdpSocket::bind("127.0.0.1:0");
            let stat = std::fs::symlink_metadata("/proc/self");
            let mut buf = [0u8; 16];
            let random = rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut buf);
            let thread = std::thread::spawn(|| 7).join();
            match (udp, stat, random, thread) {
                (Ok(_), Ok(_), Ok(_), Ok(7)) => 0,
                _ => 3,
            }
        });
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
    }

    #[test]
    fn the_filters_show_in_proc_status() {
        let status = in_child(|| {
            let before = filters();
            // Opened now: the running engine opens no file, but reading an
            // open /proc file is allowed (the kernel renders it at the read).
            let Ok(after) = std::fs::File::open("/proc/self/status") else {
                return 4;
            };
            if install(None, None).is_err() {
                return 2;
            }
            match (before, filters_in(after)) {
                (Some(b), Some(a)) if a == b + 2 => 0,
                _ => 3,
            }
        });
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
    }

    fn filters() -> Option<u32> {
        filters_in(std::fs::File::open("/proc/self/status").ok()?)
    }

    fn filters_in(mut file: std::fs::File) -> Option<u32> {
        // One plain read: `read_to_string` would `lseek`, which is not on
        // the list.
        let mut buf = vec![0u8; 16 * 1024];
        let n = std::io::Read::read(&mut file, &mut buf).ok()?;
        let status = String::from_utf8_lossy(&buf[..n]);
        status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp_filters:"))?
            .trim()
            .parse()
            .ok()
    }
}
