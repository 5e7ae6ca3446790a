//! Reaching into the target's namespaces: opening them, checking they are ours,
//! and the forked helper that joins them to create the TUN device.
//!
//! `setns(CLONE_NEWUSER)` is refused (`EINVAL`) in a multi-threaded process, and
//! `TUNSETIFF` creates the device in the caller's network namespace. So, like
//! slirp4netns' `child()`, a forked helper joins the target's user namespace
//! (which gives it `CAP_NET_ADMIN` over the network namespace that user namespace
//! owns), then the network namespace, creates and configures the TUN, sends the
//! descriptor back over a `SOCK_SEQPACKET` pair and exits. The parent must fork
//! before any thread exists: [`create_tun_in`] checks that and refuses otherwise.
//!
//! Inside the target's user namespace the helper's credentials belong to the
//! target's root, who may ptrace it and take its descriptors unless the kernel
//! says no. So before it joins, the helper makes itself non-dumpable and closes
//! every descriptor but its channel (`isolate`), as runc's nsexec does for a
//! container's init: it carries a copy of our memory, the keys with it, but
//! nobody inside can read it or take anything of ours from it.
//!
//! The checks in [`open`] exist to turn the kernel's terse `EPERM`/`EINVAL` into
//! errors that say what is wrong with the target and what to do about it.

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use nix::sched::{CloneFlags, setns};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use crate::fdpass;
use crate::lifecycle::PidFd;

/// Which namespaces to attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The namespaces of a running process.
    Pid(i32),
    /// A network namespace by path (e.g. a bind mount under
    /// `/run/user/UID/netns/`), with the user namespace that owns it either given
    /// or found with `NS_GET_USERNS`.
    Path { net: PathBuf, user: Option<PathBuf> },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Pid(pid) => write!(f, "process {pid}"),
            Target::Path { net, .. } => write!(f, "network namespace {}", net.display()),
        }
    }
}

/// Errors reaching the target's namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("there is no process with PID {0}")]
    NoSuchProcess(i32),
    #[error(
        "process {pid} belongs to another user (uid {owner}); you can only attach to your own processes"
    )]
    NotYours { pid: i32, owner: u32 },
    #[error(
        "process {0} is yours but not dumpable (it called prctl(PR_SET_DUMPABLE, 0) or executed a setuid, setgid or file-capability program), so the kernel lets no one but root open its namespaces (hint: attach to another process in the same namespaces, e.g. the shell that started it, or bind-mount its network namespace before it gives up being dumpable and use --netns-type=path)"
    )]
    NotDumpable(i32),
    #[error(
        "process {0} has not unshared a user namespace (it is in yours); start it with `unshare --user --map-root-user --net …` (unshare -Urn)"
    )]
    OwnUserNamespace(i32),
    #[error(
        "{0} is in our own network namespace; attaching would add the tunnel to the host, start the target in a new network namespace (unshare -Urn)"
    )]
    OwnNetNamespace(String),
    // The OS errors below are part of the messages, not `source()`s: the
    // binary prints the source chain too, and would say them twice.
    #[error("cannot watch process {pid}: {error}")]
    Watch { pid: i32, error: io::Error },
    #[error(
        "process {0} exited while its namespaces were being opened (hint: start the target again and pass its new PID)"
    )]
    ExitedWhileOpening(i32),
    #[error("cannot open {}: {error}", path.display())]
    Open { path: PathBuf, error: io::Error },
    #[error(
        "cannot find the user namespace that owns {}: {error} (hint: pass it with --userns-path)",
        path.display()
    )]
    OwnerUserNs { path: PathBuf, error: io::Error },
    #[error("cannot start the namespace helper: {0}")]
    Spawn(io::Error),
    #[error("internal error: the namespace helper must be forked before any thread is started")]
    Threaded,
    #[error("{0}")]
    Helper(String),
    #[error("the namespace helper died without an answer ({0})")]
    HelperDied(String),
}

/// Open namespace descriptors of a target, checked to be joinable.
#[derive(Debug)]
pub struct Namespaces {
    target: Target,
    /// `None` when the target shares our user namespace (only possible as root).
    user: Option<OwnedFd>,
    net: OwnedFd,
    /// For a PID target: the pidfd opened before the namespace files, which
    /// proves they are that process's (see [`open`]).
    pidfd: Option<PidFd>,
}

