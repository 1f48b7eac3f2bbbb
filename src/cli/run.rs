//! `convers8-campaign run`: plan if needed, then send, then say what happened
//! and how to continue — as text, or as one JSON object with `--json`. Maps
//! how the run ended (and, with `--fail-on`, what it left failed or
//! uncertain) to the documented exit codes.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::common::{ApiArgs, CampaignArgs, rerun_command};
use super::exit;
use super::output::{out, plural, say};
use super::progress;
use super::signals;
use convers8_campaign::campaign::Campaign;
use convers8_campaign::engine::{self, RunEnd, RunOptions, RunReport, Stop, StopReason};
use convers8_campaign::sandbox::{Sandbox, SandboxConfig};
use convers8_campaign::state::{Counts, StateLocation};

const EXAMPLES: &str = concat!(
    "\
Examples:
  # Rehearse against a local sandbox (no account, no key)
  convers8-campaign run campaigns/text/campaign.toml --sandbox

  # Plan and render everything, send nothing
  convers8-campaign run campaigns/text/campaign.toml --dry-run

  # A canary of 10 messages, then the rest (a rerun continues where it stopped)
  export CONVERS8_API_KEY=...
  convers8-campaign run campaigns/text/campaign.toml --limit 10
  convers8-campaign run campaigns/text/campaign.toml

  # From cron: JSON summary on stdout, timestamped log lines on stderr,
  # exit 3 when this run left failed or uncertain rows
  convers8-campaign run bf/campaign.toml --max-runtime 9m --json \\
      --fail-on failed,uncertain --api-key-file /etc/convers8.key

  # The key on stdin, the log lines as JSON for a log shipper
  pass show convers8 | convers8-campaign run bf/campaign.toml \\
      --api-key-file - --log-format json

",
    exit::table!()
);

/// Send the campaign: plan it on the first run, then send every pending row.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct RunArgs {
    #[command(flatten)]
    pub campaign: CampaignArgs,

    #[command(flatten)]
    pub api: ApiArgs,

    #[command(flatten)]
    pub summary: SummaryArgs,

    /// Plan and render every row into the state, then stop before the network.
    #[arg(long)]
    pub dry_run: bool,

    /// Send at most N more messages, then stop (a rerun continues).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,

    /// Requests in flight [default: [send] concurrency].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: Option<u64>,

    /// Messages per second for the whole run [default: [send] rate_per_second].
    #[arg(long, value_name = "RATE", value_parser = positive_rate)]
    pub rate: Option<f64>,

    /// Attempts per recipient for retryable failures [default: [send] max_attempts].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: Option<u32>,

    /// Put `uncertain` rows back to pending and send them (they may get the message twice).
    #[arg(long)]
    pub resend_uncertain: bool,

    /// The CSV changed: plan rows whose phone is not in the state yet, leave the rest.
    #[arg(long)]
    pub add_new_recipients: bool,

    /// Plan even though the ledger shows this campaign sent from another state
    /// file; phones it shows messaged are marked sent, not messaged again.
    #[arg(long)]
    pub new_state_ok: bool,

    /// Stop gracefully after this long (e.g. 50m), so a cron slot never overlaps the next.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_runtime: Option<Duration>,

    /// With a PostgreSQL state: how long this runner's rows stay its own after
    /// its last renewal (renewed every third of it) [default: [state] lease, else 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_lease)]
    pub lease: Option<Duration>,

    /// Outside the send window, wait for it to open instead of exiting 75.
    #[arg(long)]
    pub wait: bool,

    /// Send to a local sandbox started for this run instead of the API (no key needed).
    /// Its state file is <stem>.sandbox.state.db, apart from real sends.
    #[arg(long, conflicts_with_all = ["base_url", "api_key_file"])]
    pub sandbox: bool,
}

