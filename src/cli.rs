//! Command-line arguments, one struct per form. The doc comments are the help text
//! (and the man pages in `doc/man/`, generated from them by `tests/man.rs`).
//!
//! Without a subcommand the arguments are the original's attach form,
//! `wireguard4netns [OPTIONS] TARGET IFNAME CONFIG`, so existing launchers keep
//! working; the subcommands are the tools around it. That makes a mistyped or
//! guessed subcommand (`wireguard4netns start wg.conf`) an attach TARGET, and
//! clap's answer ("required argument CONFIG not provided") a puzzle:
//! [`misread_subcommand`] turns it into a pointer to `run`.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

/// The usage lines: the `run` form first, the one a newcomer wants.
const USAGE: &str = "wireguard4netns run -c CONFIG [OPTIONS] -- CMD [ARGS]...
       wireguard4netns up CONFIG [--name NAME]
       wireguard4netns exec NAME|TARGET -- CMD [ARGS]...
       wireguard4netns down NAME
       wireguard4netns [OPTIONS] TARGET IFNAME CONFIG
       wireguard4netns <COMMAND>";

/// Give an unprivileged network namespace its network through a WireGuard tunnel.
///
/// `wireguard4netns run -c wg.conf -- CMD` runs CMD in new namespaces whose
/// only network is the tunnel. Without a subcommand (the attach form), it
/// creates the TUN interface IFNAME inside the network namespace of TARGET (a
/// process started with `unshare --user --map-root-user --net`, or a namespace
/// path) and runs a userspace WireGuard engine for it in the caller's own
/// namespace. No root, no setuid helper, no kernel module.
#[derive(Debug, Parser)]
#[command(
    name = "wireguard4netns",
    version,
    override_usage = USAGE,
    arg_required_else_help = true,
    disable_help_subcommand = true,
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
    /// Run a command in new namespaces whose only network is the tunnel.
    ///
    /// Makes a user, network and mount namespace, gives it the TUN interface with
    /// the config's addresses, routes, MTU and DNS servers, starts the engine,
    /// then runs CMD there with your terminal, environment and working
    /// directory. Exits with CMD's status (128+N if a signal N killed it).
    Run(RunArgs),
    /// Start a named tunnel that several commands can share.
    ///
    /// Makes the same namespaces as `run` (user, network and mount; `lo` and the
    /// tunnel only; DNS= as /etc/resolv.conf), held by a small process, starts
    /// the engine, and returns once the tunnel is up. Run commands in it with
    /// `exec NAME`, see it with `list` and `show NAME`, stop it with `down NAME`.
    Up(UpArgs),
    /// Run a command inside a named tunnel, or the namespaces of one you attached.
    ///
    /// With a NAME from `up`: runs CMD in that tunnel's namespaces as your own
    /// uid, without any capability over its network, as `run` runs its command.
    /// With a TARGET PID (or --netns-type=path): joins TARGET's user and network
    /// namespaces, and its mount namespace when it has one of its own, as
    /// `nsenter --preserve-credentials -U -n -t PID` would: your uid is what
    /// the target's user namespace maps it to (root for a target made with
    /// `unshare --map-root-user`). Either way CMD gets your environment,
    /// terminal and working directory (`/` if that does not exist there), and
    /// its status is ours (128+N if a signal N killed it).
    Exec(ExecArgs),
    /// Stop a named tunnel.
    ///
    /// Sends SIGTERM to every process still inside, and SIGKILL to those left
    /// after 5 seconds; then the holder and the engine exit and the tunnel's
    /// socket, state and lock files are removed.
    Down(DownArgs),
    /// List the named tunnels: their peers' latest handshakes and the number
    /// of processes inside.
    List(ListArgs),
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
    /// Print a shell completion script.
    ///
    /// bash: `source <(wireguard4netns completions bash)`, or save it as
    /// `~/.local/share/bash-completion/completions/wireguard4netns`; zsh: save
    /// it as `_wireguard4netns` in a directory of `$fpath`; fish: save it as
    /// `~/.config/fish/completions/wireguard4netns.fish`.
    Completions(CompletionsArgs),
    /// Print the help of wireguard4netns or of one of its subcommands.
    Help(HelpArgs),
}

