//! The attach form: put a WireGuard tunnel into the namespaces of a running
//! process (or a namespace path), the original's job.
//!
//! The order is DESIGN.md's: validate everything that can be validated without
//! touching a namespace (arguments, config, endpoint names), fork into the
//! background if asked, open the target, claim the UAPI socket (so a second
//! instance fails before it creates anything), fork the namespace helper for the
//! TUN, and only then start tokio and the engine.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ipnetwork::IpNetwork;

use crate::cli::{AttachArgs, NetnsType};
use crate::config::Config;
use crate::daemon::{self, DaemonOutcome, Daemonized, Janitor, Notifier, PidFile};
use crate::engine::Engine;
use crate::lifecycle::{self, ExitFd, NsPathWatch, PidFd, ReadyFd, StopReason};
use crate::netns::{self, Configure, Target, TunRequest};
use crate::sandbox::Sandbox;
use crate::tun::{self, TunDevice};
use crate::uapi::{self, UapiSocket};

/// Everything the attach form needs, checked.
#[derive(Debug)]
pub struct Plan {
    pub target: Target,
    pub ifname: String,
    pub config: Config,
    pub endpoints: Vec<Option<SocketAddr>>,
    pub socket_dir: PathBuf,
    pub configure: bool,
    pub foreground: bool,
    pub ready_fd: Option<ReadyFd>,
    pub exit_fd: Option<ExitFd>,
    pub pid_file: Option<PidFile>,
    pub sandbox: Sandbox,
    /// `--threads`, resolved.
    pub threads: NonZeroUsize,
    /// The `--log-file` descriptor (opened by `main`), which the daemon keeps
    /// open when it sheds what it inherited.
    pub log_fd: Option<RawFd>,
}

/// Parse a TARGET argument the way `--netns-type` says.
pub fn parse_target(
    target: &str,
    kind: NetnsType,
    userns: Option<&Path>,
) -> anyhow::Result<Target> {
    match kind {
        NetnsType::Pid => {
            if userns.is_some() {
                bail!("--userns-path only goes with --netns-type=path");
            }
            match target.parse::<i32>() {
                Ok(pid) if pid > 0 => Ok(Target::Pid(pid)),
                _ => bail!(
                    "invalid TARGET {target:?}: expected a process ID (a positive number); for a namespace path use --netns-type=path"
                ),
            }
        }
        NetnsType::Path => Ok(Target::Path {
            net: target.into(),
            user: userns.map(Path::to_path_buf),
        }),
    }
}

/// A path target with absolute paths, resolved against the current directory
/// (which the daemon leaves).
fn absolute_target(target: Target) -> anyhow::Result<Target> {
    Ok(match target {
        Target::Path { net, user } => Target::Path {
            net: std::path::absolute(&net)
                .with_context(|| format!("cannot make {} absolute", net.display()))?,
            user: user
                .map(|u| std::path::absolute(&u))
                .transpose()
                .context("cannot make --userns-path absolute")?,
        },
        pid => pid,
    })
}

/// Resolve every peer's Endpoint now, so a name that does not resolve is an
/// error at start instead of a tunnel that silently never comes up.
pub fn resolve_endpoints(config: &Config) -> anyhow::Result<Vec<Option<SocketAddr>>> {
    config
        .peers
        .iter()
        .map(|peer| peer.endpoint.as_ref().map(|e| e.resolve()).transpose())
        .collect::<Result<_, _>>()
        .map_err(Into::into)
}

/// Routes for `--configure` and `run`: every peer's AllowedIPs, none with
/// `Table = off` (as wg-quick: the addresses' own prefix routes stay, which the
/// kernel adds).
pub fn routes(config: &Config) -> Vec<IpNetwork> {
    if !config.interface.adds_routes() {
        return Vec::new();
    }
    config
        .peers
        .iter()
        .flat_map(|p| p.allowed_ips.iter().copied())
        .collect()
}

