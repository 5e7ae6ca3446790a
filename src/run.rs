//! The `run` form: one command gives a program namespaces whose only network is
//! the tunnel, the launcher that users of the original had to write themselves.
//!
//! Processes, all forked before any thread exists:
//! - we (the engine) stay in the caller's namespaces, so the UDP socket does too;
//! - a janitor removes the socket files should we be SIGKILLed;
//! - the child unshares user+net+mount namespaces, maps the caller's uid and gid
//!   to root inside (it needs root there to make the TUN, addresses, routes and
//!   the resolv.conf bind mount), does that, sends us the TUN descriptor, waits
//!   for "go" (the engine is up), then execs the command. Without `--map-root` it
//!   first enters a nested user namespace that maps the caller's uid back to
//!   itself, so the command runs as the caller and holds no capability over the
//!   network namespace: it cannot take the tunnel down or add a way around it.
//!
//! `up` (see `named`) is this with a holder for the command, in the
//! background: [`exec_held`].
//!
//! With `--publish` (see `publish`) the listeners are bound first (a port in
//! use stops us before anything exists), the engine forks the forwarder that
//! holds them, and the child, once it is the caller again, starts the
//! connector inside next to the command (for `up` the holder is the
//! connector). The command may bind any port in its namespace
//! (`ip_unprivileged_port_start` 0 there), so a web UI on port 80 inside
//! can be published.
//!
//! The command keeps our stdio, terminal, environment and working directory.
//! SIGINT, SIGTERM and SIGHUP sent to us are forwarded to it (but not a
//! terminal's Ctrl-C, which reaches its process group, and so the command,
//! already: it would get it twice); its exit status is
//! ours (128+N for a signal N, like a shell). It has `PR_SET_PDEATHSIG` set to
//! SIGKILL, so it does not outlive us whatever the order of deaths.

#![forbid(unsafe_code)]

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Gid, Pid, Uid, getgid, getuid};

use crate::attach::{resolve_endpoints, routes};
use crate::cli::RunArgs;
use crate::command::{exec_command, exit_code, forward, wait_status};
use crate::config::Config;
use crate::daemon::Janitor;
use crate::engine::Engine;
use crate::fdpass::{self, Channel};
use crate::lifecycle::{self, PidFd, ReadyFd};
use crate::netns::{self, Configure, TunRequest};
use crate::publish::{self, Bound};
use crate::sandbox::Sandbox;
use crate::tun::{self, TunDevice};
use crate::uapi::{self, UapiSocket};

const GO: &[u8] = b"go";
/// How long the command gets to exit after SIGTERM when the engine failed.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
const REPLY_OK: &[u8] = b"ok";
const REPLY_ERR: &[u8] = b"err:";

/// The interface name for `run` when no `--ifname` is given.
const FALLBACK_IFNAME: &str = "wg0";

/// The interface name: `--ifname`, else the config file's stem when it is a
/// valid interface name (`wg-quick up vpn.conf` makes `vpn`), else `wg0`,
/// with a warning saying why (two such configs would both be `wg0`, and their
/// sockets collide).
fn ifname(args: &RunArgs, config: &Path) -> anyhow::Result<(String, Option<String>)> {
    if let Some(name) = &args.ifname {
        tun::validate_ifname(name)?;
        return Ok((name.clone(), None));
    }
    Ok(ifname_from_config(config))
}

/// The name `wg-quick` would take from the config file's name, or the
/// fallback and why.
fn ifname_from_config(config: &Path) -> (String, Option<String>) {
    let Some(stem) = config.file_stem() else {
        return (FALLBACK_IFNAME.to_owned(), None);
    };
    let why = match stem.to_str() {
        Some(stem) => match tun::validate_ifname(stem) {
            Ok(()) => return (stem.to_owned(), None),
            Err(e) => e.to_string(),
        },
        None => "it is not UTF-8".to_owned(),
    };
    let warning = format!(
        "{}: the interface is named {FALLBACK_IFNAME}, not after the file: {why} (choose a name with --ifname, or rename the file)",
        config.display()
    );
    (FALLBACK_IFNAME.to_owned(), Some(warning))
}

