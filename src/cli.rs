//! Command-line arguments, one struct per form. The doc comments are the help text.
//!
//! Without a subcommand the arguments are the original's attach form,
//! `wireguard4netns [OPTIONS] TARGET IFNAME CONFIG`, so existing launchers keep
//! working; the subcommands are the tools around it.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Give an unprivileged network namespace its network through a WireGuard tunnel.
///
/// Creates the TUN interface IFNAME inside the network namespace of TARGET (a
/// process started with `unshare --user --map-root-user --net`, or a namespace
/// path) and runs a userspace WireGuard engine for it in the caller's own
/// namespace. No root, no setuid helper, no kernel module.
#[derive(Debug, Parser)]
#[command(
    name = "wireguard4netns",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Log level: error, warn, info, debug, trace, or a tracing filter
    /// [default: $RUST_LOG, else info; warn for `run`]
    #[arg(long, value_name = "LEVEL", global = true)]
    pub log_level: Option<String>,

    #[command(flatten)]
    pub attach: AttachArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in new namespaces whose only network is the tunnel.
    ///
    /// Makes a user, network and mount namespace, gives it the TUN interface with
    /// the config's addresses, routes, MTU and DNS servers, starts the engine,
    /// then runs CMD there with your terminal, environment and working
    /// directory. Exits with CMD's status (128+N if a signal N killed it).
    Run(RunArgs),
    /// Print a new private key (base64), like `wg genkey`.
    Genkey,
    /// Print a new preshared key (base64), like `wg genpsk`.
    Genpsk,
    /// Read a private key on stdin and print its public key, like `wg pubkey`.
    Pubkey,
    /// Show tunnels' configuration and state, like `wg show`.
    Show(crate::tools::ShowArgs),
    /// Change a running tunnel's configuration, like `wg set`.
    Set(crate::tools::SetArgs),
}

/// The `run` form.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// WireGuard configuration file (wg-quick format)
    #[arg(short, long, value_name = "CONFIG")]
    pub config: PathBuf,

    /// Name of the interface inside [default: the config file's name, as
    /// wg-quick does, else wg0]
    #[arg(long, value_name = "IFNAME")]
    pub ifname: Option<String>,

    /// Directory for the UAPI socket IFNAME.sock (as for the attach form)
    #[arg(long, visible_alias = "socket-dir", value_name = "DIR")]
    pub tmpdir: Option<PathBuf>,

    /// Run CMD as root inside its user namespace (like `unshare -r`), allowed to
    /// change the namespace's network; by default it runs as your own uid
    #[arg(long)]
    pub map_root: bool,

    /// Do not confine the engine (seccomp, Landlock, capabilities); for
    /// debugging only, e.g. to run it under strace
    #[arg(long)]
    pub no_sandbox: bool,

    /// Write "1" to this file descriptor once the tunnel is up, then close it
    #[arg(long, value_name = "N")]
    pub ready_fd: Option<i32>,

    /// The command and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<std::ffi::OsString>,
}

/// How TARGET names the namespace to attach to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetnsType {
    /// TARGET is a process ID; its user and network namespaces are joined.
    Pid,
    /// TARGET is the path of a network namespace (e.g. /run/user/UID/netns/NAME).
    Path,
}

/// The attach form: the original's command line.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Directory for the UAPI socket IFNAME.sock [default: /var/run/wireguard as
    /// root, else $XDG_RUNTIME_DIR/wireguard4netns]
    #[arg(long, visible_alias = "socket-dir", value_name = "DIR")]
    pub tmpdir: Option<PathBuf>,

    /// Inside the namespace, bring lo and IFNAME up, add the config's Address=
    /// addresses and routes for every peer's AllowedIPs
    #[arg(long)]
    pub configure: bool,

    /// Stay in the foreground and log to stderr (default: return once the tunnel
    /// is up and keep running in the background)
    #[arg(long)]
    pub foreground: bool,

    /// Write "1" to this file descriptor once the tunnel is up, then close it
    #[arg(long, value_name = "N")]
    pub ready_fd: Option<i32>,

    /// Stop when this file descriptor is written to or closed
    #[arg(long, value_name = "N")]
    pub exit_fd: Option<i32>,

    /// Write the engine's PID to this file once the tunnel is up (atomically);
    /// it is removed when the engine stops, however it stops
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,

    /// Do not confine the engine (seccomp, Landlock, capabilities); for
    /// debugging only, e.g. to run it under strace
    #[arg(long)]
    pub no_sandbox: bool,

    /// What TARGET is
    #[arg(long, value_enum, default_value_t = NetnsType::Pid)]
    pub netns_type: NetnsType,

    /// With --netns-type=path: the user namespace that owns the network namespace
    /// [default: its owner, found by the kernel]
    #[arg(long, value_name = "PATH")]
    pub userns_path: Option<PathBuf>,

    /// PID of a process in the target namespaces, or a namespace path
    #[arg(required = true)]
    pub target: Option<String>,

    /// Name of the TUN interface to create in the namespace (at most 15 bytes)
    #[arg(required = true)]
    pub ifname: Option<String>,

    /// WireGuard configuration file (wg-quick format)
    #[arg(required = true)]
    pub config: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn attach_form_parses_like_the_original() {
        let cli = Cli::try_parse_from([
            "wireguard4netns",
            "--tmpdir",
            "/tmp/x",
            "--configure",
            "1234",
            "wg0",
            "wg.conf",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.attach.target.as_deref(), Some("1234"));
        assert_eq!(cli.attach.ifname.as_deref(), Some("wg0"));
        assert!(cli.attach.configure);
        assert!(!cli.attach.foreground);
    }

    #[test]
    fn no_sandbox_is_off_unless_asked_for_in_both_forms() {
        let attach = |extra: &[&str]| {
            let mut args = vec!["wireguard4netns"];
            args.extend_from_slice(extra);
            args.extend(["1234", "wg0", "wg.conf"]);
            Cli::try_parse_from(args).unwrap().attach.no_sandbox
        };
        assert!(!attach(&[]));
        assert!(attach(&["--no-sandbox"]));
        let run = |extra: &[&str]| {
            let mut args = vec!["wireguard4netns", "run", "-c", "wg.conf"];
            args.extend_from_slice(extra);
            args.extend(["--", "true"]);
            match Cli::try_parse_from(args).unwrap().command {
                Some(Command::Run(run)) => run.no_sandbox,
                other => panic!("{other:?}"),
            }
        };
        assert!(!run(&[]));
        assert!(run(&["--no-sandbox"]));
    }

    #[test]
    fn subcommands_are_not_targets() {
        let cli = Cli::try_parse_from(["wireguard4netns", "genkey"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Genkey)));
    }

    #[test]
    fn attach_needs_all_three_positionals() {
        let err = Cli::try_parse_from(["wireguard4netns", "1234", "wg0"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }
}
