//! `optout`: the account's opt-out list in the ledger — add, import, remove,
//! list. A phone on it is never sent by any campaign that uses this ledger
//! (its row becomes `suppressed`, `opted_out`), including a campaign already
//! running: each claim reads the list again. Phones are normalised exactly
//! as recipients are, so `0712…` with `--default-country KE` matches
//! `+254712…` in a campaign's CSV.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use phonenumber::country::Id as Country;

use super::contacts::{parse_country, parse_delimiter, phone_problem};
use super::output::out;
use convers8_campaign::ledger::phone_list::{self, PhoneListFormat};
use convers8_campaign::ledger::{Ledger, LedgerError, location};
use convers8_campaign::phone::E164;

pub const OPTOUT_EXAMPLES: &str = "\
Examples:
  convers8-campaign optout add +254712345678 0722000111 --default-country KE
  convers8-campaign optout import unsubscribed.csv --default-country KE
  convers8-campaign optout remove +254712345678
  convers8-campaign optout list --json

The list lives in the ledger: --ledger PATH, else CONVERS8_LEDGER, else
$XDG_STATE_HOME/convers8-campaign/ledger.db (~/.local/state/... without it).
A campaign with [ledger] path uses that file: pass the same path here.
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
    /// The ledger file [default: CONVERS8_LEDGER, else the per-user ledger].
    #[arg(long, value_name = "PATH")]
    ledger: Option<PathBuf>,
}

impl LedgerArgs {
    fn path(&self) -> anyhow::Result<PathBuf> {
        Ok(self
            .ledger
            .clone()
            .or_else(location::account_path)
            .ok_or(LedgerError::NoLocation)?)
    }

    fn open(&self) -> anyhow::Result<Ledger> {
        Ok(Ledger::open(&self.path()?)?)
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
    #[arg(value_name = "CSV")]
    csv: PathBuf,

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
        ledger.path().display()
    );
    Ok(ExitCode::SUCCESS)
}

fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let format = PhoneListFormat {
        phone_column: args.phone_column.clone(),
        default_country: args.default_country,
        delimiter: args.delimiter,
    };
    let phones = phone_list::read(&args.csv, &format)
        .map_err(|e| anyhow::anyhow!("{}; nothing was imported", phone_problem(&e.to_string())))?;
    let mut ledger = args.ledger.open()?;
    let added = ledger.add_opt_outs(&phones, &args.csv.display().to_string())?;
    out!(
        "imported {} phones from {}: {added} added, {} already on the list (ledger {})",
        phones.len(),
        args.csv.display(),
        phones.len() as u64 - added,
        ledger.path().display()
    );
    Ok(ExitCode::SUCCESS)
}

fn remove(args: RemoveArgs) -> anyhow::Result<ExitCode> {
    let phone = parse_phone(&args.phone, args.default_country)?;
    let mut ledger = args.ledger.open()?;
    if ledger.remove_opt_out(&phone)? {
        out!(
            "{phone} is off the opt-out list (ledger {})",
            ledger.path().display()
        );
    } else {
        out!(
            "{phone} was not on the opt-out list (ledger {})",
            ledger.path().display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let path = args.ledger.path()?;
    // Listing never creates a ledger: none yet is an empty list.
    let opt_outs = match Ledger::open_existing(&path)? {
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
