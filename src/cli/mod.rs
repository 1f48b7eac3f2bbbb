//! The command line: clap definitions, dispatch, and the mapping of outcomes
//! to documented exit codes. This is the only module that knows about flags;
//! each command lives in its own file and turns its flags into a checked
//! configuration before calling the engine.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod sandbox;

/// Send WhatsApp campaigns through the Convers8 API: paced, checkpointed, resumable.
#[derive(Debug, Parser)]
#[command(name = "convers8-campaign", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a local Convers8 server (the sandbox) for tests and rehearsals.
    Sandbox(sandbox::SandboxArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Sandbox(args) => sandbox::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    // A second init (tests calling main twice) is harmless, so its error is ignored.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
