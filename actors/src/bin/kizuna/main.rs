//! `kizuna`: the Kizuna command-line program.
//!
//! One file per command (`id.rs`, `node.rs`, `ping.rs`, `perf.rs`, `send.rs`, `demo.rs`,
//! `relay.rs`, `nat.rs`);
//! `args.rs` holds the argument types and parsers shared by several commands, `client.rs`
//! starting a client node and connecting, `output.rs` the JSON and human output helpers.
//!
//! Exit codes: 0 success, 1 failure (connection, transfer, verification), 2 bad arguments
//! (including an unparsable ticket or a ticket without an address for the chosen transport).

mod args;
mod client;
mod demo;
mod id;
mod nat;
mod node;
mod output;
mod perf;
mod ping;
mod relay;
mod send;
mod signals;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Kizuna: peer-to-peer connections that work whatever the network in between.
///
/// Start `kizuna node` on one machine; it prints a ticket on its first line of output.
/// Pass that ticket to `kizuna ping`, `kizuna perf` or `kizuna send` on another.
/// `kizuna demo` runs everything in one process on loopback.
///
/// Logs go to stderr, filtered by RUST_LOG (default `warn`, `info` for `node`).
/// Exit codes: 0 success, 1 failure, 2 bad arguments or ticket.
#[derive(Debug, Parser)]
#[command(name = "kizuna", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Id(id::IdArgs),
    Node(node::NodeArgs),
    Ping(ping::PingArgs),
    Perf(perf::PerfArgs),
    Send(send::SendArgs),
    Demo(demo::DemoArgs),
    Relay(Box<relay::RelayArgs>),
    Nat(nat::NatArgs),
}

/// A command's failure: what to tell the user and which exit code to use.
#[derive(Debug)]
pub(crate) enum CliError {
    /// Bad arguments: exit code 2.
    Usage(String),
    /// The command failed: exit code 1.
    Failed(String),
}

impl CliError {
    fn code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Failed(_) => 1,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Failed(m) => f.write_str(m),
        }
    }
}

impl From<kizuna_actors::services::ServiceError> for CliError {
    fn from(e: kizuna_actors::services::ServiceError) -> Self {
        CliError::Failed(e.to_string())
    }
}

impl From<kizuna_actors::NodeError> for CliError {
    fn from(e: kizuna_actors::NodeError) -> Self {
        CliError::Failed(e.to_string())
    }
}

impl From<actix::MailboxError> for CliError {
    fn from(e: actix::MailboxError) -> Self {
        CliError::Failed(format!("node stopped unexpectedly: {e}"))
    }
}

/// Result of a command.
pub(crate) type CliResult = Result<(), CliError>;

fn init_tracing(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(if matches!(cli.command, Command::Node(_) | Command::Relay(_)) { "info" } else { "warn" });
    let result = match cli.command {
        Command::Id(a) => id::run(a),
        Command::Node(a) => actix::System::new().block_on(node::run(a)),
        Command::Ping(a) => actix::System::new().block_on(ping::run(a)),
        Command::Perf(a) => actix::System::new().block_on(perf::run(a)),
        Command::Send(a) => actix::System::new().block_on(send::run(a)),
        Command::Demo(a) => actix::System::new().block_on(demo::run(a)),
        Command::Relay(a) => relay::run(*a),
        Command::Nat(a) => actix::System::new().block_on(nat::run(a)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let hint =
                if matches!(e, CliError::Usage(_)) { "\n\nFor more information, try '--help'." } else { "" };
            eprintln!("error: {e}{hint}");
            ExitCode::from(e.code())
        }
    }
}
