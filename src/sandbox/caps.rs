//! Capabilities: empty every set but the one or two the running engine uses.
//!
//! Started as root (the default socket directory `/var/run/wireguard` is
//! root's), the engine holds every capability; after setup it needs at most
//! `CAP_NET_ADMIN` for `SO_MARK` (config `FwMark`) and `CAP_NET_BIND_SERVICE`
//! for a `ListenPort` below 1024, both because gotatun opens new UDP sockets
//! when the port or key changes over the UAPI. The sets, in the order they
//! are changed:
//! - bounding: what any later `execve` could ever grant. Dropping from it
//!   needs `CAP_SETPCAP`, so it comes first and only when we hold that
//!   (unprivileged, the bounding set cannot be touched and `no_new_privs`
//!   plus the seccomp filter's ban on `execve` make it moot);
//! - ambient: cleared (no privilege needed);
//! - effective, permitted, inheritable: set with `capset(2)` to the kept
//!   ones we actually hold; lowering needs no privilege.
//!
//! `capset` acts on the calling thread only, and new threads copy their
//! creator's sets, so this runs while the process has one thread. The uid
//! stays what it was (root stays uid 0 owning its socket files); without
//! capabilities uid 0 is only an owner, and `no_new_privs` keeps an `execve`
//! from handing the full set back.

use std::io;

use super::SandboxError;

// Capability numbers from <linux/capability.h> (the libc crate has none).
const CAP_SETPCAP: u32 = 8;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;

/// Which capabilities survive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    /// `CAP_NET_ADMIN`, for `SO_MARK` (config `FwMark`).
    pub net_admin: bool,
    /// `CAP_NET_BIND_SERVICE`, for a `ListenPort` below 1024.
    pub net_bind_service: bool,
    /// `CAP_SYS_PTRACE`, for the peer-check process of a root engine (to
    /// read the namespaces of other users' processes; see `inspector`).
    pub sys_ptrace: bool,
}

impl Keep {
    /// The kept capabilities as a bit mask (bit N is capability N).
    fn mask(self) -> u64 {
        let mut mask = 0;
        if self.net_admin {
            mask |= 1 << CAP_NET_ADMIN;
        }
        if self.net_bind_service {
            mask |= 1 << CAP_NET_BIND_SERVICE;
        }
        if self.sys_ptrace {
            mask |= 1 << CAP_SYS_PTRACE;
        }
        mask
    }
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets as two 32-bit halves.
const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's effective, permitted and inheritable sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

fn join(low: u32, high: u32) -> u64 {
    u64::from(low) | (u64::from(high) << 32)
}

/// `capget(2)` on the calling thread.
pub fn current() -> io::Result<Sets> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: version 3 reads one header and writes two data structs, which
    // are ours and live across the call.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Sets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

/// `capset(2)` on the calling thread.
fn set(sets: Sets) -> io::Result<()> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    // Truncation is the point: each half holds 32 of the 64 bits.
    let half = |v: u64, high: bool| (if high { v >> 32 } else { v }) as u32;
    let data = [false, true].map(|high| Data {
        effective: half(sets.effective, high),
        permitted: half(sets.permitted, high),
        inheritable: half(sets.inheritable, high),
    });
    // SAFETY: version 3 reads one header and two data structs, which are
    // ours and live across the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `prctl` with integer arguments only; its result.
fn prctl(option: libc::c_int, arg2: libc::c_ulong, arg3: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: the options used here (PR_CAPBSET_READ/DROP, PR_CAP_AMBIENT)
    // take plain integers and touch no memory of ours.
    let rc = unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Is capability `cap` in the bounding set? `None` once `cap` is past the
/// last one this kernel knows (`EINVAL`).
fn in_bounding_set(cap: u32) -> Option<bool> {
    prctl(libc::PR_CAPBSET_READ, cap.into(), 0)
        .ok()
        .map(|rc| rc == 1)
}

/// Drop every capability this kernel knows from the bounding set except the
/// kept ones.
fn drop_bounding(keep: u64) -> io::Result<()> {
    for cap in 0..64u32 {
        match in_bounding_set(cap) {
            None => break,
            Some(false) => {}
            Some(true) if keep & (1 << cap) != 0 => {}
            Some(true) => {
                prctl(libc::PR_CAPBSET_DROP, cap.into(), 0)?;
            }
        }
    }
    Ok(())
}

/// Empty every capability set of the calling thread but `keep` (only those
/// we hold stay; none is gained).
pub fn drop_all_but(keep: Keep) -> Result<(), SandboxError> {
    let err = |action| move |error| SandboxError::Capabilities { action, error };
    let now = current().map_err(err("capget"))?;
    let keep = keep.mask() & now.permitted;
    if now.effective & (1 << CAP_SETPCAP) != 0 {
        drop_bounding(keep).map_err(err("bounding set"))?;
    }
    // Ambient capabilities arrived with Linux 4.3; older kernels have none
    // to clear.
    match prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0,
    ) {
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => return Err(err("ambient set")(e)),
        _ => {}
    }
    set(Sets {
        effective: keep,
        permitted: keep,
        inheritable: 0,
    })
    .map_err(err("capset"))?;
    if keep != 0 {
        tracing::debug!("capabilities kept: {keep:#x}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::in_child;
    use super::*;
    use nix::sys::wait::WaitStatus;

    fn status_hex(name: &str) -> Option<u64> {
        let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?;
        u64::from_str_radix(value.trim(), 16).ok()
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn root_keeps_only_what_the_config_needs() {
        if !is_root() {
            assert!(
                std::env::var_os("CI").is_none_or(|v| v != "true"),
                "CI runs the tests as root"
            );
            eprintln!("SKIP root_keeps_only_what_the_config_needs: needs root");
            return;
        }
        let status = in_child(|| {
            let keep = Keep {
                net_admin: true,
                ..Keep::default()
            };
            if drop_all_but(keep).is_err() {
                return 2;
            }
            let want = 1u64 << CAP_NET_ADMIN;
            let got = [
                status_hex("CapEff"),
                status_hex("CapPrm"),
                status_hex("CapBnd"),
            ];
            if got != [Some(want); 3] {
                return 3;
            }
            if status_hex("CapInh") != Some(0) || status_hex("CapAmb") != Some(0) {
                return 4;
            }
            // Without CAP_SETPCAP nothing can be raised again.
            let raise = prctl(libc::PR_CAPBSET_DROP, CAP_NET_ADMIN.into(), 0);
            match raise {
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => 0,
                _ => 5,
            }
        });
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
    }

    #[test]
    fn keeping_nothing_empties_every_set() {
        let status = in_child(|| {
            if drop_all_but(Keep::default()).is_err() {
                return 2;
            }
            let sets = ["CapEff", "CapPrm", "CapInh", "CapAmb"].map(status_hex);
            if sets != [Some(0); 4] {
                return 3;
            }
            // Root also loses the bounding set; others could not touch it.
            if is_root() && status_hex("CapBnd") != Some(0) {
                return 4;
            }
            0
        });
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
    }

    #[test]
    fn keep_mask_names_the_right_bits() {
        assert_eq!(Keep::default().mask(), 0);
        let all = Keep {
            net_admin: true,
            net_bind_service: true,
            sys_ptrace: true,
        };
        assert_eq!(all.mask(), (1 << 12) | (1 << 10) | (1 << 19));
    }
}
