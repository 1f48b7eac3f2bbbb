//! `convers8-campaign validate`: checks the campaign file and every CSV row
//! without the network, and says whether the campaign can be sent.
//!
//! It plans into a scratch state in a temporary directory (the same planner
//! `run` uses, so what passes here plans the same way there) and must write
//! nothing beside the campaign (see `ScratchPlan`, which `preview` shares).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::output::plural;
use convers8_campaign::campaign::Campaign;
use convers8_campaign::engine::plan::{RowProblem, ScratchPlan};

const EXAMPLES: &str = "\
Examples:
  convers8-campaign validate campaigns/text/campaign.toml

  # In CI: fail on any invalid or duplicate row; jq reads the verdict (.ok)
  # and the counts (.valid, .invalid, .duplicate are numbers of rows)
  convers8-campaign validate campaigns/text/campaign.toml --strict --json \\
      | jq -e .ok

  # The problems, one per line
  convers8-campaign validate campaigns/text/campaign.toml --json \\
      | jq -c '.problems[]'

Exit codes: 0 the campaign can be sent, 1 it cannot (an error in the campaign
file or CSV, no valid row, or with --strict any invalid or duplicate row),
2 usage.";

/// Check the campaign file and every CSV row, without sending anything.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct ValidateArgs {
    /// The campaign file (TOML).
    #[arg(value_name = "CAMPAIGN")]
    pub campaign: PathBuf,

    /// Also fail (exit 1) when any row is invalid or a duplicate.
    #[arg(long)]
    pub strict: bool,

    /// Print the result as one JSON object (problems included) for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Verdict<'a> {
    campaign: &'a str,
    message_type: &'a str,
    csv: String,
    rows: u64,
    valid: u64,
    invalid: u64,
    duplicate: u64,
    /// Opted out on the ledger or in an exclude file: never sent (not a fault).
    suppressed: u64,
    /// The first problems (at most `plan::PROBLEMS_KEPT`).
    problems: &'a [RowProblem],
    /// Set when `[api] base_url` sends the key somewhere other than the API.
    #[serde(skip_serializing_if = "Option::is_none")]
    base_url_warning: Option<String>,
    /// Set when rows' zones were not known and `fallback_timezone` was used
    /// (a send window in each recipient's own hours).
    #[serde(skip_serializing_if = "Option::is_none")]
    timezone_warning: Option<String>,
    /// Set when the ledger shows this campaign sent from a state file other
    /// than the default one, which does not exist yet: `run` would refuse.
    #[serde(skip_serializing_if = "Option::is_none")]
    other_state_warning: Option<String>,
    /// Whether the campaign can be sent (and, with --strict, has no bad row).
    ok: bool,
    strict: bool,
}

/// A window in each recipient's own hours reads rows whose zone is unknown
/// in `fallback_timezone`: worth knowing before they are messaged at night.
fn zone_fallback_warning(campaign: &Campaign, fell_back: u64) -> Option<String> {
    let fallback = campaign.recipients.fallback_timezone?;
    if fell_back == 0 {
        return None;
    }
    let (why, fix) = match &campaign.recipients.timezone_column {
        Some(column) => (
            format!("their '{column}' cell is empty and "),
            format!("fill '{column}' with their IANA zones"),
        ),
        None => (
            String::new(),
            "set timezone_column in [recipients] to a column of IANA zones".to_owned(),
        ),
    };
    Some(format!(
        "{} will be sent in {} hours: {why}their phone's country has no single time zone ({fix})",
        plural(fell_back, "row"),
        fallback.name()
    ))
}

/// `run` refuses to plan a campaign the ledger shows sent from another state
/// file (see "No second campaign by accident"): said here first, when the
/// default state does not exist yet (a planned one is not planned again).
fn other_state_warning(campaign: &Campaign, file: &Path) -> anyhow::Result<Option<String>> {
    use convers8_campaign::ledger;
    let state = convers8_campaign::state::default_state_path(file);
    // A campaign kept in a database has no file state to warn about.
    let in_database = campaign.state.url.is_some()
        || std::env::var(super::common::STATE_URL_ENV)
            .is_ok_and(|u| convers8_campaign::state::location::is_postgres_url(&u));
    if !campaign.ledger.enabled || state.exists() || in_database {
        return Ok(None);
    }
    let here_state = convers8_campaign::state::StateLocation::File(state.clone());
    let Some(at) = ledger::location::for_campaign(campaign.ledger.path.as_deref(), &here_state)
    else {
        return Ok(None);
    };
    let Some(ledger) = ledger::open_existing(&at)? else {
        return Ok(None);
    };
    let here = convers8_campaign::engine::state_identity(&here_state);
    let others = ledger.other_state_files(&campaign.name, &here)?;
    Ok(others.first().map(|(other, count)| {
        format!(
            "the ledger {} holds {} of campaign {:?} sent from another state, {other}: `run` would refuse to plan in {}; resume with --state {other}, or plan here with --new-state-ok",
            ledger.shown(),
            plural(*count, "message"),
            campaign.name,
            state.display()
        )
    }))
}

