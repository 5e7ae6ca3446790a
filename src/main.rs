//! The `wireguard4netns` binary: parse arguments, call the library, turn errors
//! into one-line messages and exit codes (1 for our failures, 2 for usage).

#![forbid(unsafe_code)]

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use wireguard4netns::attach::{self, Plan};
use wireguard4netns::cli::{Cli, Command};
use wireguard4netns::keys::{self, Key};

fn main() -> ExitCode {
    // Before anything else: the engine's endpoint resolver is this binary
    // started again by the engine (see the module).
    if let Some(code) = wireguard4netns::resolver::main_if_asked() {
        return ExitCode::from(code);
    }
    let cli = Cli::parse();
    // The engine forms, before they read any key, so that no key is ever in a
    // process that our namespaces' inhabitants may inspect (see the
    // function's comment). Not the tools: the UAPI server refuses a client it
    // cannot inspect unless it is root, and a non-dumpable `show` is one.
    let engine = matches!(cli.command, None | Some(Command::Run(_)));
    if engine && let Err(e) = wireguard4netns::lifecycle::make_undumpable() {
        eprintln!("wireguard4netns: cannot make the process non-dumpable: {e}");
        return ExitCode::FAILURE;
    }
    let default_level = match cli.command {
        // The command owns the terminal: only say something when it matters.
        Some(Command::Run(_)) => "warn",
        _ => "info",
    };
    init_logging(cli.log_level.as_deref(), default_level);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("wireguard4netns: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: Option<&str>, default_level: &str) {
    let filter = match level {
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Some(Command::Run(args)) => wireguard4netns::run::exec(&args),
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
            let plan = Plan::new(&cli.attach)?;
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