/// How `run` and `retry` report the end of a run.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SummaryArgs {
    /// Print one JSON object on stdout at the end instead of the text summary
    /// (which then goes to stderr with the log lines).
    #[arg(long)]
    pub json: bool,

    /// Exit 3 when this run left rows in these states (failed, uncertain),
    /// so cron can alert; errors (1) and interruptions (130) still win.
    #[arg(long, value_name = "STATES", value_enum, value_delimiter = ',')]
    pub fail_on: Vec<FailOn>,
}

/// A state `--fail-on` watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    /// Rows this run saw rejected for good, or out of attempts.
    Failed,
    /// Rows this run left uncertain, or found uncertain after a crash.
    Uncertain,
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "'{s}' is not a positive number of messages per second"
        )),
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration ({e}); write e.g. 90s, 50m or 2h"))
}

fn parse_lease(s: &str) -> Result<Duration, String> {
    let lease = parse_duration(s)?;
    use convers8_campaign::state::location::{MAX_LEASE, MIN_LEASE};
    if lease < MIN_LEASE {
        return Err(format!(
            "a lease of {s} is too short: at least {}s, or an ordinary pause of a busy machine loses it",
            MIN_LEASE.as_secs()
        ));
    }
    if lease > MAX_LEASE {
        return Err(format!(
            "a lease of {s} is too long: at most {}m, the longest a lost runner's rows wait to be rescued",
            MAX_LEASE.as_secs() / 60
        ));
    }
    Ok(lease)
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let state = args.campaign.state_shown(args.sandbox);
    let result = async {
        let campaign = args.campaign.load()?;
        execute(
            &campaign,
            &args.campaign,
            &args.api,
            args.sandbox,
            &args.summary,
            |options| {
                if let Some(c) = args.concurrency {
                    options.concurrency = c as usize;
                    options.claim_batch = engine::default_claim_batch(options.concurrency);
                }
                if args.rate.is_some() {
                    options.rate_per_second = args.rate;
                }
                if let Some(m) = args.max_attempts {
                    options.max_attempts = m;
                }
                options.limit = args.limit;
                options.dry_run = args.dry_run;
                if args.resend_uncertain {
                    options.reset = Some(convers8_campaign::state::RetrySelection::Uncertain);
                }
                options.add_new_recipients = args.add_new_recipients;
                options.new_state_ok = args.new_state_ok;
                options.max_runtime = args.max_runtime;
                if let Some(lease) = args.lease {
                    options.state = options.state.clone().with_lease(lease);
                }
                options.wait_for_window = args.wait;
            },
        )
        .await
    }
    .await;
    if args.summary.json
        && let Err(err) = &result
    {
        print_error_summary(&state, err);
    }
    result
}