/// What `run` does not do with a config, said once each at warn: the hooks
/// (it needs none), and without `DNS=` the host's resolv.conf, kept as it
/// is, whose loopback resolver (systemd-resolved's 127.0.0.53) would be the
/// namespace's own loopback, where nothing answers. `host_resolv` is the
/// host's /etc/resolv.conf, if readable.
fn form_warnings(config: &Config, host_resolv: Option<&str>) -> Vec<String> {
    let mut warnings = Vec::new();
    if config.ignored_hooks > 0 {
        warnings.push(
            "run needs no hooks: it sets up the interface, its addresses, routes and DNS itself, and the namespace has no other way out".to_owned(),
        );
    }
    if resolv_conf(config).is_some() {
        return warnings;
    }
    let loopback: Vec<&str> = host_resolv
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .filter(|server| {
            server
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
        })
        .collect();
    let mut warning =
        "no DNS= in the config: the command keeps the host's /etc/resolv.conf".to_owned();
    match loopback.first() {
        Some(server) => warning.push_str(&format!(
            ", whose nameserver {server} is the namespace's own loopback, where nothing answers: name lookups will fail (add DNS = a server reachable through the tunnel)"
        )),
        None => warning.push_str(
            " (its servers are reached through the tunnel; a loopback one such as 127.0.0.53 would be the namespace's own, where nothing answers: add DNS = … to choose)",
        ),
    }
    warnings.push(warning);
    warnings
}

/// The resolv.conf the command sees, from the config's DNS= servers and search
/// domains; `None` when the config names no DNS server (the host's file stays).
fn resolv_conf(config: &Config) -> Option<String> {
    let iface = &config.interface;
    if iface.dns.is_empty() && iface.dns_search.is_empty() {
        return None;
    }
    let mut text = String::from("# written by wireguard4netns run from the config's DNS=\n");
    for server in &iface.dns {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !iface.dns_search.is_empty() {
        text.push_str(&format!("search {}\n", iface.dns_search.join(" ")));
    }
    Some(text)
}

/// Everything the child needs, prepared before the fork.
struct ChildPlan<'a> {
    ifname: &'a str,
    config: &'a Config,
    routes: Vec<ipnetwork::IpNetwork>,
    resolv: Option<&'a Path>,
    /// Hidden from the command under an empty read-only tmpfs.
    socket_dir: &'a Path,
    /// The config file (holding the private key), hidden from the command
    /// under an empty file; `None` when it is not a regular file (a pipe).
    config_file: Option<PathBuf>,
    map_root: bool,
    uid: Uid,
    gid: Gid,
    command: Vec<CString>,
    /// For the engine, to log at warn once the tunnel is up (before the
    /// command starts).
    up_warnings: Vec<String>,
    /// `--publish`'s inner end of the pair (see `publish`), for the connector.
    connector: Option<&'a Channel>,
    /// The command (`up`'s holder) is the connector; else one is started.
    connector_is_command: bool,
    /// For the engine: `--threads`, resolved before any thread exists.
    threads: std::num::NonZeroUsize,
}

/// What `up` (see `named`) adds to `run`: its command is the holder, whose
/// PID goes into a state file of its own in the socket directory before the
/// engine confines itself, and `up`'s caller is told once the holder runs.
pub struct Held<'a> {
    /// The state file's name in the socket directory; removed with the
    /// socket, by us or by the janitor.
    pub state_name: String,
    /// Writes the state file for the holder (our child), while we may still
    /// create files.
    pub write_state: Box<dyn FnOnce(Pid) -> anyhow::Result<()> + 'a>,
    /// The holder runs: the tunnel is up.
    pub on_up: Box<dyn FnOnce() -> anyhow::Result<()> + 'a>,
}

/// Run `wireguard4netns run` to the end; returns the command's exit status.
pub fn exec(args: &RunArgs) -> anyhow::Result<u8> {
    exec_held(args, None)
}

