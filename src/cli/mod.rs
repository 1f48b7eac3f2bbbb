//! The command line: clap definitions, dispatch, and the mapping of outcomes
//! to documented exit codes. This is the only module that knows about flags;
//! each command lives in its own file and turns its flags into a checked
//! configuration before calling the engine.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use output::{LogFormat, Style};

mod common;
mod completions;
mod contacts;
pub mod exit;
mod optout;
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
mod stderr;
mod validate;

const AFTER_HELP: &str = concat!(
    "\
Examples:
  # Check a campaign, look at what it sends, rehearse it against a sandbox
  convers8-campaign validate campaigns/text/campaign.toml
  convers8-campaign preview campaigns/text/campaign.toml
  convers8-campaign run campaigns/text/campaign.toml --sandbox

  # Every command has its own examples
  convers8-campaign run --help

",
    exit::table!(),
    "

Environment: CONVERS8_API_KEY (the API key), CONVERS8_BASE_URL (overrides
the campaign's [api] base_url), RUST_LOG (log detail, e.g. RUST_LOG=debug;
handlebars stays quiet unless named, e.g. RUST_LOG=debug,handlebars=debug).

Without a terminal every log line on stderr starts with an RFC 3339 UTC
timestamp and holds no colour codes; --log-format json writes one JSON
object per line instead. The last line of a failed command is `error: ...`."
);

const CONTACTS_EXAMPLES: &str = "\
Examples:
  convers8-campaign contacts list --all
  convers8-campaign contacts get contact_20250411ABC --json
  convers8-campaign contacts create --name 'Jane Smith' --phone +254712345678
  convers8-campaign contacts import customers.csv --default-country KE

Each has its own --help. Exit codes: 0 done, 1 error (key rejected, the API
refused, bad input), 2 usage, 130 interrupted (import).";

/// Send WhatsApp campaigns through the Convers8 API: paced, checkpointed, resumable.
#[derive(Debug, Parser)]
#[command(name = "convers8-campaign", version, about, long_about = None, after_help = AFTER_HELP)]
pub struct Cli {
    /// Log lines on stderr: text (timestamped without a terminal) or json (one object per line).
    #[arg(long, global = true, value_enum, value_name = "FORMAT",
          default_value_t = LogFormat::Text, display_order = 900)]
    log_format: LogFormat,

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
    #[command(subcommand, after_help = CONTACTS_EXAMPLES)]
    Contacts(contacts::ContactsCommand),
    /// The account's opt-out list (in the ledger): add, import, remove, list.
    #[command(subcommand, after_help = optout::OPTOUT_EXAMPLES)]
    Optout(optout::OptoutCommand),
    Sandbox(sandbox::SandboxArgs),
    Completions(completions::CompletionsArgs),
}

/// The command line's definition, with every `after_help` shown verbatim.
pub fn command() -> clap::Command {
    verbatim_after_help(Cli::command())
}

/// clap re-wraps `after_help` to the terminal's width (with `wrap_help`),
/// which breaks an example across lines: a broken line pasted into a shell
/// is a different command. Text in a help template is written as it is, so
/// each command's `after_help` moves into its template, after clap's
/// default sections. (The text must hold no `{`: the template would read it
/// as a tag.) Every line of it fits 80 columns, so nothing wraps there.
fn verbatim_after_help(mut cmd: clap::Command) -> clap::Command {
    if let Some(after) = cmd.get_after_help().map(ToString::to_string) {
        cmd = cmd.help_template(format!(
            "{{before-help}}{{about-with-newline}}\n{{usage-heading}} {{usage}}\n\n{{all-args}}\n\n{after}"
        ));
    }
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|sub| sub.get_name().to_owned())
        .collect();
    for name in names {
        cmd = cmd.mut_subcommand(name, verbatim_after_help);
    }
    cmd
}

pub fn main() -> ExitCode {
    let parsed = command()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
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
    let style = output::init(cli.log_format);
    init_tracing(style);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            output::error_line(&format!("cannot start the async runtime: {err}"));
            stderr::flush(std::time::Duration::from_secs(2));
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
            Command::Optout(command) => optout::run(command).await,
            Command::Sandbox(args) => sandbox::run(args).await,
            Command::Completions(args) => completions::run(args),
        }
    });
    // Requests cut off at shutdown must not hold the process open.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    let code = match result {
        Ok(code) => code,
        Err(err) => {
            output::error_line(&one_line(&err));
            ExitCode::from(exit_code_for(&err))
        }
    };
    // The last lines should reach stderr; a stalled one must not hold the exit.
    stderr::flush(std::time::Duration::from_secs(2));
    code
}

/// The error and its causes on one line, without repeating a cause that the
/// message already contains.
pub(super) fn one_line(err: &anyhow::Error) -> String {
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

pub(super) fn exit_code_for(err: &anyhow::Error) -> u8 {
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

/// `RUST_LOG` output in the process's style: as today on a terminal; with
/// RFC 3339 timestamps and no escape codes without one; JSON objects with
/// `--log-format json`.
fn init_tracing(style: Style) {
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(stderr::MakeQueueWriter)
        .with_timer(output::Rfc3339)
        // Its default reports a failed write with `eprintln!`, which panics
        // on the same full disk or closed pipe: a log line is not worth a run.
        .log_internal_errors(false);
    // A second init (tests calling main twice) is harmless, so its error is ignored.
    let _ = match style {
        Style::Json => builder.json().try_init(),
        Style::Terminal => builder.with_target(false).try_init(),
        Style::Plain => builder.with_target(false).with_ansi(false).try_init(),
    };
}

/// `RUST_LOG`, else `warn`; handlebars (which logs every value it renders at
/// debug, CSV cells included) stays off unless `RUST_LOG` names it.
fn log_filter(rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    let directives = rust_log.filter(|s| !s.trim().is_empty()).unwrap_or("warn");
    let filter = tracing_subscriber::EnvFilter::builder().parse_lossy(directives);
    if directives.contains("handlebars") {
        filter
    } else {
        filter.add_directive(
            "handlebars=off"
                .parse()
                .unwrap_or_else(|_| tracing_subscriber::filter::LevelFilter::OFF.into()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handlebars_is_quiet_unless_named() {
        assert_eq!(log_filter(None).to_string(), "handlebars=off,warn");
        assert_eq!(
            log_filter(Some("debug")).to_string(),
            "handlebars=off,debug"
        );
        assert_eq!(
            log_filter(Some("debug,handlebars=trace")).to_string(),
            "handlebars=trace,debug"
        );
    }

    #[test]
    fn help_texts_can_go_into_templates() {
        fn walk(cmd: &clap::Command, path: &str) {
            if let Some(after) = cmd.get_after_help() {
                let text = after.to_string();
                assert!(
                    !text.contains('{') && !text.contains('}'),
                    "{path}: a brace would be read as a template tag"
                );
                for line in text.lines() {
                    assert!(
                        unicode_width::UnicodeWidthStr::width(line) <= 80,
                        "{path}: wider than 80 columns: {line}"
                    );
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        walk(&Cli::command(), "convers8-campaign");
        command().debug_assert();
    }
}
