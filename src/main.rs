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
    let cli = Cli::parse();
    let log_level = cli.attach.log_level.clone();
    init_logging(log_level.as_deref());
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wireguard4netns: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: Option<&str>) {
    let filter = match level {
        Some(level) => EnvFilter::try_new(level),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    };
    let filter = filter.unwrap_or_else(|e| {
        eprintln!("wireguard4netns: ignoring invalid log level: {e}");
        EnvFilter::new("info")
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

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Genkey) => print_key(&keys::generate_private()),
        Some(Command::Genpsk) => print_key(&keys::generate_preshared()),
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
            print_key(&keys::public_from_private(&key))
        }
        None => {
            let plan = Plan::new(&cli.attach)?;
            attach::exec(plan)
        }
    }
}

fn print_key(key: &Key) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{key}")
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}