impl Namespaces {
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The pidfd of a PID target, to watch it: the very process whose
    /// namespaces these are. Take it before [`create_tun_in`], which consumes
    /// `self`.
    pub fn take_pidfd(&mut self) -> Option<PidFd> {
        self.pidfd.take()
    }

    /// The network namespace's descriptor (its nsfs file identifies it).
    pub fn net(&self) -> BorrowedFd<'_> {
        self.net.as_fd()
    }
}

fn open_ns(path: &Path) -> Result<OwnedFd, NetnsError> {
    fs::File::open(path)
        .map(OwnedFd::from)
        .map_err(|error| NetnsError::Open {
            path: path.to_owned(),
            error,
        })
}

/// Same namespace? Namespaces are identified by (device, inode) of their nsfs file.
fn same_ns(fd: &OwnedFd, ours: &str) -> Result<bool, NetnsError> {
    let theirs = fs::File::from(fd.try_clone().map_err(NetnsError::Spawn)?)
        .metadata()
        .map_err(NetnsError::Spawn)?;
    let ours = fs::metadata(ours).map_err(|error| NetnsError::Open {
        path: ours.into(),
        error,
    })?;
    Ok(theirs.dev() == ours.dev() && theirs.ino() == ours.ino())
}

/// Open and check the target's namespaces. Fails before anything is changed.
///
/// For a PID target the pidfd comes first and is checked again after the
/// namespace files are open: a PID only names a process while it lives, and
/// if the target died and its PID went to another process between the two,
/// `/proc/PID/ns/*` would be that other process's while the pidfd watched a
/// dead one (or, opened second, the other process). Opened first, the pidfd
/// pins the process; still running after the opens, it vouches that the files
/// were its own (a zombie's `ns/*` cannot be opened).
pub fn open(target: &Target) -> Result<Namespaces, NetnsError> {
    let root = nix::unistd::geteuid().is_root();
    let mut pidfd = None;
    let (user, net) = match target {
        Target::Pid(pid) => {
            let pid = *pid;
            let watch = PidFd::open(pid).map_err(|error| match error.raw_os_error() {
                Some(libc::ESRCH) => NetnsError::NoSuchProcess(pid),
                _ => NetnsError::Watch { pid, error },
            })?;
            let proc_dir = PathBuf::from(format!("/proc/{pid}"));
            let owner = match fs::metadata(&proc_dir) {
                Ok(meta) => meta.uid(),
                Err(_) => return Err(NetnsError::NoSuchProcess(pid)),
            };
            let deny = |e: NetnsError| match e {
                NetnsError::Open { ref error, .. }
                    if matches!(error.raw_os_error(), Some(libc::EACCES | libc::EPERM)) =>
                {
                    refusal(pid, &proc_dir, owner)
                }
                NetnsError::Open { ref error, .. }
                    if error.raw_os_error() == Some(libc::ENOENT) =>
                {
                    NetnsError::NoSuchProcess(pid)
                }
                other => other,
            };
            let user = open_ns(&proc_dir.join("ns/user")).map_err(deny)?;
            let net = open_ns(&proc_dir.join("ns/net")).map_err(deny)?;
            still_running(&watch)?;
            pidfd = Some(watch);
            if same_ns(&user, "/proc/self/ns/user")? {
                if !root {
                    return Err(NetnsError::OwnUserNamespace(pid));
                }
                (None, net)
            } else {
                (Some(user), net)
            }
        }
        Target::Path { net, user } => {
            let net_path = net;
            let net = open_ns(net_path)?;
            let user = match user {
                Some(path) => open_ns(path)?,
                None => owner_user_ns(&net).map_err(|error| NetnsError::OwnerUserNs {
                    path: net_path.clone(),
                    error,
                })?,
            };
            if same_ns(&user, "/proc/self/ns/user")? {
                (None, net)
            } else {
                (Some(user), net)
            }
        }
    };
    if same_ns(&net, "/proc/self/ns/net")? {
        return Err(NetnsError::OwnNetNamespace(target.to_string()));
    }
    Ok(Namespaces {
        target: target.clone(),
        user,
        net,
        pidfd,
    })
}

