//! `convers8-campaign send-test`: renders one row's message exactly as the
//! planner would and sends it to the operator's own phone, so they see what
//! recipients will get before the real send.
//!
//! Only the recipient changes: `to` becomes the `--to` phone; the row's name
//! and rendered content (even `{{recipient.phone}}`) stay as planned. This
//! file must not open or create the state file: a test is not that
//! recipient's send, and must never count as one or block a later `run`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use super::common::ApiArgs;
use super::output::{out, say};
use convers8_campaign::api::model::{MessageKind, SendResponse};
use convers8_campaign::api::{ApiError, Client};
use convers8_campaign::campaign::Campaign;
use convers8_campaign::engine::Stop;
use convers8_campaign::engine::call::{
    Answer, CallEvents, CallPolicy, GaveUp, call_until_answered,
};
use convers8_campaign::engine::pace::Pace;
use convers8_campaign::engine::plan::RowPlanner;
use convers8_campaign::engine::retry::BackoffPolicy;
use convers8_campaign::phone::E164;
use convers8_campaign::recipients::RecipientReader;

/// A test refused without taking effect is tried at most this many times
/// for server errors and refused connections, and as many times again for
/// rate limits: nothing was accepted, so a retry cannot send it twice. An
/// answer lost after sending is never retried.
const ATTEMPTS: u32 = 3;

const EXAMPLES: &str = "\
Examples:
  export CONVERS8_API_KEY=...

  # Row 1's message (or the first row that can be sent) to your own phone
  convers8-campaign send-test campaigns/text/campaign.toml --to +254712345678

  # Row 7's message; a national number uses the campaign's default_country
  convers8-campaign send-test campaigns/text/campaign.toml \\
      --to 0712345678 --row 7

The test is not recorded in the state file: the row is still sent by `run`.
A --to on the account's opt-out list (or the campaign's exclude files) is
refused: a test is a message too.
Exit codes: 0 sent, 1 error (bad campaign or row, bad --to, the API refused).";

/// Send one row's message to your own phone first, to see it as recipients will.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct SendTestArgs {
    /// The campaign file (TOML).
    #[arg(value_name = "CAMPAIGN")]
    campaign: PathBuf,

    /// Your phone: international (+254712345678), or national for the campaign's default_country.
    #[arg(long, value_name = "PHONE")]
    to: String,

    /// The CSV data row whose message to send, from 1 [default: the first row that can be sent].
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u64).range(1..))]
    row: Option<u64>,

    #[command(flatten)]
    api: ApiArgs,
}

/// The row chosen and the body the planner rendered for it.
#[derive(Debug)]
struct Chosen {
    row: u64,
    body: String,
}

pub async fn run(args: SendTestArgs) -> anyhow::Result<ExitCode> {
    let campaign = Campaign::load(&args.campaign)?;
    let to = E164::parse(&args.to, campaign.recipients.default_country)
        .map_err(|why| anyhow!("--to: {why}"))?;
    // A phone that must not be messaged is not messaged by a test either.
    let state = super::common::implied_state(&campaign)?;
    if let Some(why) = super::common::suppressions(&campaign, &state)?.check(to.as_str()) {
        bail!(
            "--to {to}: {}: a test is never sent to a phone that must not be messaged; test with another phone, or take it off the list first (`optout remove {to}`)",
            why.details
        );
    }
    args.api.warn_if_campaign_redirects(&campaign);
    let config = args
        .api
        .require_client_config(campaign.api.base_url.as_deref(), campaign.send.timeout)?;
    let client = Client::new(config)?;
    let kind = campaign.message.kind;
    // Streaming to a late row of a large CSV is seconds of blocking reads.
    let wanted = args.row;
    let chosen = tokio::task::spawn_blocking(move || pick_row(&campaign, wanted))
        .await
        .context("reading the recipient CSV stopped unexpectedly")??;
    let body = readdress(&chosen.body, to.as_str())?;
    let sent = send(&client, kind, body)
        .await
        .with_context(|| format!("test of row {} to {to}", chosen.row))?;
    out!(
        "sent a test of row {} to {to}: message_id {}",
        chosen.row,
        sent.message_id
    );
    Ok(ExitCode::SUCCESS)
}

