//! The `wireguard4netns` binary: parse arguments, call the library, turn errors
//! into one-line messages and exit codes (1 for our failures, 2 for usage).

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use tracing_subscriber::EnvFilter;

use wireguard4netns::attach::{self, Plan};
use wireguard4netns::cli::{self, Cli, Command, Logging};
use wireguard4netns::keys::{self, Key};

fn main() -> ExitCode {
    // Before anything else: the engine's endpoint resolver is this binary
    // started again by the engine (see the module).
    if let Some(code) = wireguard4netns::resolver::main_if_asked() {
        return ExitCode::from(code);
    }
    // Likewise `run`'s --publish connector (see `publish`).
    if let Some(code) = wireguard4netns::publish::main_if_asked() {
        return ExitCode::from(code);
    }
    // Likewise a named tunnel's holder (see `named::holder`).
    if let Some(code) = wireguard4netns::named::holder::main_if_asked() {
        return ExitCode::from(code);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let args: Vec<_> = std::env::args_os().collect();
            if e.use_stderr()
                && let Some(hint) = cli::misread_subcommand(&args)
            {
                eprintln!("wireguard4netns: {hint}");
                return ExitCode::from(2);
            }
            e.exit()
        }
    };
    // The engine forms, before they read any key, so that no key is ever in a
    // process that our namespaces' inhabitants may inspect (see the
    // function's comment). Not the tools: the UAPI server refuses a client it
    // cannot inspect unless it is root, and a non-dumpable `show` is one.
    let engine = matches!(cli.command, None | Some(Command::Run(_) | Command::Up(_)));
    if engine && let Err(e) = wireguard4netns::lifecycle::make_undumpable() {
        eprintln!("wireguard4netns: cannot make the process non-dumpable: {e}");
        return ExitCode::FAILURE;
    }
    // Opened now, before any fork and long before the engine confines
    // itself (after which it may open no file): it only writes to it.
    let log_fd = match init_logging(&cli.logging()) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("wireguard4netns: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match run(cli, log_fd) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("wireguard4netns: {e:#}");
            ExitCode::from(wireguard4netns::exec::status_of(&e).unwrap_or(1))
        }
    }
}

/// Open `--log-file` (appending; created 0600, as the log names peers and
/// endpoints).
fn open_log_file(path: &Path) -> anyhow::Result<File> {
    File::options()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open the log file {}", path.display()))
}

/// Set up the log; returns the descriptor of `--log-file`, which the
/// background engine must keep open.
fn init_logging(logging: &Logging) -> anyhow::Result<Option<RawFd>> {
    let default_level = logging.default_level;
    let filter = match logging.level.as_deref() {
        Some(level) => EnvFilter::try_new(level),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(default_level)),
    };
    let filter = filter.unwrap_or_else(|e| {
        eprintln!("wireguard4netns: ignoring invalid log level: {e}");
        EnvFilter::new(default_level)
    });
    // netlink-packet-route warns about every attribute newer than itself.
    let filter = match "netlink_packet_route=error".parse() {
        Ok(quiet) => filter.add_directive(quiet),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match &logging.file {
        Some(path) => {
            let file = Arc::new(open_log_file(path)?);
            let fd = file.as_raw_fd();
            builder.with_writer(file).with_ansi(false).init();
            Ok(Some(fd))
        }
        None => {
            builder
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .init();
            Ok(None)
        }
    }
}

fn run(cli: Cli, log_fd: Option<RawFd>) -> anyhow::Result<u8> {
    match cli.command {
        Some(Command::Run(args)) => wireguard4netns::run::exec(&args),
        Some(Command::Exec(args)) => wireguard4netns::exec::exec(&args),
        Some(Command::Up(args)) => wireguard4netns::named::up(&args, log_fd),
        Some(Command::Down(args)) => wireguard4netns::named::down(&args),
        Some(Command::List(args)) => wireguard4netns::named::list(&args),
        Some(Command::Completions(args)) => {
            // Into a buffer first: clap_complete panics when its writer fails.
            let mut script = Vec::new();
            clap_complete::generate(
                args.shell,
                &mut Cli::command(),
                "wireguard4netns",
                &mut script,
            );
            let mut out = std::io::stdout().lock();
            out.write_all(&script)
                .and_then(|()| out.flush())
                .context("cannot write to stdout")?;
            Ok(0)
        }
        Some(Command::Help(args)) => {
            cli::print_help(&args.command).map_err(|e| anyhow::anyhow!(e))?;
            Ok(0)
        }
        Some(Command::Show(args)) => Ok(wireguard4netns::tools::show(&args).map(|()| 0)?),
        Some(Command::Set(args)) => Ok(wireguard4netns::tools::set(&args).map(|()| 0)?),
        Some(Command::Genkey) => print_secret(&keys::generate_private()).map(|()| 0),
        Some(Command::Genpsk) => print_secret(&keys::generate_preshared()).map(|()| 0),
        Some(Command::Pubkey) => {
            let mut input = String::new();
            std::io::stdin()
                .take(1024)
                .read_to_string(&mut input)
                .context("cannot read a private key from stdin")?;
            let key: Key = input
                .trim()
                .parse()
                .context("stdin does not hold a private key")?;
            print_key(&keys::public_from_private(&key)).map(|()| 0)
        }
        None => {
            let mut plan = Plan::new(&cli.attach)?;
            plan.log_fd = log_fd;
            attach::exec(plan).map(|()| 0)
        }
    }
}

/// A private or preshared key to stdout, with `wg`'s warning when that is a
/// file others can read.
fn print_secret(key: &Key) -> anyhow::Result<()> {
    if keys::stdout_exposed() {
        eprintln!("{}", keys::EXPOSED_OUTPUT_WARNING);
    }
    print_key(key)
}

fn print_key(key: &Key) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{key}")
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}