/// Why the kernel refused us a target's `ns/*` files. `ptrace_may_access`
/// wants the target's real, effective and saved uids to be ours *and* the
/// target to be dumpable, so a process of our own that is not (it called
/// `prctl(PR_SET_DUMPABLE, 0)`, or executed a setuid, setgid or
/// file-capability program) is refused just like another user's. Its
/// `/proc/PID` then belongs to root, so the uids come from `status`, which
/// anyone may read (translated into our user namespace); `owner`, the
/// directory's, stands in if it cannot be read.
fn refusal(pid: i32, proc_dir: &Path, owner: u32) -> NetnsError {
    let uids = fs::read_to_string(proc_dir.join("status"))
        .ok()
        .and_then(|status| status_uids(&status));
    let ours = nix::unistd::geteuid().as_raw();
    match uids {
        Some(uids) if uids.iter().all(|&uid| uid == ours) => NetnsError::NotDumpable(pid),
        Some([real, ..]) => NetnsError::NotYours { pid, owner: real },
        None => NetnsError::NotYours { pid, owner },
    }
}

/// The real, effective and saved uids of a `/proc/PID/status` text.
fn status_uids(status: &str) -> Option<[u32; 3]> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|id| id.parse().ok());
    Some([ids.next()??, ids.next()??, ids.next()??])
}

/// The process behind `pidfd` has not exited, so the PID still names it.
fn still_running(pidfd: &PidFd) -> Result<(), NetnsError> {
    if pidfd.has_exited() {
        return Err(NetnsError::ExitedWhileOpening(pidfd.pid()));
    }
    Ok(())
}

/// `ioctl(NS_GET_USERNS)`: the user namespace that owns a namespace.
fn owner_user_ns(ns: &OwnedFd) -> io::Result<OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // NS_GET_USERNS = _IO(0xb7, 0x1) from <linux/nsfs.h>.
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    // SAFETY: NS_GET_USERNS takes no argument and returns a new descriptor or -1;
    // `ns` is a valid open namespace descriptor for the duration of the call.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS as _) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The namespaces `exec` joins, in the order it joins them.
///
/// The user namespace joined first is the one that owns the network
/// namespace, not necessarily the target's own: `run`'s command lives in a
/// user namespace nested inside the one that owns its network (so that it
/// holds no capability over it), and from there `setns(CLONE_NEWNET)` would be
/// refused. So: the owner, the network, the mount namespace (when the target
/// has one of its own), and last the target's own user namespace when it is
/// another one, which leaves the command with the target's credentials.
#[derive(Debug)]
pub struct ExecNamespaces {
    ns: Namespaces,
    mnt: Option<OwnedFd>,
    inner_user: Option<OwnedFd>,
}

impl ExecNamespaces {
    pub fn target(&self) -> &Target {
        &self.ns.target
    }

    /// Does the command get the target's mount namespace?
    pub fn joins_mounts(&self) -> bool {
        self.mnt.is_some()
    }
}

/// Open and check what `exec` joins: [`open`]'s checks, plus the mount
/// namespace of a PID target when it is not ours, and the user namespace that
/// owns the network namespace. For a PID target the pidfd is checked once
/// more after the last file is opened, for [`open`]'s reason.
pub fn open_for_exec(target: &Target) -> Result<ExecNamespaces, NetnsError> {
    let mut ns = open(target)?;
    let mnt = match target {
        Target::Pid(pid) => {
            let mnt = open_ns(Path::new(&format!("/proc/{pid}/ns/mnt")))?;
            (!same_ns(&mnt, "/proc/self/ns/mnt")?).then_some(mnt)
        }
        Target::Path { .. } => None,
    };
    if let Some(pidfd) = &ns.pidfd {
        still_running(pidfd)?;
    }
    let mut inner_user = None;
    if let Some(user) = ns.user.take() {
        let owner = owner_user_ns(&ns.net).map_err(|error| NetnsError::OwnerUserNs {
            path: PathBuf::from(target.to_string()),
            error,
        })?;
        if !same_ns_fds(&user, &owner)? {
            inner_user = Some(user);
        }
        ns.user = Some(owner);
    }
    Ok(ExecNamespaces {
        ns,
        mnt,
        inner_user,
    })
}