/// The `completions` subcommand.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// The `help` subcommand.
#[derive(Debug, Args)]
pub struct HelpArgs {
    /// The subcommand whose help to print [default: the main help]
    #[arg(value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `--log-level` and `--log-file`, for the forms that log (the help text
/// says the form's own default level).
#[derive(Debug, Clone, Default)]
pub struct Logging {
    pub level: Option<String>,
    pub default_level: &'static str,
    pub file: Option<PathBuf>,
}

impl Cli {
    /// How this command line wants its log.
    pub fn logging(&self) -> Logging {
        match &self.command {
            None => Logging {
                level: self.attach.log_level.clone(),
                default_level: "info",
                file: self.attach.log_file.clone(),
            },
            // The command owns the terminal: only say something when it matters.
            Some(Command::Run(run)) => Logging {
                level: run.log_level.clone(),
                default_level: "warn",
                file: run.log_file.clone(),
            },
            Some(Command::Up(up)) => Logging {
                level: up.log_level.clone(),
                default_level: "warn",
                file: up.log_file.clone(),
            },
            // Likewise: `exec` speaks only to say why it failed.
            Some(Command::Exec(_) | Command::Down(_) | Command::List(_)) => Logging {
                level: None,
                default_level: "warn",
                file: None,
            },
            Some(_) => Logging {
                level: None,
                default_level: "info",
                file: None,
            },
        }
    }
}

/// `help [COMMAND…]`: the long help of the command named by the path, as
/// `COMMAND --help` prints it.
pub fn print_help(path: &[String]) -> Result<(), String> {
    let mut command = Cli::command();
    command.build();
    let mut current = &mut command;
    for name in path {
        let names: Vec<String> = current
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        current = current
            .find_subcommand_mut(name)
            .ok_or_else(|| format!("no subcommand {name:?} (there are: {})", names.join(", ")))?;
    }
    current
        .print_long_help()
        .map_err(|e| format!("cannot write the help: {e}"))
}

/// When clap could not read `args` (the whole command line, program name
/// first) and the reason is that a word meant as a subcommand was taken for
/// the attach form's TARGET (`wireguard4netns start wg.conf`), the message to
/// print instead of clap's, pointing at `run`.
pub fn misread_subcommand(args: &[OsString]) -> Option<String> {
    let matches = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(args)
        .ok()?;
    if matches.subcommand().is_some() {
        return None;
    }
    if matches
        .get_one::<NetnsType>("netns_type")
        .is_some_and(|t| *t == NetnsType::Path)
    {
        return None;
    }
    let target = matches.get_one::<String>("target")?;
    let next = matches.get_one::<String>("ifname").map(String::as_str);
    not_a_target(target, next)
}

/// The message for an attach TARGET that is no process ID and no path, but
/// looks like a subcommand (`start`, `connect`, a typo): say so and show
/// the `run` line, with the config if the next word names one. `None` for a
/// word that may well be a TARGET.
pub fn not_a_target(word: &str, next: Option<&str>) -> Option<String> {
    let looks_like_pid = !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit());
    if looks_like_pid || word.contains('/') || Path::new(word).exists() {
        return None;
    }
    let config = next
        .filter(|n| n.ends_with(".conf") || Path::new(n).is_file())
        .unwrap_or("CONFIG");
    Some(format!(
        "{word:?} is neither a subcommand nor a TARGET (a process ID, or a namespace path with --netns-type=path); to run a program through a tunnel: wireguard4netns run -c {config} -- PROGRAM (see wireguard4netns --help)"
    ))
}

/// `--threads N`: a whole number, 1 or more.
fn parse_threads(text: &str) -> Result<NonZeroUsize, String> {
    text.parse::<NonZeroUsize>().map_err(|_| {
        "the number of threads must be a whole number, 1 or more (hint: 1 encrypts on the engine's own thread; leave --threads out for one per core)".to_owned()
    })
}

/// The engine's crypto threads: `--threads`, else one per core the process
/// may run on. Asked before the engine confines itself (finding the cores
/// reads cgroup files).
pub fn engine_threads(threads: Option<NonZeroUsize>) -> NonZeroUsize {
    threads.unwrap_or_else(|| std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN))
}