/// Streams the CSV to row `wanted` (or to the first row that plans), and
/// plans only that row: the rows before it are read, not rendered.
fn pick_row(campaign: &Campaign, wanted: Option<u64>) -> anyhow::Result<Chosen> {
    let mut reader = RecipientReader::open(&campaign.recipients)?;
    let planner = RowPlanner::new(campaign, &reader)?;
    let csv = campaign.recipients.csv.display().to_string();
    while let Some(raw) = reader.next_row() {
        let raw = raw?;
        if wanted.is_some_and(|r| raw.row < r) {
            continue;
        }
        let planned = planner.plan_row(&raw);
        match (planned.outcome, wanted) {
            (Ok(body), _) => {
                return Ok(Chosen {
                    row: planned.row,
                    body,
                });
            }
            (Err(problem), Some(_)) => bail!(
                "row {} of {csv} would not be sent ({}: {}): fix the row or pick another --row",
                planned.row,
                problem.code,
                problem.details
            ),
            (Err(_), None) => {}
        }
    }
    let rows = reader.rows_read();
    match wanted {
        Some(r) if rows == 0 => bail!("--row {r}: {csv} has no data rows"),
        Some(r) => bail!("--row {r}: {csv} has {rows} data rows; pick a row from 1 to {rows}"),
        None => bail!(
            "no row of {csv} can be sent ({rows} rows read): run `convers8-campaign validate {}` to see why",
            campaign.file.display()
        ),
    }
}

/// The planned body with `to` replaced; name and content untouched.
fn readdress(body: &str, to: &str) -> anyhow::Result<String> {
    let mut value: serde_json::Value =
        serde_json::from_str(body).context("the planned message is not JSON")?;
    let fields = value
        .as_object_mut()
        .ok_or_else(|| anyhow!("the planned message is not a JSON object"))?;
    fields.insert("to".into(), serde_json::Value::String(to.to_owned()));
    Ok(value.to_string())
}

/// Sends the one test message through the engine's call helper, so it is
/// retried (or not) exactly as a campaign's message would be.
async fn send(client: &Client, kind: MessageKind, body: String) -> anyhow::Result<SendResponse> {
    let pace = Pace::new(None);
    // Nothing stops a single request early: Ctrl-C ends the process.
    let stop = Stop::new();
    let policy = CallPolicy {
        // Not the run's 100 rate-limit retries: an operator is waiting.
        rate_limit_retries: ATTEMPTS - 1,
        ..CallPolicy::new(&pace, &stop, BackoffPolicy::default(), ATTEMPTS)
    };
    let called =
        call_until_answered(&policy, &Waiting, || client.send_raw(kind, body.clone())).await;
    match called.answer {
        Answer::Answered(sent) => Ok(sent),
        Answer::Failed(failure) => {
            let error = anyhow::Error::new(failure.error);
            Err(match failure.gave_up {
                GaveUp::Rejected => error,
                GaveUp::AttemptsSpent { failures } => {
                    error.context(format!("gave up after {failures} attempts"))
                }
                GaveUp::StillRateLimited { tries } => {
                    error.context(format!("still rate limited after {tries} tries"))
                }
            })
        }
        Answer::MaybeTookEffect(error) | Answer::Refused(error) => Err(error.into()),
        Answer::NotSent { last_error } => Err(match last_error {
            Some(error) => anyhow::Error::new(error).context("not sent"),
            None => anyhow!("not sent"),
        }),
    }
}

/// Tells the operator why the command is waiting.
struct Waiting;

impl CallEvents for Waiting {
    fn on_backoff(&self, _attempts: u32, error: &ApiError, delay: Duration) {
        say!("{error}; trying again in {:.1}s", delay.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readdress_changes_only_the_recipient() {
        let body =
            r#"{"to":"+254700000001","name":"Ann","content":{"text":"Hi Ann, +254700000001"}}"#;
        let out: serde_json::Value =
            serde_json::from_str(&readdress(body, "+254799000111").unwrap()).unwrap();
        assert_eq!(out["to"], "+254799000111");
        assert_eq!(out["name"], "Ann");
        assert_eq!(out["content"]["text"], "Hi Ann, +254700000001");
        assert!(readdress("[1]", "+254799000111").is_err());
    }
}