/// Join what [`open_for_exec`] opened, in this process. For a forked child
/// about to exec: it must be single-threaded (`setns` refuses user and mount
/// namespaces otherwise). Joining a mount namespace moves the working
/// directory to its root; the caller goes back where it was if it can.
pub fn enter(ns: ExecNamespaces) -> Result<(), String> {
    let ExecNamespaces {
        ns,
        mnt,
        inner_user,
    } = ns;
    let target = ns.target.clone();
    join(ns)?;
    if let Some(mnt) = mnt {
        setns(&mnt, CloneFlags::CLONE_NEWNS)
            .map_err(|e| format!("cannot join the mount namespace of {target}: {e}"))?;
    }
    if let Some(user) = inner_user {
        setns(&user, CloneFlags::CLONE_NEWUSER)
            .map_err(|e| format!("cannot join the user namespace of {target}: {e}"))?;
    }
    Ok(())
}

/// Same namespace, by (device, inode) of two nsfs descriptors.
fn same_ns_fds(a: &OwnedFd, b: &OwnedFd) -> Result<bool, NetnsError> {
    let meta = |fd: &OwnedFd| {
        fd.try_clone()
            .map(fs::File::from)
            .and_then(|f| f.metadata())
            .map_err(NetnsError::Spawn)
    };
    let (a, b) = (meta(a)?, meta(b)?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

/// What the helper makes inside the namespace.
#[derive(Debug, Clone)]
pub struct TunRequest<'a> {
    pub ifname: &'a str,
    pub mtu: u16,
    /// With `--configure`: bring `lo` and the TUN up, add these addresses and
    /// routes. Without, only the MTU is set, as the original did.
    pub configure: Option<Configure<'a>>,
}

/// Addresses and routes for `--configure`.
#[derive(Debug, Clone, Copy)]
pub struct Configure<'a> {
    pub addresses: &'a [IpNetwork],
    pub routes: &'a [IpNetwork],
}

/// Create the TUN (and configure it) in the *current* network namespace. Used by
/// the helper after `setns`, and by `run`'s child after `unshare`.
pub fn make_tun_here(req: &TunRequest<'_>) -> Result<OwnedFd, String> {
    let fd = crate::tun::create(req.ifname).map_err(|e| e.to_string())?;
    let (addresses, routes, up) = match req.configure {
        Some(c) => (c.addresses, c.routes, true),
        None => (&[][..], &[][..], false),
    };
    crate::netlink::configure_interface(req.ifname, u32::from(req.mtu), addresses, routes, up)
        .map_err(|e| e.to_string())?;
    Ok(fd)
}

const REPLY_OK: &[u8] = b"ok";
const REPLY_ERR: &[u8] = b"err:";

/// Fork a helper that joins `ns`, creates the TUN as asked and sends its
/// descriptor back. Must be called before any thread exists.
pub fn create_tun_in(ns: Namespaces, req: &TunRequest<'_>) -> Result<OwnedFd, NetnsError> {
    spawn_helper(ns, || make_tun_here(req))
}