/// [`exec`], for `up` when `held` is given.
pub fn exec_held(args: &RunArgs, held: Option<Held<'_>>) -> anyhow::Result<u8> {
    lifecycle::check_handed_fds(&[("--ready-fd", args.ready_fd)])?;
    let config_path = crate::named::lookup::resolve(&args.config)?;
    let (ifname, ifname_warning) = ifname(args, &config_path)?;
    let config = Config::from_file(&config_path)?;
    let host_resolv = fs::read_to_string("/etc/resolv.conf").ok();
    for warning in &config.warnings {
        tracing::warn!("{}: {warning}", config_path.display());
    }
    // Said once the tunnel is up, so that a start that fails says only why.
    let up_warnings: Vec<String> = ifname_warning
        .into_iter()
        .chain(
            form_warnings(&config, host_resolv.as_deref())
                .into_iter()
                .map(|w| format!("{}: {w}", config_path.display())),
        )
        .collect();
    if config.mtu() > tun::MAX_MTU {
        bail!(
            "{}: MTU {} is larger than this engine supports ({}); lower it",
            config_path.display(),
            config.mtu(),
            tun::MAX_MTU
        );
    }
    let endpoints =
        resolve_endpoints(&config).with_context(|| format!("in {}", config_path.display()))?;
    let threads = crate::cli::engine_threads(args.threads);
    let ready_fd = args
        .ready_fd
        .map(|fd| ReadyFd::take(fd, "--ready-fd"))
        .transpose()?;
    let mut command = crate::command::argv(
        &args.command,
        "wireguard4netns run --config CONFIG -- CMD [ARGS…]",
    )?;

    let dir = args.tmpdir.clone().unwrap_or_else(uapi::default_dir);
    refuse_cwd_in(&dir)?;
    // Bound first: a port in use stops us before anything exists.
    let published = Bound::bind(&publish::parse_all(&args.publish)?)?;
    let socket = UapiSocket::bind(&dir, &ifname)?;
    let resolv_name = format!("{ifname}.resolv.conf");
    let resolv_path = match resolv_conf(&config) {
        Some(text) => Some(write_private_file(&dir.join(&resolv_name), &text)?),
        None => None,
    };
    // Removed through the socket directory's descriptor, by us or (should we
    // be killed) by the janitor, which keeps that descriptor.
    let files_guard = RemoveOnDrop {
        socket: &socket,
        names: (resolv_path.as_ref().map(|_| resolv_name.clone()))
            .into_iter()
            .chain(held.as_ref().map(|held| held.state_name.clone()))
            .collect(),
    };
    let janitor = {
        let (socket, names) = (&socket, files_guard.names.clone());
        Janitor::spawn(&socket.raw_fds(), move || {
            socket.remove_files();
            for name in &names {
                socket.remove_in_dir(name);
            }
        })
        .context("cannot start the cleanup process")?
    };

    // The pair between the forwarder (host) and the connector (inside); for
    // `up` the holder is the connector, and learns its descriptor as an
    // argument.
    let (mut outside, inside) = if published.is_empty() {
        (None, None)
    } else {
        let (host_end, inner_end) = fdpass::channel_pair().context("cannot make a socketpair")?;
        if held.is_some() {
            command.push(CString::new(inner_end.as_raw_fd().to_string())?);
        }
        (Some((published, host_end)), Some(inner_end))
    };
    let plan = ChildPlan {
        ifname: &ifname,
        config: &config,
        routes: routes(&config),
        resolv: resolv_path.as_deref(),
        socket_dir: &dir,
        config_file: fs::canonicalize(&config_path)
            .ok()
            .filter(|path| path.is_file()),
        map_root: args.map_root,
        uid: getuid(),
        gid: getgid(),
        command,
        up_warnings,
        connector: inside.as_ref(),
        connector_is_command: held.is_some(),
        threads,
    };
    let (ours, theirs) = fdpass::channel_pair().context("cannot make a socketpair")?;
    let parent = nix::unistd::getpid();
    // The child never returns: it execs the command or exits.
    let child = match lifecycle::fork_before_threads().context("cannot fork")? {
        ForkResult::Child => {
            drop(ours);
            // The host's listeners are not for the namespace.
            drop(outside.take());
            child_main(&plan, &theirs, parent)
        }
        ForkResult::Parent { child } => child,
    };
    drop(theirs);
    if let Some((published, host_end)) = outside.take()
        && let Err(e) = published.spawn_forwarder(host_end)
    {
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        return Err(e.into());
    }
    let sandbox =
        Sandbox::new(!args.no_sandbox, &dir, &config).signalling(child.as_raw().unsigned_abs());
    let result = parent_main(
        &plan,
        &ours,
        child,
        &socket,
        &endpoints,
        (ready_fd, held),
        &sandbox,
    );
    drop(files_guard);
    drop(socket);
    janitor.dismiss();
    result
}