/// What the attach form does not do with a config, said once each: its
/// hooks' work, and `DNS=`, which only `run` applies (the namespace's owner
/// writes the resolv.conf of the attach target).
pub fn form_warnings(config: &Config, configure: bool) -> Vec<String> {
    let mut warnings = Vec::new();
    if config.ignored_hooks > 0 && !configure {
        warnings.push(
            "set up the target's namespace yourself (what the hooks would have done), or use --configure for addresses, routes and links".to_owned(),
        );
    }
    let iface = &config.interface;
    if !iface.dns.is_empty() || !iface.dns_search.is_empty() {
        let servers: Vec<String> = (iface.dns.iter().map(ToString::to_string))
            .chain(iface.dns_search.iter().cloned())
            .collect();
        warnings.push(format!(
            "DNS = {} is not applied: the attach form leaves the namespace's resolv.conf to whoever made it (bind-mount one there; `wireguard4netns run` applies DNS= itself)",
            servers.join(", ")
        ));
    }
    warnings
}

impl Plan {
    /// Check the arguments and read the config; touches no namespace.
    pub fn new(args: &AttachArgs) -> anyhow::Result<Self> {
        let (Some(target), Some(ifname), Some(config_path)) =
            (&args.target, &args.ifname, &args.config)
        else {
            bail!("TARGET, IFNAME and CONFIG are required");
        };
        lifecycle::check_handed_fds(&[("--ready-fd", args.ready_fd), ("--exit-fd", args.exit_fd)])?;
        // The daemon works from `/`: every path it uses later is made
        // absolute here, against the caller's directory.
        let parsed = parse_target(target, args.netns_type, args.userns_path.as_deref());
        // `wireguard4netns start wg.conf wg0` parses, as TARGET "start".
        let parsed = match (parsed, args.netns_type) {
            (Err(e), NetnsType::Pid) => Err(crate::cli::not_a_target(target, Some(ifname))
                .map_or(e, |hint| anyhow::anyhow!(hint))),
            (parsed, _) => parsed,
        };
        let target = absolute_target(parsed?)?;
        let pid_file = args
            .pid_file
            .as_deref()
            .map(|path| PidFile::check(&std::path::absolute(path)?))
            .transpose()?;
        tun::validate_ifname(ifname)?;
        let config = Config::from_file(config_path)?;
        for warning in (config.warnings.iter()).chain(&form_warnings(&config, args.configure)) {
            tracing::warn!("{}: {warning}", config_path.display());
        }
        let mtu = config.mtu();
        if mtu > tun::MAX_MTU {
            bail!(
                "{}: MTU {mtu} is larger than this engine supports ({}); lower it",
                config_path.display(),
                tun::MAX_MTU
            );
        }
        let endpoints =
            resolve_endpoints(&config).with_context(|| format!("in {}", config_path.display()))?;
        let socket_dir = std::path::absolute(args.tmpdir.clone().unwrap_or_else(uapi::default_dir))
            .context("cannot find the current directory for --tmpdir")?;
        Ok(Self {
            sandbox: Sandbox::new(!args.no_sandbox, &socket_dir, &config),
            target,
            ifname: ifname.clone(),
            config,
            endpoints,
            socket_dir,
            configure: args.configure,
            foreground: args.foreground,
            ready_fd: args
                .ready_fd
                .map(|fd| ReadyFd::take(fd, "--ready-fd"))
                .transpose()?,
            exit_fd: args
                .exit_fd
                .map(|fd| ExitFd::take(fd, "--exit-fd"))
                .transpose()?,
            pid_file,
            threads: crate::cli::engine_threads(args.threads),
            log_fd: None,
        })
    }
}