/// Fork the helper: it sheds what it inherited ([`isolate`]), joins `ns`, runs
/// `work` there and sends back the descriptor `work` made, or why it failed.
fn spawn_helper(
    mut ns: Namespaces,
    work: impl FnOnce() -> Result<OwnedFd, String>,
) -> Result<OwnedFd, NetnsError> {
    if !crate::lifecycle::single_threaded() {
        return Err(NetnsError::Threaded);
    }
    let (parent_end, child_end) = fdpass::channel_pair().map_err(NetnsError::Spawn)?;

    // SAFETY: the process is single-threaded (checked above), so the child is a
    // complete copy and may allocate; it never returns into our caller: it ends
    // in `_exit`, so no destructors or atexit handlers of the parent run twice.
    match unsafe { fork() }.map_err(|e| NetnsError::Spawn(e.into()))? {
        ForkResult::Child => {
            drop(parent_end);
            // Closed here, by its owner, rather than behind its back by
            // `isolate` (after which dropping it could close a reused number).
            drop(ns.take_pidfd());
            // If we are killed, the helper must not linger inside the namespace.
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            let sent = match isolate(&ns, &child_end)
                .and_then(|()| join(ns))
                .and_then(|()| work())
            {
                Ok(fd) => child_end.send(REPLY_OK, Some(fd.as_fd())),
                Err(msg) => {
                    let mut reply = REPLY_ERR.to_vec();
                    reply.extend_from_slice(msg.as_bytes());
                    reply.truncate(fdpass::MAX_MESSAGE);
                    child_end.send(&reply, None)
                }
            };
            crate::lifecycle::exit_now(if sent.is_ok() { 0 } else { 1 })
        }
        ForkResult::Parent { child } => {
            drop(child_end);
            drop(ns);
            let reply = parent_end.recv();
            let status = reap(child);
            match reply {
                Ok(Some(msg)) if msg.data == REPLY_OK => msg.fd.ok_or_else(|| {
                    NetnsError::HelperDied("it answered without a descriptor".into())
                }),
                Ok(Some(msg)) if msg.data.starts_with(REPLY_ERR) => Err(NetnsError::Helper(
                    String::from_utf8_lossy(&msg.data[REPLY_ERR.len()..]).into_owned(),
                )),
                Ok(Some(_)) => Err(NetnsError::HelperDied("garbled answer".into())),
                Ok(None) => Err(NetnsError::HelperDied(status)),
                Err(e) => Err(NetnsError::HelperDied(e.to_string())),
            }
        }
    }
}

/// In the helper, before it joins the target: carry nothing in but the
/// channel. Once in the target's user namespace, the target's root holds every
/// capability over the helper's credentials, so whatever the helper holds is
/// theirs to take unless the kernel's dumpable check stops them.
///
/// - Non-dumpable: inherited from `main`, set again here because this is the
///   process that crosses over, and a library caller (a test, an embedder) may
///   not have made its process non-dumpable. Its memory is a copy of ours, the
///   keys included (the helper needs the config for the TUN's addresses, so it
///   is forked after the config is read); non-dumpable means ptrace,
///   `/proc/PID/mem` and `pidfd_getfd` need `CAP_SYS_PTRACE` in the user
///   namespace the memory was made in, which is the caller's, not the target's.
/// - Descriptors: all but the channel and the two namespace descriptors that
///   `setns` still needs (stdio goes to `/dev/null`); [`join`] closes those two
///   as soon as they are used. The UAPI listener and its lock, the janitor's
///   pipe, a `--ready-fd`, the terminal: none of them goes along.
fn isolate(ns: &Namespaces, channel: &fdpass::Channel) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    crate::lifecycle::make_undumpable()
        .map_err(|e| format!("cannot make the namespace helper non-dumpable: {e}"))?;
    let mut keep = vec![channel.as_fd().as_raw_fd(), ns.net.as_raw_fd()];
    keep.extend(ns.user.as_ref().map(|user| user.as_raw_fd()));
    // SAFETY: the helper ends in `_exit` and, from here on, uses no
    // descriptor but those kept: the channel, `ns` (until `join` drops it),
    // and the ones `work` opens itself.
    unsafe { crate::daemon::keep_only(&keep) }
        .map_err(|e| format!("cannot close the namespace helper's inherited descriptors: {e}"))
}

/// Join the target's user namespace (if it is not ours), then its network
/// namespace, closing each descriptor once it is used. The order matters: the
/// network namespace is only ours to join once we hold capabilities in the
/// user namespace that owns it.
fn join(ns: Namespaces) -> Result<(), String> {
    let Namespaces {
        target, user, net, ..
    } = ns;
    if let Some(user) = user {
        setns(&user, CloneFlags::CLONE_NEWUSER).map_err(|e| {
            format!(
                "cannot join the user namespace of {target}: {e} (hint: it must be owned by you, e.g. made by `unshare --user --map-root-user`)"
            )
        })?;
    }
    setns(&net, CloneFlags::CLONE_NEWNET).map_err(|e| join_net_error(&target, e))
}