/// The `run` form.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// WireGuard configuration file (wg-quick format), or a NAME for NAME.conf
    /// in $XDG_CONFIG_HOME/wireguard4netns/ (~/.config/wireguard4netns/) or
    /// /etc/wireguard/
    #[arg(short, long, value_name = "CONFIG")]
    pub config: PathBuf,

    /// Name of the interface inside [default: the config file's name, as
    /// wg-quick does, else wg0 (with a warning saying why)]
    #[arg(long, value_name = "IFNAME")]
    pub ifname: Option<String>,

    /// Directory for the UAPI socket IFNAME.sock [default: /var/run/wireguard
    /// as root, else $XDG_RUNTIME_DIR/wireguard4netns, else
    /// /tmp/wireguard4netns-UID]
    #[arg(long, visible_alias = "socket-dir", value_name = "DIR")]
    pub tmpdir: Option<PathBuf>,

    /// Publish PORT of the namespace's loopback on the host: a listener on
    /// HOSTADDR (default 127.0.0.1) port HOSTPORT whose connections reach
    /// 127.0.0.1:PORT inside (TCP unless /udp); repeatable. Inside gains no
    /// way out: the connections go host → inside only
    #[arg(long, value_name = "[HOSTADDR:]HOSTPORT:PORT[/tcp|/udp]")]
    pub publish: Vec<String>,

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

    /// Encrypt and decrypt on up to N threads (used while one falls behind),
    /// each peer's packets kept in order [default: the number of cores]; 1
    /// does it on the engine's own thread
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    pub threads: Option<NonZeroUsize>,

    /// Log level: error, warn, info, debug, trace, or a tracing filter
    /// [default: $RUST_LOG, else warn]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Append the engine's log to PATH (created 0600) instead of stderr
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,

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

/// The `up` subcommand.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// WireGuard configuration file (wg-quick format), or a NAME for NAME.conf
    /// in $XDG_CONFIG_HOME/wireguard4netns/ (~/.config/wireguard4netns/) or
    /// /etc/wireguard/
    #[arg(value_name = "CONFIG")]
    pub config: PathBuf,

    /// The tunnel's name, also its interface's and UAPI socket's [default: the
    /// config file's name, as wg-quick does]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Publish PORT of the namespace's loopback on the host: a listener on
    /// HOSTADDR (default 127.0.0.1) port HOSTPORT whose connections reach
    /// 127.0.0.1:PORT inside (TCP unless /udp); repeatable. Inside gains no
    /// way out: the connections go host → inside only
    #[arg(long, value_name = "[HOSTADDR:]HOSTPORT:PORT[/tcp|/udp]")]
    pub publish: Vec<String>,

    /// Directory for the UAPI socket NAME.sock and the tunnel's state
    /// [default: /var/run/wireguard as root, else
    /// $XDG_RUNTIME_DIR/wireguard4netns, else /tmp/wireguard4netns-UID]
    #[arg(long, visible_alias = "socket-dir", value_name = "DIR")]
    pub tmpdir: Option<PathBuf>,

    /// Do not confine the engine (seccomp, Landlock, capabilities); for
    /// debugging only, e.g. to run it under strace
    #[arg(long)]
    pub no_sandbox: bool,

    /// Encrypt and decrypt on up to N threads (used while one falls behind),
    /// each peer's packets kept in order [default: the number of cores]; 1
    /// does it on the engine's own thread
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    pub threads: Option<NonZeroUsize>,

    /// Log level: error, warn, info, debug, trace, or a tracing filter
    /// [default: $RUST_LOG, else warn]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Append the engine's log to PATH (created 0600); in the background the
    /// log otherwise goes nowhere
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
}

/// The `down` subcommand.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// Directory of the tunnel's socket and state [default: as for `up`]
    #[arg(long, visible_alias = "socket-dir", value_name = "DIR")]
    pub tmpdir: Option<PathBuf>,

    /// The tunnel's name
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// The `list` subcommand.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Directory of the tunnels' sockets and state [default: as for `up`]
    #[arg(long, visible_alias = "socket-dir", value_name = "DIR")]
    pub tmpdir: Option<PathBuf>,
}

