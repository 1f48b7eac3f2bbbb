//! The command line: clap definitions, dispatch, and the mapping of outcomes
//! to documented exit codes. This is the only module that knows about flags;
//! each command lives in its own file and turns its flags into a checked
//! configuration before calling the engine.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod common;
mod completions;
mod contacts;
pub mod exit;
mod output;
mod preview;
mod progress;
mod report;
mod retry;
mod run;
mod sandbox;
mod send_test;
mod signals;
mod status;
mod validate;

const AFTER_HELP: &str = "\
Exit codes: 0 done (also: nothing left to do), 1 error (bad input, key rejected,
circuit breaker), 2 usage, 75 try later (lock held, outside the send window,
daily limit reached), 130 interrupted.

Environment: CONVERS8_API_KEY (the API key), CONVERS8_BASE_URL (overrides the
campaign's [api] base_url), RUST_LOG (log detail, e.g. RUST_LOG=debug).";

/// Send WhatsApp campaigns through the Convers8 API: paced, checkpointed, resumable.
#[derive(Debug, Parser)]
#[command(name = "convers8-campaign", version, about, long_about = None, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Validate(validate::ValidateArgs),
    Preview(preview::PreviewArgs),
    Run(run::RunArgs),
    SendTest(send_test::SendTestArgs),
    Status(status::StatusArgs),
    Report(report::ReportArgs),
    Retry(retry::RetryArgs),
    #[command(subcommand)]
    Contacts(contacts::ContactsCommand),
    Sandbox(sandbox::SandboxArgs),
    Completions(completions::CompletionsArgs),
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `--help` and `--version` are answers, not errors; anything else is usage.
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(exit::USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            output::say!("error: cannot start the async runtime: {err}");
            return ExitCode::from(exit::ERROR);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Validate(args) => validate::run(args).await,
            Command::Preview(args) => preview::run(args).await,
            Command::Run(args) => run::run(args).await,
            Command::SendTest(args) => send_test::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Report(args) => report::run(args).await,
            Command::Retry(args) => retry::run(args).await,
            Command::Contacts(command) => contacts::run(command).await,
            Command::Sandbox(args) => sandbox::run(args).await,
            Command::Completions(args) => completions::run(args),
        }
    });
    // Requests cut off at shutdown must not hold the process open.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(err) => {
            output::say!("error: {}", one_line(&err));
            ExitCode::from(exit_code_for(&err))
        }
    }
}

/// The error and its causes on one line, without repeating a cause that the
/// message already contains.
fn one_line(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text.replace('\n', " ")
}

fn exit_code_for(err: &anyhow::Error) -> u8 {
    use convers8_campaign::engine::RunError;
    use convers8_campaign::state::{LockError, StateError};
    let held = err.chain().any(|cause| {
        cause
            .downcast_ref::<LockError>()
            .is_some_and(LockError::is_held)
            || matches!(
                cause.downcast_ref::<StateError>(),
                Some(StateError::Lock(lock)) if lock.is_held()
            )
            || matches!(
                cause.downcast_ref::<RunError>(),
                Some(RunError::Locked(lock)) if lock.is_held()
            )
    });
    if held { exit::TRY_LATER } else { exit::ERROR }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    // A second init (tests calling main twice) is harmless, so its error is ignored.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // Its default reports a failed write with `eprintln!`, which panics
        // on the same full disk or closed pipe: a log line is not worth a run.
        .log_internal_errors(false)
        .try_init();
}