/// `setns(CLONE_NEWNET)` needs `CAP_SYS_ADMIN` in the user namespace that owns
/// the network namespace; `EPERM` means that one is not the target's (nor below
/// it), typically a namespace made by root (`ip netns add`).
fn join_net_error(target: &Target, errno: nix::errno::Errno) -> String {
    if errno == nix::errno::Errno::EPERM {
        format!(
            "not permitted to join the network namespace of {target}: {errno} (hint: that network namespace belongs to a user namespace you do not own, e.g. root's; make the target with `unshare --user --map-root-user --net` so that both are yours)"
        )
    } else {
        format!(
            "cannot join the network namespace of {target}: {errno} (hint: it must be owned by your user namespace; was it made with `unshare --net` inside `unshare --user`?)"
        )
    }
}

fn reap(child: Pid) -> String {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return format!("exit status {code}"),
            Ok(WaitStatus::Signaled(_, sig, _)) => return format!("killed by {sig}"),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return format!("wait failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testns::{Isolation, Stop, ensure, in_namespace};
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    /// What the helper sees of itself once inside: its dumpable flag, its
    /// network namespace and every descriptor it holds, one `fd N TARGET`
    /// line each (the listing's own directory descriptor among them).
    fn helper_self_report() -> String {
        let mut report = format!(
            "dumpable {:?}\nnet {:?}\n",
            crate::lifecycle::is_dumpable(),
            fs::read_link("/proc/self/ns/net")
        );
        match fs::read_dir("/proc/self/fd") {
            Ok(dir) => {
                for entry in dir.flatten() {
                    let target = fs::read_link(entry.path())
                        .map(|t| t.display().to_string())
                        .unwrap_or_else(|e| format!("? {e}"));
                    report.push_str(&format!(
                        "fd {} {target}\n",
                        entry.file_name().to_string_lossy()
                    ));
                }
            }
            Err(e) => report.push_str(&format!("cannot list /proc/self/fd: {e}\n")),
        }
        report
    }

    /// A process in a user and network namespace of its own, as a target;
    /// it lives until `hold` is closed.
    fn spawn_target() -> Result<(Pid, fs::File), Stop> {
        let (ready_r, ready_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe2: {e}"))?;
        let (hold_r, hold_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe2: {e}"))?;
        match crate::lifecycle::fork_before_threads()? {
            ForkResult::Child => {
                drop((ready_r, hold_w));
                let made =
                    nix::sched::unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET);
                let _ = fs::File::from(ready_w).write_all(if made.is_ok() { b"y" } else { b"n" });
                // Until the test closes its end.
                let _ = fs::File::from(hold_r).read(&mut [0u8]);
                crate::lifecycle::exit_now(0)
            }
            ForkResult::Parent { child } => {
                drop((ready_w, hold_r));
                let mut answer = [0u8];
                let _ = fs::File::from(ready_r).read(&mut answer);
                if answer != *b"y" {
                    let _ = waitpid(child, None);
                    return Err(Stop::Skip(
                        "cannot make a user+net namespace for the target".into(),
                    ));
                }
                Ok((child, fs::File::from(hold_w)))
            }
        }
    }

    /// The helper, once in the target's user and network namespaces, is not
    /// dumpable and holds its channel and nothing else: no namespace
    /// descriptor, and not the pipe the parent opened before forking it.
    #[test]
    fn helper_inside_is_undumpable_and_holds_only_its_channel() {
        in_namespace(
            "helper_inside_is_undumpable_and_holds_only_its_channel",
            Isolation::OwnNetns,
            || {
                // The pipe to the target is ours, opened before the helper is
                // forked: it must not go along.
                let (target, hold) = spawn_target()?;
                let pipe = fs::read_link(format!("/proc/self/fd/{}", hold.as_raw_fd()))?
                    .display()
                    .to_string();
                let target_net = fs::read_link(format!("/proc/{target}/ns/net"))?;
                let ns = open(&Target::Pid(target.as_raw())).map_err(|e| e.to_string())?;
                let result = spawn_helper(ns, || Err(helper_self_report()));
                drop(hold);
                let _ = waitpid(target, None);
                let report = match result {
                    Err(NetnsError::Helper(report)) => report,
                    other => return Err(Stop::Fail(format!("no report: {other:?}"))),
                };
                ensure(report.contains("dumpable Ok(false)\n"), || {
                    format!("the helper is dumpable:\n{report}")
                })?;
                ensure(
                    report.contains(&format!("net Ok({target_net:?})\n")),
                    || format!("not in the target's netns {target_net:?}:\n{report}"),
                )?;
                ensure(!report.contains(&pipe), || {
                    format!("the helper holds the parent's pipe {pipe}:\n{report}")
                })?;
                let mut sockets = 0;
                for line in report.lines().filter_map(|l| l.strip_prefix("fd ")) {
                    let (fd, target) = line.split_once(' ').unwrap_or((line, ""));
                    let allowed = match target {
                        "/dev/null" => ["0", "1", "2"].contains(&fd),
                        // The listing's own directory.
                        t if t.starts_with("/proc/") && t.ends_with("/fd") => true,
                        t if t.starts_with("socket:[") => {
                            sockets += 1;
                            true
                        }
                        _ => false,
                    };
                    ensure(allowed, || {
                        format!("the helper holds fd {fd} ({target}):\n{report}")
                    })?;
                }
                ensure(sockets == 1, || {
                    format!("{sockets} sockets instead of the one channel:\n{report}")
                })
            },
        );
    }

    /// The check `open` makes after the namespace files: a target that died
    /// (and whose PID is free for reuse) after its pidfd was opened is refused,
    /// one still running passes.
    #[test]
    fn a_target_that_exits_while_being_opened_is_refused() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        let pidfd = PidFd::open(pid).expect("pidfd_open");
        let running = still_running(&pidfd);
        child.kill().expect("kill sleep");
        child.wait().expect("reap sleep");
        running.expect("a running target passes");
        let err = still_running(&pidfd).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "process {pid} exited while its namespaces were being opened (hint: start the target again and pass its new PID)"
            )
        );
    }

    /// `open` hands back the pidfd it took first, of the target's PID.
    #[test]
    fn open_keeps_the_pidfd_of_a_pid_target() {
        in_namespace(
            "open_keeps_the_pidfd_of_a_pid_target",
            Isolation::OwnNetns,
            || {
                let (target, hold) = spawn_target()?;
                let opened = open(&Target::Pid(target.as_raw()));
                drop(hold);
                let _ = waitpid(target, None);
                let mut ns = opened.map_err(|e| e.to_string())?;
                let pidfd = ns
                    .take_pidfd()
                    .ok_or_else(|| "no pidfd for a PID target".to_string())?;
                ensure(pidfd.pid() == target.as_raw(), || {
                    format!("pidfd of {} for target {target}", pidfd.pid())
                })?;
                ensure(pidfd.has_exited(), || {
                    "the pidfd does not see the target's exit".to_string()
                })
            },
        );
    }

    #[test]
    fn status_uids_are_real_effective_saved() {
        let status = "Name:\tsleep\nUid:\t1000\t1001\t1002\t1003\nGid:\t5\t5\t5\t5\n";
        assert_eq!(status_uids(status), Some([1000, 1001, 1002]));
        assert_eq!(status_uids("Name:\tx\n"), None);
        assert_eq!(status_uids("Uid:\t1\tx\t3\t4\n"), None);
    }

    #[test]
    fn missing_process_is_reported_by_pid() {
        // PIDs are capped by pid_max (at most 2^22), so this one cannot exist.
        let err = open(&Target::Pid(99_999_999)).unwrap_err();
        assert_eq!(err.to_string(), "there is no process with PID 99999999");
    }

    #[test]
    fn our_own_namespaces_are_refused() {
        let me = std::process::id() as i32;
        let err = open(&Target::Pid(me)).unwrap_err().to_string();
        assert!(
            err.contains("has not unshared a user namespace")
                || err.contains("our own network namespace"),
            "{err}"
        );
    }

    #[test]
    fn foreign_network_namespace_says_not_permitted() {
        let err = join_net_error(&Target::Pid(42), nix::errno::Errno::EPERM);
        assert!(
            err.starts_with("not permitted to join the network namespace of process 42"),
            "{err}"
        );
        assert!(err.contains("you do not own"), "{err}");
        assert!(
            err.contains("unshare --user --map-root-user --net"),
            "{err}"
        );
    }

    #[test]
    fn missing_namespace_path_names_the_path() {
        let err = open(&Target::Path {
            net: "/nonexistent/netns/x".into(),
            user: None,
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/netns/x"), "{err}");
    }
}