/// Runs the engine the way `run` does — key or sandbox, signals, progress
/// bar, the closing report and its exit code — with `configure` applying the
/// caller's flags to the campaign's options. Shared with `retry`, so a retry
/// behaves exactly like a run.
pub(super) async fn execute(
    campaign: &Campaign,
    campaign_args: &CampaignArgs,
    api_args: &ApiArgs,
    use_sandbox: bool,
    summary: &SummaryArgs,
    configure: impl FnOnce(&mut RunOptions),
) -> anyhow::Result<ExitCode> {
    let state_path = campaign_args.location(Some(campaign), use_sandbox)?;
    let mut sandbox = None;
    let api = if use_sandbox {
        let key = format!("sandbox-{:016x}", rand::random::<u64>());
        let config = SandboxConfig {
            api_key: key.clone(),
            ..SandboxConfig::default()
        };
        let server = Sandbox::start(config, "127.0.0.1:0".parse()?)
            .await
            .context("cannot start the local sandbox")?;
        say!(
            "sending to a local sandbox at {} (nothing leaves this machine)",
            server.base_url()
        );
        let mut client = convers8_campaign::api::ClientConfig::new(
            server.base_url(),
            convers8_campaign::api::ApiKey::new(key, "the sandbox")?,
        );
        client.timeout = campaign.send.timeout;
        sandbox = Some(server);
        Some(client)
    } else {
        api_args.warn_if_campaign_redirects(campaign);
        api_args.client_config(campaign.api.base_url.as_deref(), campaign.send.timeout)?
    };

    let ledger = super::common::ledger_use(campaign, use_sandbox, &state_path)?;
    let mut options = RunOptions::from_campaign(campaign, state_path, api);
    options.ledger = ledger;
    configure(&mut options);

    let progress = progress::for_stderr();
    let stop = Stop::new();
    let signals = signals::stop_on_signals(
        stop.clone(),
        signals::Words {
            stopping: "letting requests in flight finish and recording them",
            quit_costs: "rows in flight then become uncertain",
        },
    );
    let result = engine::run(campaign, &options, progress.as_ref(), stop).await;
    if let Some(server) = sandbox {
        server.shutdown().await;
    }
    // Listening until the report is out: a later Ctrl-C still quits at once.
    drop(signals);
    let report = result?;
    let sandbox_flag = if use_sandbox { " --sandbox" } else { "" };
    let again = |subcommand: &str| {
        format!(
            "{}{sandbox_flag}",
            rerun_command(
                subcommand,
                &campaign_args.campaign,
                campaign_args.state.as_deref()
            )
        )
    };
    let code = exit_code(&report, &summary.fail_on);
    // A rehearsal's uncertain rows are resent by a rehearsal: `retry`
    // always sends for real.
    let resend = if use_sandbox {
        again("run --resend-uncertain")
    } else {
        again("retry --uncertain")
    };
    let text = text_report(
        &campaign.name,
        &report,
        &again("run"),
        &resend,
        &again("report --state-filter uncertain"),
    );
    if summary.json {
        // The text goes to the log (stderr); stdout holds the JSON alone.
        for line in &text {
            say!("{line}");
        }
        let json = RunSummary::new(&campaign.name, &report, code, again("run"));
        out!("{}", serde_json::to_string(&json)?);
    } else {
        for line in &text {
            out!("{line}");
        }
    }
    Ok(ExitCode::from(code))
}

/// The exit code of how the run ended alone.
pub fn end_code(end: &RunEnd) -> u8 {
    match end {
        RunEnd::Completed
        | RunEnd::NothingToDo
        | RunEnd::DryRun
        | RunEnd::LimitReached
        | RunEnd::Stopped(StopReason::MaxRuntime)
        | RunEnd::Stopped(StopReason::WindowClosed) => 0,
        RunEnd::OutsideWindow { .. } | RunEnd::DailyLimitReached { .. } => exit::TRY_LATER,
        RunEnd::Stopped(StopReason::Interrupted) => exit::INTERRUPTED,
        RunEnd::Stopped(
            StopReason::Unauthorized(_)
            | StopReason::CertificateRejected(_)
            | StopReason::Breaker(_)
            | StopReason::StateFailed(_)
            | StopReason::LeaseLost,
        ) => exit::ERROR,
    }
}

/// The exit code: how the run ended, unless `--fail-on` names a state this
/// run left rows in — which beats 75 and 0, never 1 or 130.
pub fn exit_code(report: &RunReport, fail_on: &[FailOn]) -> u8 {
    let code = end_code(&report.end);
    if code == exit::ERROR || code == exit::INTERRUPTED {
        return code;
    }
    let s = &report.snapshot;
    let hit = fail_on.iter().any(|state| match state {
        FailOn::Failed => s.failed > 0,
        FailOn::Uncertain => s.uncertain + report.recovered_uncertain > 0,
    });
    if hit { exit::ROWS_FAILED } else { code }
}