/// Run the attach form to the end. In background mode the original process
/// returns once the daemon says the tunnel is up (or why it is not); the daemon
/// returns when it stops.
pub fn exec(mut plan: Plan) -> anyhow::Result<()> {
    let mut notifier = if plan.foreground {
        Notifier::foreground()
    } else {
        let keep: Vec<_> = (plan.ready_fd.iter().map(ReadyFd::raw))
            .chain(plan.exit_fd.iter().map(ExitFd::raw))
            .chain(plan.log_fd)
            .collect();
        match daemon::daemonize(&keep).context("cannot fork into the background")? {
            Daemonized::Daemon(notifier) => notifier,
            Daemonized::Original(DaemonOutcome::Ready) => return Ok(()),
            Daemonized::Original(DaemonOutcome::Failed(msg)) => bail!("{msg}"),
        }
    };
    let fds = (plan.ready_fd.take(), plan.exit_fd.take());
    let result = prepare(&plan).and_then(|prepared| serve(&plan, prepared, fds, &mut notifier));
    if let Err(e) = &result {
        notifier.fail(&format!("{e:#}"));
    }
    result
}

/// What exists once the namespaces are done: the TUN descriptor, the claimed
/// socket, and the watch on the target (a pidfd, or its namespace path).
struct Prepared {
    tun: OwnedFd,
    socket: UapiSocket,
    pidfd: Option<PidFd>,
    path_watch: Option<NsPathWatch>,
    janitor: Janitor,
}

fn prepare(plan: &Plan) -> anyhow::Result<Prepared> {
    // For a PID target, the pidfd `open` took before the namespace files.
    let mut ns = netns::open(&plan.target)?;
    let pidfd = ns.take_pidfd();
    let path_watch = match &plan.target {
        Target::Path { net, .. } => Some(
            NsPathWatch::new(net, ns.net())
                .with_context(|| format!("cannot watch {}", net.display()))?,
        ),
        Target::Pid(_) => None,
    };
    let socket = UapiSocket::bind(&plan.socket_dir, &plan.ifname)?;
    // Forked before the TUN exists, so it never holds the interface open.
    let engine_pid = std::process::id();
    let janitor = Janitor::spawn_with(
        &socket.raw_fds(),
        || socket.remove_files(),
        || {
            if let Some(pid_file) = &plan.pid_file {
                pid_file.remove_if_ours(engine_pid);
            }
        },
    )
    .context("cannot start the cleanup process")?;
    let routes = routes(&plan.config);
    let request = TunRequest {
        ifname: &plan.ifname,
        mtu: plan.config.mtu(),
        configure: plan.configure.then_some(Configure {
            addresses: &plan.config.interface.addresses,
            routes: &routes,
        }),
    };
    let tun = netns::create_tun_in(ns, &request)?;
    // Now, while we are unconfined: the sandbox forbids opening files. The
    // TUN exists and the socket is ours; what remains (the engine's start) is
    // a failure the janitor answers by removing the file again.
    if let Some(pid_file) = &plan.pid_file {
        pid_file
            .write()
            .with_context(|| format!("cannot write the pid file {}", pid_file.path().display()))?;
    }
    Ok(Prepared {
        tun,
        socket,
        pidfd,
        path_watch,
        janitor,
    })
}