/// Removes files of ours in the socket directory when dropped, through the
/// directory's descriptor (the only place the confined engine may unlink).
struct RemoveOnDrop<'a> {
    socket: &'a UapiSocket,
    names: Vec<String>,
}

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        for name in &self.names {
            self.socket.remove_in_dir(name);
        }
    }
}

/// Write `text` to a new file readable by all (it is bind-mounted as
/// /etc/resolv.conf, which every program must read).
fn write_private_file(path: &Path, text: &str) -> anyhow::Result<PathBuf> {
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path.to_owned())
}

fn parent_main(
    plan: &ChildPlan<'_>,
    channel: &Channel,
    child: Pid,
    socket: &UapiSocket,
    endpoints: &[Option<std::net::SocketAddr>],
    (ready_fd, held): (Option<ReadyFd>, Option<Held<'_>>),
    sandbox: &Sandbox,
) -> anyhow::Result<u8> {
    let reply = channel.recv();
    let tun_fd: OwnedFd = match reply {
        Ok(Some(msg)) if msg.data == REPLY_OK && msg.fd.is_some() => msg.fd.context("no fd")?,
        Ok(Some(msg)) if msg.data.starts_with(REPLY_ERR) => {
            let _ = waitpid(child, None);
            bail!("{}", String::from_utf8_lossy(&msg.data[REPLY_ERR.len()..]));
        }
        other => {
            let status = wait_status(child);
            bail!("the namespace child ended before setting up the tunnel ({status:?}, {other:?})");
        }
    };
    // Watch the child from now on; a pidfd cannot be fooled by PID reuse.
    let pidfd = PidFd::open(child.as_raw()).context("cannot watch the command")?;
    let on_up = match held {
        Some(held) => match (held.write_state)(child) {
            Ok(()) => Some(held.on_up),
            Err(e) => {
                let _ = kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                return Err(e);
            }
        },
        None => None,
    };

    let sidecars = match sandbox.before_threads() {
        Ok(check) => check,
        Err(e) => {
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            return Err(e.into());
        }
    };
    let (runtime, signals) =
        lifecycle::engine_runtime().context("cannot start the async runtime")?;
    let engine = runtime.block_on(async {
        let tun = TunDevice::new(tun_fd, plan.config.mtu())?;
        let (client, server) = gotatun::device::uapi::UapiServer::new();
        let engine =
            Engine::start(tun.clone(), plan.config, endpoints, server, plan.threads).await?;
        crate::engine::spawn_watchers(&client, plan.config, sidecars.resolver);
        let serving = uapi::serve(socket, client, sidecars.peer_check)?;
        sandbox.tunnel_up(socket.dir_fd())?;
        anyhow::Ok((engine, serving, tun))
    });
    let (mut engine, serving, tun) = match engine {
        Ok(running) => running,
        Err(e) => {
            // The child waits for "go"; closing the channel makes it exit.
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            return Err(e);
        }
    };
    for warning in &plan.up_warnings {
        tracing::warn!("{warning}");
    }
    channel.send(GO, None).context("cannot start the command")?;
    if let Some(on_up) = on_up
        && let Err(e) = holder_started(channel, &pidfd).and_then(|()| on_up())
    {
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        return Err(e);
    }
    if let Some(ready) = ready_fd {
        ready.notify();
    }
    tracing::info!(
        "{} is up; UAPI socket {}; running {:?}",
        plan.ifname,
        socket.path().display(),
        plan.command
    );

    let failure = runtime.block_on(async {
        let exited = pidfd.exited();
        tokio::pin!(exited);
        // The signals stay blocked: if we cannot read them, nothing could stop
        // us but SIGKILL, so stop the command (and with it us) instead.
        let give_up = |e: std::io::Error| {
            tracing::error!("cannot read signals ({e}); stopping the command");
            let _ = kill(child, Signal::SIGTERM);
        };
        let mut signals = match signals.watch() {
            Ok(watch) => Some(watch),
            Err(e) => {
                give_up(e);
                None
            }
        };
        let mut watch_engine = true;
        loop {
            let next = async {
                match signals.as_mut() {
                    Some(watch) => watch.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut exited => break None,
                // The command would be left without a network: stop it, then
                // exit non-zero naming the failure (it has PR_SET_PDEATHSIG if
                // it ignores SIGTERM).
                failure = engine.failed(), if watch_engine => {
                    // Deleted from inside (`--map-root`): the command's choice,
                    // and its own business, as before.
                    if tun.is_gone() {
                        tracing::warn!("{} was deleted; the command runs on without it", plan.ifname);
                        watch_engine = false;
                        continue;
                    }
                    let _ = kill(child, Signal::SIGTERM);
                    let _ = tokio::time::timeout(EXIT_GRACE, &mut exited).await;
                    break Some(failure);
                }
                received = next => match received {
                    Ok(received) => forward(child, received),
                    Err(e) => {
                        give_up(e);
                        signals = None;
                    }
                },
            }
        }
    });
    drop(serving);
    // The engine ends with the process (see `abandon_runtime`).
    std::mem::forget(engine);
    lifecycle::abandon_runtime(runtime);
    if let Some(failure) = failure {
        return Err(failure.into());
    }
    Ok(exit_code(wait_status(child)))
}

/// Wait until the child has exec'd the holder: its end of the channel is
/// close-on-exec, so end-of-file there means the exec happened (or the child
/// died, which its pidfd then says). Before that it still runs as root of the
/// namespace, with our memory: nobody may be told to join it yet.
fn holder_started(channel: &Channel, pidfd: &PidFd) -> anyhow::Result<()> {
    match channel.recv() {
        Ok(None) => {}
        other => bail!("the holder process did not start ({other:?})"),
    }
    if pidfd.has_exited() {
        bail!("the holder process ended as it started");
    }
    Ok(())
}

/// The child: make the namespaces, the TUN and the resolv.conf, hand the TUN
/// over, wait for "go", exec the command. Never returns.
///
/// Until the exec it holds a copy of our memory (the keys) and our
/// descriptors (the UAPI listener and lock, the janitor's pipe, the channel,
/// a `--ready-fd`) inside the new namespaces. It is non-dumpable (but for the
/// id-map writes) and alone there, and every one of those descriptors is
/// close-on-exec, so the exec drops them and replaces the memory before the
/// command runs. Closing them earlier, as the TUN helper does, would have to
/// tell ours from those the caller means the command to inherit, which is
/// what the close-on-exec flag already does.
fn child_main(plan: &ChildPlan<'_>, channel: &Channel, parent: Pid) -> ! {
    // Die with the engine, and don't start if it is already gone.
    lifecycle::die_with(parent);
    match setup_namespaces(plan) {
        Ok(fd) => {
            if channel.send(REPLY_OK, Some(fd.as_fd())).is_err() {
                lifecycle::exit_now(1);
            }
        }
        Err(msg) => {
            let mut reply = REPLY_ERR.to_vec();
            reply.extend_from_slice(msg.as_bytes());
            reply.truncate(fdpass::MAX_MESSAGE);
            let _ = channel.send(&reply, None);
            lifecycle::exit_now(1);
        }
    }
    // The engine answers "go" once it is up, or closes the channel.
    match channel.recv() {
        Ok(Some(msg)) if msg.data == GO => {}
        _ => lifecycle::exit_now(1),
    }
    if !plan.map_root
        && let Err(msg) = become_caller(plan.uid, plan.gid)
    {
        eprintln!("wireguard4netns: {msg}");
        lifecycle::exit_now(1);
    }
    // Credential changes clear the parent-death signal: set it again.
    lifecycle::die_with(parent);
    if let Some(channel) = plan.connector {
        let started = if plan.connector_is_command {
            channel
                .keep_across_exec()
                .map_err(|e| format!("cannot hand the --publish channel on: {e}"))
        } else {
            publish::start_connector(channel)
        };
        if let Err(msg) = started {
            eprintln!("wireguard4netns: {msg}");
            lifecycle::exit_now(1);
        }
    }
    let (code, why) = exec_command(&plan.command);
    eprintln!(
        "wireguard4netns: {}: {why}",
        plan.command[0].to_string_lossy()
    );
    lifecycle::exit_now(code)
}

/// In the child: new user+net+mount namespaces with the caller mapped to root,
/// then the TUN, ICMP, the resolv.conf, and the socket directory hidden.
fn setup_namespaces(plan: &ChildPlan<'_>) -> Result<OwnedFd, String> {
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)
        .map_err(|e| match e {
            Errno::EPERM | Errno::ENOSPC | Errno::EUSERS => format!(
                "cannot create a user namespace: {} (hint: as root: sysctl -w user.max_user_namespaces=28633, and kernel.unprivileged_userns_clone=1 where that exists)",
                match e {
                    Errno::EPERM => "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0, or a security policy such as AppArmor's)",
                    _ => "user namespaces are disabled or exhausted (user.max_user_namespaces is 0 or reached)",
                }
            ),
            other => format!("cannot create namespaces: {}", other.desc()),
        })?;
    write_id_maps(0, plan.uid.as_raw(), 0, plan.gid.as_raw())?;

    // Our mounts stay ours: nothing propagates back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make the mount namespace private: {}", e.desc()))?;

    // Unprivileged ICMP (`ping` without setuid or CAP_NET_RAW) for our gid,
    // which is gid 0 of this user namespace.
    fs::write("/proc/sys/net/ipv4/ping_group_range", "0 0")
        .map_err(|e| format!("cannot allow ping in the namespace: {e}"))?;
    // Any port for the command, as for root: the namespace is its own, and
    // `--publish 8080:80` should reach a web UI on port 80 inside.
    fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")
        .map_err(|e| format!("cannot allow low ports in the namespace: {e}"))?;

    let request = TunRequest {
        ifname: plan.ifname,
        mtu: plan.config.mtu(),
        configure: Some(Configure {
            addresses: &plan.config.interface.addresses,
            routes: &plan.routes,
        }),
    };
    let fd = netns::make_tun_here(&request)?;

    if let Some(resolv) = plan.resolv {
        mount(
            Some(resolv),
            "/etc/resolv.conf",
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            format!(
                "cannot bind-mount {} over /etc/resolv.conf: {}",
                resolv.display(),
                e.desc()
            )
        })?;
    }
    hide_socket_dir(plan.socket_dir)?;
    if let Some(config) = &plan.config_file {
        hide_config(config)?;
    }
    // The command, and all it starts, may signal only each other: not the
    // engine, its janitor or its peer-check process, which share its uid.
    crate::sandbox::landlock::scope_signals()
        .map_err(|e| format!("cannot keep the command from signalling the engine: {e}"))?;
    Ok(fd)
}