/// How a run ended: a stable word for scripts, and the sentence for people.
pub fn describe_end(end: &RunEnd) -> (&'static str, String) {
    let at = |t: &DateTime<Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string();
    let sentence = match end {
        RunEnd::Completed => "completed".to_owned(),
        RunEnd::NothingToDo => "nothing left to send".to_owned(),
        RunEnd::DryRun => "dry run: planned, nothing sent".to_owned(),
        RunEnd::LimitReached => "stopped at --limit".to_owned(),
        RunEnd::OutsideWindow { opens_at } => format!(
            "outside the send window; it opens at {} (try later, or run with --wait)",
            at(opens_at)
        ),
        RunEnd::DailyLimitReached { next_at } => match next_at {
            Some(t) => format!("daily limit reached; the next message may go at {}", at(t)),
            None => "daily limit reached".to_owned(),
        },
        RunEnd::Stopped(StopReason::Interrupted) => "interrupted".to_owned(),
        RunEnd::Stopped(StopReason::MaxRuntime) => "stopped at --max-runtime".to_owned(),
        RunEnd::Stopped(StopReason::WindowClosed) => "stopped: the send window closed".to_owned(),
        RunEnd::Stopped(StopReason::Unauthorized(e) | StopReason::CertificateRejected(e)) => {
            format!("stopped: {e}")
        }
        RunEnd::Stopped(StopReason::Breaker(e)) => format!("stopped by the circuit breaker: {e}"),
        RunEnd::Stopped(StopReason::StateFailed(e)) => {
            format!("stopped: cannot write the state: {e}")
        }
        RunEnd::Stopped(StopReason::LeaseLost) => "stopped: this runner lost its lease on the shared state (it could not renew it in time); its rows in flight are uncertain, and the other runners send the rest".to_owned(),
    };
    (end.code(), sentence)
}

/// Whether rows are left that a rerun of the same command would send.
fn unfinished(report: &RunReport) -> bool {
    report.counts.pending > 0 && !matches!(report.end, RunEnd::Completed | RunEnd::NothingToDo)
}

/// The closing summary, line by line, with the commands (as this program
/// was invoked) that continue the run, list the uncertain rows and resend them.
fn text_report(
    name: &str,
    report: &RunReport,
    resume: &str,
    resend: &str,
    list_uncertain: &str,
) -> Vec<String> {
    let c = &report.counts;
    let s = &report.snapshot;
    let mut lines = vec![format!("campaign {name}: {}", describe_end(&report.end).1)];
    if report.replanned {
        lines.push("  planned again: the inputs changed before anything was sent".to_owned());
    }
    if report.resend_selected > 0 {
        lines.push(format!(
            "  {} selected to send again in this run; those it did not reach keep their state",
            was_were(report.resend_selected, "settled row")
        ));
    }
    if s.settled() + s.released > 0 {
        lines.push(format!(
            "  this run: sent {}, failed {}, uncertain {} in {:.1}s ({:.1} msg/s; {}, {} rate-limited)",
            s.sent,
            s.failed,
            s.uncertain,
            s.elapsed.as_secs_f64(),
            s.per_second,
            plural(report.requests, "request"),
            s.rate_limited
        ));
    }
    lines.push(format!(
        "  all rows: {} = sent {} + failed {} + uncertain {} + invalid {} + duplicate {} + suppressed {} + pending {}{}",
        c.total(),
        c.sent,
        c.failed,
        c.uncertain,
        c.invalid,
        c.duplicate,
        c.suppressed,
        c.pending,
        if c.sending > 0 {
            format!(" + sending {}", c.sending)
        } else {
            String::new()
        }
    ));
    lines.push(format!("  state: {}", report.state));
    // In a state shared by several runners, rows this run left `sending`
    // are other runners' (its own cut-off rows are uncertain by now).
    if c.sending > 0 && matches!(report.state, StateLocation::Postgres(_)) {
        lines.push(format!(
            "  {} being sent by other runners of this campaign (`status` lists them)",
            plural(c.sending, "row")
        ));
    }
    if unfinished(report) {
        lines.push(format!("  to continue: {resume}"));
    }
    if c.uncertain > 0 {
        lines.push(format!(
            "  {} may have been delivered; {} never resent automatically (see `{list_uncertain}`, then `{resend}`)",
            plural(c.uncertain, "uncertain row"),
            if c.uncertain == 1 { "it is" } else { "they are" },
        ));
    }
    lines
}