fn serve(
    plan: &Plan,
    prepared: Prepared,
    (ready_fd, exit_fd): (Option<ReadyFd>, Option<ExitFd>),
    notifier: &mut Notifier,
) -> anyhow::Result<()> {
    // The slow part (the namespaces, the TUN) is done: nobody to serve if
    // the foreground process died meanwhile.
    if notifier.abandoned() {
        bail!("the process that started us ended before the tunnel was ready; stopping");
    }
    let sidecars = plan.sandbox.before_threads()?;
    let (runtime, signals) =
        lifecycle::engine_runtime().context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        let Prepared {
            tun,
            socket,
            pidfd,
            path_watch,
            janitor,
        } = prepared;
        let mut signals = signals.watch().context("cannot watch signals")?;
        let tun = TunDevice::new(tun, plan.config.mtu())?;
        let (client, server) = gotatun::device::uapi::UapiServer::new();
        let mut engine = Engine::start(
            tun.clone(),
            &plan.config,
            &plan.endpoints,
            server,
            plan.threads,
        )
        .await?;
        crate::engine::spawn_watchers(&client, &plan.config, sidecars.resolver);
        let _uapi = uapi::serve(&socket, client, sidecars.peer_check)?;
        plan.sandbox.tunnel_up(socket.dir_fd())?;
        tracing::info!(
            "{} is up in {}; UAPI socket {}",
            plan.ifname,
            plan.target,
            socket.path().display()
        );
        // Stops (socket, TUN and all, as for any failed start) if the
        // foreground process is gone: nobody asked for the tunnel any more.
        notifier.ready()?;
        if let Some(ready) = ready_fd {
            ready.notify();
        }
        let exit_requested = async {
            match exit_fd {
                // An error polling it is treated as a request to stop.
                Some(fd) => {
                    let _ = fd.closed().await;
                }
                None => std::future::pending().await,
            }
        };

        let target_exit = async {
            match pidfd {
                Some(pidfd) => {
                    let pid = pidfd.pid();
                    // If the pidfd cannot be polled, treat it like an exit rather
                    // than running on unwatched.
                    let _ = pidfd.exited().await;
                    StopReason::TargetExited(pid)
                }
                None => std::future::pending().await,
            }
        };
        let path_gone = async {
            match &path_watch {
                Some(watch) => {
                    watch.gone().await;
                    StopReason::NamespacePathGone(watch.path().to_owned())
                }
                None => std::future::pending().await,
            }
        };
        let stopped = tokio::select! {
            // A deleted TUN also ends gotatun's TUN tasks with an error, after
            // `gone` is set: first things first.
            biased;
            () = tun.gone() => Ok(StopReason::InterfaceDeleted),
            reason = target_exit => Ok(reason),
            reason = path_gone => Ok(reason),
            () = exit_requested => Ok(StopReason::ExitFd),
            received = signals.next() => Ok(StopReason::Signal(received?.signal.as_str())),
            failure = engine.failed() => Err(failure),
        };
        if let Ok(reason) = &stopped {
            tracing::info!("stopping: {reason}");
        }
        // WireGuard has no goodbye message, so there is nothing to flush: the
        // engine ends with the process (see `abandon_runtime`).
        std::mem::forget(engine);
        drop(socket);
        janitor.dismiss();
        stopped.map(drop).map_err(Into::into)
    });
    lifecycle::abandon_runtime(runtime);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(interface_extra: &str, allowed: &str) -> Config {
        let private = crate::keys::generate_private();
        let peer = crate::keys::public_from_private(&crate::keys::generate_private());
        Config::parse(
            &format!(
                "[Interface]\nPrivateKey = {private}\nAddress = 10.0.0.2/24\n{interface_extra}\n[Peer]\nPublicKey = {peer}\nAllowedIPs = {allowed}\n"
            ),
            "test.conf",
        )
        .unwrap()
    }

    /// wg-quick adds no routes with `Table = off`: neither do `--configure`
    /// nor `run` (which use this list).
    #[test]
    fn table_off_means_no_routes() {
        let routes_of = |extra: &str| routes(&config(extra, "0.0.0.0/0, 10.1.0.0/16"));
        assert_eq!(routes_of("").len(), 2);
        assert_eq!(routes_of("Table = auto").len(), 2);
        assert!(routes_of("Table = off").is_empty());
    }

    /// Hooks: without --configure, say who does their work; with it, nothing
    /// more to say. DNS=: not applied by the attach form, said once.
    #[test]
    fn the_attach_form_says_what_it_leaves_undone() {
        let hooks = config("PostUp = ip route add 10.2.0.0/16 dev %i\n", "10.0.0.0/24");
        let plain = form_warnings(&hooks, false);
        assert_eq!(plain.len(), 1, "{plain:?}");
        assert!(plain[0].contains("or use --configure"), "{plain:?}");
        assert!(form_warnings(&hooks, true).is_empty());

        let dns = config("DNS = 10.0.0.1, example.org\n", "10.0.0.0/24");
        let warned = form_warnings(&dns, true);
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(
            warned[0].starts_with("DNS = 10.0.0.1, example.org is not applied"),
            "{warned:?}"
        );
        assert!(form_warnings(&config("", "10.0.0.0/24"), false).is_empty());
    }
}
