//! Command-line arguments, one struct per form. The doc comments are the help text.
//!
//! Without a subcommand the arguments are the original's attach form,
//! `wireguard4netns [OPTIONS] TARGET IFNAME CONFIG`, so existing launchers keep
//! working; the subcommands are the tools around it.

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

    #[command(flatten)]
    pub attach: AttachArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a new private key (base64), like `wg genkey`.
    Genkey,
    /// Print a new preshared key (base64), like `wg genpsk`.
    Genpsk,
    /// Read a private key on stdin and print its public key, like `wg pubkey`.
    Pubkey,
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

    /// What TARGET is
    #[arg(long, value_enum, default_value_t = NetnsType::Pid)]
    pub netns_type: NetnsType,

    /// With --netns-type=path: the user namespace that owns the network namespace
    /// [default: its owner, found by the kernel]
    #[arg(long, value_name = "PATH")]
    pub userns_path: Option<PathBuf>,

    /// Log level: error, warn, info, debug, trace, or a tracing filter
    /// [default: $RUST_LOG, else info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

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