/// `1 row was`, `3 rows were`.
fn was_were(n: u64, noun: &str) -> String {
    format!(
        "{} {}",
        plural(n, noun),
        if n == 1 { "was" } else { "were" }
    )
}

/// `run --json` / `retry --json`: everything a script needs, in one object.
#[derive(Debug, serde::Serialize)]
pub struct RunSummary {
    pub campaign: String,
    /// How it ended, a stable word: completed, nothing_to_do, dry_run,
    /// limit_reached, outside_window, daily_limit_reached, interrupted,
    /// max_runtime, window_closed, unauthorized, circuit_breaker,
    /// tls_rejected, state_failed, lease_lost (and, for a run that could not
    /// start, error or lock_held).
    pub end: &'static str,
    /// The same, as a sentence.
    pub message: String,
    /// The process's exit code.
    pub exit_code: u8,
    /// Every row of the state by state, after the run.
    pub counts: CountsJson,
    /// What this run did.
    pub this_run: ThisRun,
    /// When the send window opens next (`outside_window` only).
    pub window_opens_at: Option<DateTime<Utc>>,
    /// When the daily limit lets the next message go (`daily_limit_reached` only).
    pub next_daily_slot: Option<DateTime<Utc>>,
    /// The state file.
    pub state: String,
    /// Whether rows are left that `resume` would send.
    pub unfinished: bool,
    /// The command that continues (safe to run at any time).
    pub resume: String,
}

/// [`Counts`] with their total.
#[derive(Debug, serde::Serialize)]
pub struct CountsJson {
    #[serde(flatten)]
    pub counts: Counts,
    pub total: u64,
}