pub async fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let campaign = Campaign::load(&args.campaign)?;
    let state = super::common::implied_state(&campaign)?;
    let suppressions = super::common::suppressions(&campaign, &state)?;
    let scratch = ScratchPlan::screened(&campaign, &suppressions, |_| {})?;
    let s = &scratch.summary;
    let bad_rows = s.invalid + s.duplicate;
    let ok = s.pending > 0 && !(args.strict && bad_rows > 0);
    let base_url_warning = campaign
        .api
        .base_url
        .as_deref()
        .filter(|base| !convers8_campaign::api::is_production(base))
        .map(|base| super::common::foreign_base_url(&campaign, base));
    let timezone_warning = zone_fallback_warning(&campaign, s.zone_fallback);
    let other_state_warning = other_state_warning(&campaign, &args.campaign)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let verdict = Verdict {
            campaign: &campaign.name,
            message_type: campaign.message.kind.as_str(),
            csv: campaign.recipients.csv.display().to_string(),
            rows: s.rows,
            valid: s.pending,
            invalid: s.invalid,
            duplicate: s.duplicate,
            suppressed: s.suppressed,
            problems: &s.problems,
            base_url_warning: base_url_warning.clone(),
            timezone_warning: timezone_warning.clone(),
            other_state_warning: other_state_warning.clone(),
            ok,
            strict: args.strict,
        };
        // A closed stdout (piped into `head`) is not worth an error.
        let _ = writeln!(out, "{}", serde_json::to_string(&verdict)?);
    } else {
        let _ = writeln!(
            out,
            "campaign {} ({} message), {}",
            campaign.name,
            campaign.message.kind,
            campaign.recipients.csv.display()
        );
        let _ = writeln!(
            out,
            "  {}: {} valid, {} invalid, {} duplicate, {} suppressed",
            plural(s.rows, "row"),
            s.pending,
            s.invalid,
            s.duplicate,
            s.suppressed
        );
        // The code says what the state would repeat ("invalid
        // invalid_phone", "duplicate duplicate"): the code alone.
        for p in &s.problems {
            let _ = writeln!(
                out,
                "  row {} (line {}): {}: {}",
                p.row, p.line, p.code, p.details
            );
        }
        for warning in [&base_url_warning, &timezone_warning, &other_state_warning]
            .into_iter()
            .flatten()
        {
            let _ = writeln!(out, "  warning: {warning}");
        }
        let unshown = (bad_rows + s.suppressed).saturating_sub(s.problems.len() as u64);
        if unshown > 0 {
            let _ = writeln!(
                out,
                "  … and {unshown} more (after a run, `report --state-filter invalid,duplicate,suppressed` lists them all)"
            );
        }
        if ok {
            let _ = writeln!(out, "ok: {} would be sent", plural(s.pending, "message"));
        }
    }
    drop(out);
    if s.pending == 0 {
        anyhow::bail!(
            "{}: no row of {} can be sent ({} invalid, {} duplicate, {} suppressed): fix the rows above",
            args.campaign.display(),
            campaign.recipients.csv.display(),
            s.invalid,
            s.duplicate,
            s.suppressed
        );
    }
    if !ok {
        // Only --strict gets here: there are sendable rows but also bad ones.
        let (rows, are, duplicates, them) = if bad_rows == 1 {
            ("1 row".to_owned(), "is", "a duplicate", "it")
        } else {
            (format!("{bad_rows} rows"), "are", "duplicates", "them")
        };
        anyhow::bail!(
            "{}: {rows} {are} invalid or {duplicates} (--strict): fix {them} or drop --strict",
            args.campaign.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
