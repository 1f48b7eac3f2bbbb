//! `optout`: the account's opt-out list in the ledger — add, import, remove,
//! list. A phone on it is never sent by any campaign that uses this ledger
//! (its row becomes `suppressed`, `opted_out`), including a campaign already
//! running: each claim reads the list again. Phones are normalised exactly
//! as recipients are, so `0712…` with `--default-country KE` matches
//! `+254712…` in a campaign's CSV.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use phonenumber::country::Id as Country;

use super::contacts::{parse_country, parse_delimiter, phone_problem};
use super::output::out;
use convers8_campaign::ledger::phone_list::{self, PhoneListFormat};
use convers8_campaign::ledger::{self, Ledger, LedgerError, LedgerLocation, location};
use convers8_campaign::phone::E164;

pub const OPTOUT_EXAMPLES: &str = "\
Examples:
  convers8-campaign optout add +254712345678 0722000111 --default-country KE
  convers8-campaign optout import unsubscribed.csv --default-country KE
  convers8-campaign optout remove +254712345678
  convers8-campaign optout list --json

The list lives in the ledger: --ledger PATH|URL, else CONVERS8_LEDGER, else
the database of CONVERS8_STATE_URL, else
$XDG_STATE_HOME/convers8-campaign/ledger.db (~/.local/state/... without it).
A campaign with [ledger] path uses that file: pass the same path here. A
campaign kept in PostgreSQL (--state postgres://...) uses the ledger in that
database unless a file is named: pass the same URL as --ledger. Copy a
ledger file's list into it with: optout import --from-ledger FILE --ledger URL
A rehearsal (run --sandbox) has its own ledger beside its state,
<stem>.sandbox.ledger.db. Exit codes: 0 done, 1 error, 2 usage.";

#[derive(Debug, clap::Subcommand)]
pub enum OptoutCommand {
    /// Put phones on the opt-out list.
    Add(AddArgs),
    /// Put every phone of a CSV (a header row with a phone column) on the list.
    Import(ImportArgs),
    /// Take a phone off the list (campaigns may message it again).
    Remove(RemoveArgs),
    /// Print the list, by phone.
    List(ListArgs),
}

/// Which ledger.
#[derive(Debug, Clone, clap::Args)]
pub struct LedgerArgs {
    /// The ledger: a file, or a postgres:// URL of a database's ledger
    /// [default: CONVERS8_LEDGER, else the database of CONVERS8_STATE_URL,
    /// else the per-user ledger file].
    #[arg(long, value_name = "PATH|URL")]
    ledger: Option<OsString>,
}

impl LedgerArgs {
    /// `--ledger`, else `CONVERS8_LEDGER`, else the database of
    /// `CONVERS8_STATE_URL` (where campaigns kept in it record), else the
    /// per-user file.
    fn location(&self) -> anyhow::Result<LedgerLocation> {
        let state_database = || {
            std::env::var(super::common::STATE_URL_ENV)
                .ok()
                .filter(|url| convers8_campaign::state::location::is_postgres_url(url))
                .map(|url| LedgerLocation::parse(std::ffi::OsStr::new(&url)))
        };
        Ok(self
            .ledger
            .as_deref()
            .map(LedgerLocation::parse)
            .or_else(location::from_env)
            .or_else(state_database)
            .or_else(location::account)
            .ok_or(LedgerError::NoLocation)?)
    }

    fn open(&self) -> anyhow::Result<Ledger> {
        Ok(ledger::open(&self.location()?)?)
    }
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Phone numbers: international (+254712345678), or national with --default-country.
    #[arg(value_name = "PHONE", required = true)]
    phones: Vec<String>,

    /// ISO 3166-1 alpha-2 country of numbers written without + (e.g. KE).
    #[arg(long, value_name = "CC", value_parser = parse_country)]
    default_country: Option<Country>,

    #[command(flatten)]
    ledger: LedgerArgs,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The CSV: a header row, then one phone a row (other columns are ignored).
    #[arg(value_name = "CSV", required_unless_present = "from_ledger")]
    csv: Option<PathBuf>,

    /// Copy the opt-out list of this ledger file instead of reading a CSV
    /// (each phone keeps its date and source only in the ledger it came from).
    #[arg(long, value_name = "FILE", conflicts_with = "csv")]
    from_ledger: Option<PathBuf>,

    /// The column holding the phone number.
    #[arg(long, value_name = "COLUMN", default_value = "phone")]
    phone_column: String,

    /// ISO 3166-1 alpha-2 country of numbers written without + (e.g. KE).
    #[arg(long, value_name = "CC", value_parser = parse_country)]
    default_country: Option<Country>,

    /// The field separator: one ASCII character, or \t for tabs.
    #[arg(long, value_name = "CHAR", default_value = ",", value_parser = parse_delimiter)]
    delimiter: u8,

    #[command(flatten)]
    ledger: LedgerArgs,
}

#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// The phone number to take off the list.
    #[arg(value_name = "PHONE")]
    phone: String,

    /// ISO 3166-1 alpha-2 country of numbers written without + (e.g. KE).
    #[arg(long, value_name = "CC", value_parser = parse_country)]
    default_country: Option<Country>,

    #[command(flatten)]
    ledger: LedgerArgs,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// One JSON object per line: {"phone", "added_at", "source"}.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    ledger: LedgerArgs,
}