impl From<Counts> for CountsJson {
    fn from(counts: Counts) -> Self {
        CountsJson {
            total: counts.total(),
            counts,
        }
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct ThisRun {
    pub sent: u64,
    pub failed: u64,
    pub uncertain: u64,
    /// Rows a crashed earlier run left mid-send, marked uncertain by this one.
    pub recovered_uncertain: u64,
    /// Settled rows `retry` or `--resend-uncertain` let this run send again.
    pub resend_selected: u64,
    /// Rows this run claimed and gave back as pending when it stopped.
    pub released: u64,
    pub requests: u64,
    pub retries: u64,
    pub rate_limited: u64,
    pub elapsed_secs: f64,
    pub per_second: f64,
    /// Set when this run planned (or replanned, or added to) the campaign.
    pub planned: bool,
}

impl RunSummary {
    pub fn new(name: &str, report: &RunReport, exit_code: u8, resume: String) -> RunSummary {
        let (end, message) = describe_end(&report.end);
        let s = &report.snapshot;
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        RunSummary {
            campaign: name.to_owned(),
            end,
            message,
            exit_code,
            counts: report.counts.into(),
            this_run: ThisRun {
                sent: s.sent,
                failed: s.failed,
                uncertain: s.uncertain,
                recovered_uncertain: report.recovered_uncertain,
                resend_selected: report.resend_selected,
                released: s.released,
                requests: report.requests,
                retries: report.retries,
                rate_limited: s.rate_limited,
                elapsed_secs: round(s.elapsed.as_secs_f64()),
                per_second: round(s.per_second),
                planned: report.plan.is_some(),
            },
            window_opens_at: match report.end {
                RunEnd::OutsideWindow { opens_at } => Some(opens_at),
                _ => None,
            },
            next_daily_slot: match report.end {
                RunEnd::DailyLimitReached { next_at } => next_at,
                _ => None,
            },
            state: report.state.to_string(),
            unfinished: unfinished(report),
            resume,
        }
    }
}

/// `--json` when the run could not be carried out at all (a bad campaign
/// file, the lock held, no key): still one object on stdout, so a script
/// reading it always finds `end` and `exit_code`.
pub fn print_error_summary(state: &str, err: &anyhow::Error) {
    let code = super::exit_code_for(err);
    let value = serde_json::json!({
        "end": if code == exit::TRY_LATER { "lock_held" } else { "error" },
        "message": super::one_line(err),
        "exit_code": code,
        "state": state,
    });
    out!("{value}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use convers8_campaign::engine::Snapshot;

    fn report(end: RunEnd, failed: u64, uncertain: u64, recovered: u64) -> RunReport {
        RunReport {
            end,
            plan: None,
            recovered_uncertain: recovered,
            resend_selected: 0,
            replanned: false,
            snapshot: Snapshot {
                failed,
                uncertain,
                ..Snapshot::default()
            },
            requests: 0,
            retries: 0,
            counts: Counts::default(),
            state: convers8_campaign::state::StateLocation::File("x.state.db".into()),
        }
    }

    #[test]
    fn rows_other_runners_send_are_named_as_theirs() {
        let mut shared = report(RunEnd::Completed, 0, 0, 0);
        shared.counts.sending = 5;
        shared.state = StateLocation::parse("postgres://app@db/c", "spring");
        let lines = text_report("spring", &shared, "r", "s", "l").join("\n");
        assert!(
            lines.contains("5 rows being sent by other runners of this campaign"),
            "{lines}"
        );
        let mut file = shared.clone();
        file.state = StateLocation::File("x.state.db".into());
        let lines = text_report("spring", &file, "r", "s", "l").join("\n");
        assert!(!lines.contains("other runners"), "{lines}");
    }

    #[test]
    fn fail_on_beats_0_and_75_but_not_1_or_130() {
        let both = [FailOn::Failed, FailOn::Uncertain];
        let opens_at = Utc::now();
        // Default behaviour unchanged.
        assert_eq!(exit_code(&report(RunEnd::Completed, 3, 3, 0), &[]), 0);
        assert_eq!(
            exit_code(&report(RunEnd::Completed, 3, 0, 0), &both),
            exit::ROWS_FAILED
        );
        assert_eq!(
            exit_code(&report(RunEnd::Completed, 3, 0, 0), &[FailOn::Uncertain]),
            0
        );
        // Rows a crash left mid-send count as this run's uncertain ones.
        assert_eq!(
            exit_code(&report(RunEnd::NothingToDo, 0, 0, 2), &[FailOn::Uncertain]),
            exit::ROWS_FAILED
        );
        assert_eq!(
            exit_code(
                &report(RunEnd::DailyLimitReached { next_at: None }, 1, 0, 0),
                &both
            ),
            exit::ROWS_FAILED
        );
        assert_eq!(
            exit_code(&report(RunEnd::OutsideWindow { opens_at }, 0, 0, 0), &both),
            exit::TRY_LATER
        );
        assert_eq!(
            exit_code(
                &report(RunEnd::Stopped(StopReason::Interrupted), 1, 1, 0),
                &both
            ),
            exit::INTERRUPTED
        );
        assert_eq!(
            exit_code(
                &report(RunEnd::Stopped(StopReason::Breaker("x".into())), 20, 0, 0),
                &both
            ),
            exit::ERROR
        );
    }

    #[test]
    fn every_end_has_a_distinct_word() {
        let now = Utc::now();
        let ends = [
            RunEnd::Completed,
            RunEnd::NothingToDo,
            RunEnd::DryRun,
            RunEnd::LimitReached,
            RunEnd::OutsideWindow { opens_at: now },
            RunEnd::DailyLimitReached { next_at: None },
            RunEnd::Stopped(StopReason::Interrupted),
            RunEnd::Stopped(StopReason::MaxRuntime),
            RunEnd::Stopped(StopReason::WindowClosed),
            RunEnd::Stopped(StopReason::Unauthorized("x".into())),
            RunEnd::Stopped(StopReason::Breaker("x".into())),
            RunEnd::Stopped(StopReason::StateFailed("x".into())),
        ];
        let words: std::collections::BTreeSet<_> = ends.iter().map(|e| describe_end(e).0).collect();
        assert_eq!(words.len(), ends.len());
        assert!(!words.contains("error") && !words.contains("lock_held"));
    }
}