/// The command must not start inside the socket directory: a working
/// directory refers to the directory itself, not its path, so the tmpfs that
/// hides the directory's path would not hide it from `.`.
fn refuse_cwd_in(socket_dir: &Path) -> anyhow::Result<()> {
    let (Ok(dir), Ok(cwd)) = (fs::canonicalize(socket_dir), std::env::current_dir()) else {
        // A directory that does not exist yet cannot hold the working one.
        return Ok(());
    };
    if cwd.starts_with(&dir) {
        bail!(
            "the working directory {} is inside the socket directory {}, which the command must not see; run from elsewhere or pick another --tmpdir",
            cwd.display(),
            dir.display()
        );
    }
    Ok(())
}

/// An empty file (`/dev/null`) over the config file: it holds the private
/// key, and the command runs as the caller. Skipped when the socket
/// directory's tmpfs already hides it.
fn hide_config(config: &Path) -> Result<(), String> {
    if !config.exists() {
        return Ok(());
    }
    mount(
        Some("/dev/null"),
        config,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        format!(
            "cannot hide the config file {} from the command: {}",
            config.display(),
            e.desc()
        )
    })
}

/// An empty read-only tmpfs over the socket directory (after the
/// resolv.conf bind mount, whose source lives there): the command does not
/// even see the UAPI socket, which refuses it anyway (see `uapi`'s server).
/// With `--map-root` the command is root of this mount namespace and could
/// unmount it; without, it has no privilege here.
fn hide_socket_dir(dir: &Path) -> Result<(), String> {
    mount(
        Some("none"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=4k,nr_inodes=2,mode=0500"),
    )
    .map_err(|e| {
        format!(
            "cannot hide {} from the command: {}",
            dir.display(),
            e.desc()
        )
    })
}

/// Enter a nested user namespace in which the caller is themselves again.
fn become_caller(uid: Uid, gid: Gid) -> Result<(), String> {
    unshare(CloneFlags::CLONE_NEWUSER)
        .map_err(|e| format!("cannot drop root in the namespace: {}", e.desc()))?;
    write_id_maps(uid.as_raw(), 0, gid.as_raw(), 0)
}

/// Map one uid and one gid into the user namespace we just made. A process may
/// map its own ids without privilege once `setgroups` is denied.
///
/// We are non-dumpable (`lifecycle::make_undumpable`), and a non-dumpable
/// process's `/proc/self` files belong to root, so we could not open these:
/// like runc's nsexec, we are dumpable for the three writes and not after.
/// That is safe: we are alone in the user namespace we just made (nothing
/// inside it exists yet that could ptrace us; only a process of our uid
/// outside could, for three writes), and after them we stay non-dumpable until
/// `execve` replaces this memory, the keys in it included, with the command's.
fn write_id_maps(
    inside_uid: u32,
    outside_uid: u32,
    inside_gid: u32,
    outside_gid: u32,
) -> Result<(), String> {
    let write = |file: &str, text: String| {
        fs::write(file, &text).map_err(|e| format!("cannot write {file} ({}): {e}", text.trim()))
    };
    let dumpable = |on: bool| {
        lifecycle::set_dumpable(on).map_err(|e| format!("cannot set PR_SET_DUMPABLE: {e}"))
    };
    dumpable(true)?;
    let written = write("/proc/self/setgroups", "deny".to_owned())
        .and_then(|()| {
            write(
                "/proc/self/uid_map",
                format!("{inside_uid} {outside_uid} 1\n"),
            )
        })
        .and_then(|()| {
            write(
                "/proc/self/gid_map",
                format!("{inside_gid} {outside_gid} 1\n"),
            )
        });
    dumpable(false)?;
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(interface_extra: &str) -> Config {
        let private = crate::keys::generate_private();
        let peer = crate::keys::public_from_private(&crate::keys::generate_private());
        Config::parse(
            &format!(
                "[Interface]\nPrivateKey = {private}\nAddress = 10.0.0.2/24\n{interface_extra}\n[Peer]\nPublicKey = {peer}\nAllowedIPs = 0.0.0.0/0\n"
            ),
            "test.conf",
        )
        .unwrap()
    }

    /// A file name that is no interface name: `wg0`, and a warning that says
    /// so and why; a good one is taken as it is.
    #[test]
    fn the_fallback_name_is_explained() {
        assert_eq!(
            ifname_from_config(Path::new("/etc/wg/vpn.conf")),
            ("vpn".to_owned(), None)
        );
        let (name, warning) = ifname_from_config(Path::new("/home/u/my-very-long-vpn-name.conf"));
        assert_eq!(name, "wg0");
        let warning = warning.expect("a warning");
        assert!(
            warning.starts_with(
                "/home/u/my-very-long-vpn-name.conf: the interface is named wg0, not after the file: "
            ),
            "{warning}"
        );
        assert!(warning.contains("--ifname"), "{warning}");
        let (name, warning) = ifname_from_config(Path::new("has space.conf"));
        assert_eq!(name, "wg0");
        assert!(warning.is_some());
    }

    /// No DNS=: one warning, naming a loopback resolver of the host's when
    /// there is one; with DNS= nothing. Hooks: one line, and no word of the
    /// attach form's --configure.
    #[test]
    fn run_says_what_it_keeps_and_ignores() {
        let resolved = "# systemd-resolved\nnameserver 127.0.0.53\noptions edns0\n";
        let warned = form_warnings(&config(""), Some(resolved));
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(
            warned[0].starts_with("no DNS= in the config: the command keeps the host's /etc/resolv.conf, whose nameserver 127.0.0.53 is the namespace's own loopback"),
            "{warned:?}"
        );
        let plain = form_warnings(&config(""), Some("nameserver 192.0.2.53\n"));
        assert_eq!(plain.len(), 1, "{plain:?}");
        assert!(plain[0].contains("127.0.0.53 would be"), "{plain:?}");
        assert!(form_warnings(&config("DNS = 10.0.0.1\n"), Some(resolved)).is_empty());

        let hooks = form_warnings(
            &config("DNS = 10.0.0.1\nPostUp = true\nPreDown = true\n"),
            None,
        );
        assert_eq!(hooks.len(), 1, "{hooks:?}");
        assert!(hooks[0].starts_with("run needs no hooks"), "{hooks:?}");
        assert!(!hooks[0].contains("--configure"), "{hooks:?}");
    }
}