pub async fn run(command: OptoutCommand) -> anyhow::Result<ExitCode> {
    match command {
        OptoutCommand::Add(args) => add(args),
        OptoutCommand::Import(args) => import(args),
        OptoutCommand::Remove(args) => remove(args),
        OptoutCommand::List(args) => list(args),
    }
}

/// One phone from the command line, or a one-line error naming it.
fn parse_phone(raw: &str, country: Option<Country>) -> anyhow::Result<E164> {
    E164::parse(raw, country).map_err(|why| {
        anyhow::anyhow!(
            "'{raw}' is not a phone number: {}",
            phone_problem(&why.to_string())
        )
    })
}

fn add(args: AddArgs) -> anyhow::Result<ExitCode> {
    // Every phone is checked before any is written: all or none.
    let phones = args
        .phones
        .iter()
        .map(|p| parse_phone(p, args.default_country))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("nothing was added")?;
    let mut ledger = args.ledger.open()?;
    let added = ledger.add_opt_outs(&phones, "cli")?;
    out!(
        "opted out: {added} added, {} already on the list (ledger {})",
        phones.len() as u64 - added,
        ledger.shown()
    );
    Ok(ExitCode::SUCCESS)
}

fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let (phones, from) = match (&args.from_ledger, &args.csv) {
        (Some(file), _) => (ledger_opt_outs(file)?, file),
        (None, Some(csv)) => {
            let format = PhoneListFormat {
                phone_column: args.phone_column.clone(),
                default_country: args.default_country,
                delimiter: args.delimiter,
            };
            let phones = phone_list::read(csv, &format).map_err(|e| {
                anyhow::anyhow!("{}; nothing was imported", phone_problem(&e.to_string()))
            })?;
            (phones, csv)
        }
        (None, None) => anyhow::bail!("name a CSV, or a ledger file with --from-ledger"),
    };
    let mut ledger = args.ledger.open()?;
    let added = ledger.add_opt_outs(&phones, &from.display().to_string())?;
    out!(
        "imported {} phones from {}: {added} added, {} already on the list (ledger {})",
        phones.len(),
        from.display(),
        phones.len() as u64 - added,
        ledger.shown()
    );
    Ok(ExitCode::SUCCESS)
}

/// The opt-out list of a ledger file, read without changing it.
fn ledger_opt_outs(file: &std::path::Path) -> anyhow::Result<Vec<E164>> {
    let Some(source) = ledger::open_existing(&LedgerLocation::File(file.to_owned()))? else {
        anyhow::bail!(
            "--from-ledger {}: no such ledger file; nothing was imported",
            file.display()
        );
    };
    source
        .opt_outs()?
        .into_iter()
        .map(|o| {
            E164::parse(&o.phone, None).map_err(|why| {
                anyhow::anyhow!(
                    "the ledger {} lists '{}', which is not a phone number ({why}); nothing was imported",
                    file.display(),
                    o.phone
                )
            })
        })
        .collect()
}

fn remove(args: RemoveArgs) -> anyhow::Result<ExitCode> {
    let phone = parse_phone(&args.phone, args.default_country)?;
    let mut ledger = args.ledger.open()?;
    if ledger.remove_opt_out(&phone)? {
        out!(
            "{phone} is off the opt-out list (ledger {})",
            ledger.shown()
        );
    } else {
        out!(
            "{phone} was not on the opt-out list (ledger {})",
            ledger.shown()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let at = args.ledger.location()?;
    // Listing never creates a ledger: none yet is an empty list.
    let opt_outs = match ledger::open_existing(&at)? {
        Some(ledger) => ledger.opt_outs()?,
        None => Vec::new(),
    };
    let mut out = std::io::stdout().lock();
    for o in &opt_outs {
        let line = if args.json {
            serde_json::to_string(o)?
        } else {
            format!("{}  {}  {}", o.phone, o.added_at, o.source)
        };
        // A closed pipe (`| head`) ends the listing quietly.
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}