/// The `exec` subcommand.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// With a NAME: the directory of its socket and state [default: as for `up`]
    #[arg(long, visible_alias = "socket-dir", value_name = "DIR")]
    pub tmpdir: Option<PathBuf>,

    /// What TARGET is
    #[arg(long, value_enum, default_value_t = NetnsType::Pid)]
    pub netns_type: NetnsType,

    /// With --netns-type=path: the user namespace that owns the network namespace
    /// [default: its owner, found by the kernel]
    #[arg(long, value_name = "PATH")]
    pub userns_path: Option<PathBuf>,

    /// The NAME of a tunnel started with `up`, or the PID of a process in the
    /// namespaces (the attach form's TARGET), or with --netns-type=path a
    /// network namespace path
    #[arg(value_name = "NAME|TARGET")]
    pub target: String,

    /// The command and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<std::ffi::OsString>,
}

/// The attach form: the original's command line.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Directory for the UAPI socket IFNAME.sock [default: /var/run/wireguard as
    /// root, else $XDG_RUNTIME_DIR/wireguard4netns, else /tmp/wireguard4netns-UID]
    #[arg(long, visible_alias = "socket-dir", value_name = "DIR")]
    pub tmpdir: Option<PathBuf>,

    /// Inside the namespace, bring lo and IFNAME up, add the config's Address=
    /// addresses and routes for every peer's AllowedIPs (none with Table = off)
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

    /// Encrypt and decrypt on up to N threads (used while one falls behind),
    /// each peer's packets kept in order [default: the number of cores]; 1
    /// does it on the engine's own thread
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    pub threads: Option<NonZeroUsize>,

    /// Log level: error, warn, info, debug, trace, or a tracing filter
    /// [default: $RUST_LOG, else info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Append the log to PATH (created 0600) instead of stderr; in the
    /// background (without --foreground) the log otherwise goes nowhere
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,

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

    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    /// `start wg.conf`, `connect wg.conf`: clap would say CONFIG is missing;
    /// we point at `run`, with the config the user gave. (`up` is one now.)
    #[test]
    fn a_guessed_subcommand_points_at_run() {
        for line in [
            "wireguard4netns begin wg.conf",
            "wireguard4netns start wg.conf",
            "wireguard4netns --configure connect wg.conf",
        ] {
            assert!(Cli::try_parse_from(args(line)).is_err(), "{line}");
            let hint = misread_subcommand(&args(line)).unwrap_or_else(|| panic!("{line}"));
            assert!(
                hint.contains("is neither a subcommand nor a TARGET")
                    && hint.contains("wireguard4netns run -c wg.conf -- PROGRAM"),
                "{line}: {hint}"
            );
        }
        let hint = misread_subcommand(&args("wireguard4netns start")).unwrap();
        assert!(hint.contains("run -c CONFIG --"), "{hint}");
    }

    /// A PID, a path, or `--netns-type=path`: clap's own message stands.
    #[test]
    fn a_real_target_gets_clap_s_message() {
        for line in [
            "wireguard4netns 1234 wg0",
            "wireguard4netns /run/user/1000/netns/x wg0",
            "wireguard4netns --netns-type=path app wg0",
            "wireguard4netns run",
        ] {
            assert_eq!(misread_subcommand(&args(line)), None, "{line}");
        }
        assert_eq!(not_a_target("4321", None), None);
        assert_eq!(not_a_target("./netns", None), None);
    }

    /// The usage a newcomer sees first names `run`; with no arguments at all
    /// the whole help is printed (listing every subcommand).
    #[test]
    fn usage_leads_with_run() {
        let err = Cli::try_parse_from(["wireguard4netns"]).unwrap_err();
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
        let text = err.to_string();
        assert!(
            text.contains("Usage: wireguard4netns run -c CONFIG"),
            "{text}"
        );
        assert!(text.contains("  run "), "{text}");
        let err = Cli::try_parse_from(["wireguard4netns", "1234"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("Usage: wireguard4netns run -c CONFIG"),
            "{err}"
        );
    }

    /// `help --help` is help about `help`; `help run` finds `run`; an
    /// unknown name is an error naming the ones there are.
    #[test]
    fn help_takes_help_and_names() {
        let err = Cli::try_parse_from(["wireguard4netns", "help", "--help"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
        assert!(err.to_string().contains("wireguard4netns help [COMMAND]"));
        let cli = Cli::try_parse_from(["wireguard4netns", "help", "run"]).unwrap();
        match cli.command {
            Some(Command::Help(help)) => assert_eq!(help.command, ["run"]),
            other => panic!("{other:?}"),
        }
        let err = print_help(&["nope".to_owned()]).unwrap_err();
        assert!(
            err.starts_with("no subcommand \"nope\" (there are: run, up, exec, down, list"),
            "{err}"
        );
    }

    /// `--log-level` is an option of the forms that log, each with its own
    /// default; the key tools do not have it.
    #[test]
    fn log_level_belongs_to_the_forms_that_log() {
        let help = |sub: &str| {
            let mut cmd = Cli::command();
            cmd.build();
            let sub = cmd.find_subcommand_mut(sub).unwrap();
            sub.render_long_help().to_string()
        };
        for tool in ["genkey", "genpsk", "pubkey", "completions"] {
            assert!(!help(tool).contains("--log-level"), "{tool}");
        }
        let run = help("run");
        assert!(run.contains("[default: $RUST_LOG, else warn]"), "{run}");
        let main = Cli::command().render_long_help().to_string();
        assert!(main.contains("[default: $RUST_LOG, else info]"), "{main}");
        assert!(!main.contains("for `run`"), "{main}");
        let cli = Cli::try_parse_from([
            "wireguard4netns",
            "run",
            "--log-level",
            "debug",
            "-c",
            "x",
            "--",
            "true",
        ])
        .unwrap();
        assert_eq!(cli.logging().level.as_deref(), Some("debug"));
        assert_eq!(cli.logging().default_level, "warn");
        assert!(
            Cli::try_parse_from(["wireguard4netns", "genkey", "--log-level", "debug"]).is_err()
        );
    }

    /// `--threads` on every form that starts an engine, 1 or more; anything
    /// else is a usage error naming the rule.
    #[test]
    fn threads_is_a_positive_number_on_the_engine_forms() {
        let attach = |n: &str| {
            let threads = format!("--threads={n}");
            Cli::try_parse_from(["wireguard4netns", &threads, "1234", "wg0", "wg.conf"])
        };
        assert_eq!(attach("3").unwrap().attach.threads, NonZeroUsize::new(3));
        let run = Cli::try_parse_from([
            "wireguard4netns",
            "run",
            "--threads",
            "1",
            "-c",
            "x",
            "--",
            "true",
        ]);
        match run.unwrap().command {
            Some(Command::Run(run)) => assert_eq!(run.threads, Some(NonZeroUsize::MIN)),
            other => panic!("{other:?}"),
        }
        match Cli::try_parse_from(["wireguard4netns", "up", "--threads", "2", "x"])
            .unwrap()
            .command
        {
            Some(Command::Up(up)) => assert_eq!(up.threads, NonZeroUsize::new(2)),
            other => panic!("{other:?}"),
        }
        for bad in ["0", "-1", "two", "1.5", ""] {
            let err = attach(bad).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
            assert!(err.to_string().contains("1 or more (hint:"), "{err}");
        }
        assert!(Cli::try_parse_from(["wireguard4netns", "genkey", "--threads", "2"]).is_err());
        assert_eq!(engine_threads(NonZeroUsize::new(5)).get(), 5);
        assert!(engine_threads(None).get() >= 1);
    }

    /// Every --tmpdir help names all three defaults, the last one included.
    #[test]
    fn socket_dir_fallback_is_documented() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut helps = vec![cmd.render_long_help().to_string()];
        for sub in ["run", "show", "set"] {
            helps.push(
                cmd.find_subcommand_mut(sub)
                    .unwrap()
                    .render_long_help()
                    .to_string(),
            );
        }
        for help in helps {
            assert!(help.contains("else /tmp/wireguard4netns-UID"), "{help}");
        }
    }

    #[test]
    fn exec_takes_a_target_and_a_command() {
        let cli =
            Cli::try_parse_from(["wireguard4netns", "exec", "1234", "--", "ip", "-o", "link"])
                .unwrap();
        match cli.command {
            Some(Command::Exec(exec)) => {
                assert_eq!(exec.target, "1234");
                assert_eq!(exec.netns_type, NetnsType::Pid);
                assert_eq!(exec.command, ["ip", "-o", "link"]);
            }
            other => panic!("{other:?}"),
        }
        let err = Cli::try_parse_from(["wireguard4netns", "exec", "1234"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn attach_needs_all_three_positionals() {
        let err = Cli::try_parse_from(["wireguard4netns", "1234", "wg0"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }
}
