//! `convers8-campaign contacts`: the guide's contacts endpoints — `list`,
//! `get`, `create` — and `import`, which creates one contact per CSV row with
//! the campaign's phone normalisation and a bounded number of requests in flight.
//!
//! This file owns the flags, the table and JSON output, and the import loop:
//! dedupe within the file, rate-limit retries under one shared pace, and one
//! outcome per row. It must not read a campaign or touch a state file, and it
//! never prints the API key: every message comes from the server's answer or
//! the request's URL, never from the key.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use phonenumber::country::Id as Country;
use serde::Serialize;
use tokio::task::JoinSet;
use unicode_width::UnicodeWidthStr;

use super::common::ApiArgs;
use super::exit;
use super::output::say;
use convers8_campaign::api::model::{Contact, ContactsPage, NewContact};
use convers8_campaign::api::{ApiError, Client, Disposition};
use convers8_campaign::campaign::RecipientsSpec;
use convers8_campaign::engine::pace::Pace;
use convers8_campaign::engine::retry::BackoffPolicy;
use convers8_campaign::recipients::{RecipientReader, RecipientsError, normalize_phone};

/// Per request, from connect to the last byte: the campaign default.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per imported row for failures known to be safe to retry
/// (rate limited, 5xx, connection refused before sending).
const IMPORT_ATTEMPTS: u32 = 5;
/// The widest a name may print in the table; longer ones end in `…`.
const NAME_COLUMN_MAX: usize = 40;

const LIST_EXAMPLES: &str = "\
Examples:
  convers8-campaign contacts list
  convers8-campaign contacts list --page 2 --per-page 50
  convers8-campaign contacts list --all --json \\
      | jq -r '.contacts[].phone_number'

Exit codes: 0 listed, 1 error (key rejected, the API refused), 2 usage.";

const GET_EXAMPLES: &str = "\
Examples:
  convers8-campaign contacts get contact_20250411ABC
  convers8-campaign contacts get contact_20250411ABC --json

An unknown id prints \"contact 'ID' not found\" and exits 1.
Exit codes: 0 shown, 1 error (not found, key rejected), 2 usage.";

const CREATE_EXAMPLES: &str = "\
Examples:
  convers8-campaign contacts create --name 'Jane Smith' --phone +254712345678
  convers8-campaign contacts create --name 'Wanjiru Kamau' \\
      --phone '0712 345 678' --default-country KE

The phone is checked and sent in international (E.164) form; a number the
campaign planner would refuse is refused here, before any request.
Exit codes: 0 created, 1 error (bad phone, key rejected, the API refused),
2 usage.";

const IMPORT_EXAMPLES: &str = "\
Examples:
  convers8-campaign contacts import customers.csv --default-country KE
  convers8-campaign contacts import export.csv --phone-column Mobile \\
      --name-column 'Full name' --delimiter ';' --concurrency 8
  convers8-campaign contacts import customers.csv --json > import-results.jsonl

Prints a line per row that was not created (invalid phone, no name, duplicate
phone within the file, rejected by the API) and a final summary
\"created X, invalid Y, duplicate Z, failed W\". With --json, one JSON object
per row goes to stdout and the summary to stderr. Rate-limited rows wait
(honouring Retry-After) and are tried again, up to 5 attempts.

Exit codes: 0 every row was created or skipped as invalid/duplicate; 1 some
row failed at the API, or the key was rejected (the import stops at once),
or the file cannot be read; 130 interrupted (rows in flight finish first).
Importing the same file twice creates the contacts twice: the API does not
deduplicate.";

/// Manage the contacts of your Convers8 account.
#[derive(Debug, clap::Subcommand)]
pub enum ContactsCommand {
    /// List contacts as a table (or JSON), one page or all of them.
    List(ListArgs),
    /// Show one contact by its id.
    Get(GetArgs),
    /// Create one contact.
    Create(CreateArgs),
    /// Create a contact for each row of a CSV file.
    Import(ImportArgs),
}

#[derive(Debug, clap::Args)]
#[command(after_help = LIST_EXAMPLES)]
pub struct ListArgs {
    /// The page to show, from 1.
    #[arg(long, value_name = "N", default_value_t = 1, conflicts_with = "all",
          value_parser = clap::value_parser!(u64).range(1..=2_147_483_647))]
    page: u64,

    /// Contacts per page (at most 100).
    #[arg(long, value_name = "N", default_value_t = 10, conflicts_with = "all",
          value_parser = clap::value_parser!(u64).range(1..=100))]
    per_page: u64,

    /// Follow every page and list all contacts.
    #[arg(long)]
    all: bool,

    /// Print JSON for scripts: {"contacts": [...], "pagination": {...}}
    /// (no pagination with --all).
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, clap::Args)]
#[command(after_help = GET_EXAMPLES)]
pub struct GetArgs {
    /// The contact's id, as `contacts list` shows it.
    #[arg(value_name = "ID")]
    id: String,

    /// Print the contact as JSON.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, clap::Args)]
#[command(after_help = CREATE_EXAMPLES)]
pub struct CreateArgs {
    /// The contact's display name.
    #[arg(long, value_name = "NAME")]
    name: String,

    /// The phone number: international (+254712345678), or national with --default-country.
    #[arg(long, value_name = "PHONE")]
    phone: String,

    /// ISO 3166-1 alpha-2 country of numbers written without + (e.g. KE).
    #[arg(long, value_name = "CC", value_parser = parse_country)]
    default_country: Option<Country>,

    /// Print the created contact as JSON.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, clap::Args)]
#[command(after_help = IMPORT_EXAMPLES)]
pub struct ImportArgs {
    /// The CSV file: a header row, then one contact per row.
    #[arg(value_name = "CSV")]
    csv: PathBuf,

    /// The column holding the phone number (matched ignoring case if not exact).
    #[arg(long, value_name = "COLUMN", default_value = "phone")]
    phone_column: String,

    /// The column holding the contact's name.
    #[arg(long, value_name = "COLUMN", default_value = "name")]
    name_column: String,

    /// ISO 3166-1 alpha-2 country of numbers written without + (e.g. KE).
    #[arg(long, value_name = "CC", value_parser = parse_country)]
    default_country: Option<Country>,

    /// The field separator: one ASCII character, or \t for tabs.
    #[arg(long, value_name = "CHAR", default_value = ",", value_parser = parse_delimiter)]
    delimiter: u8,

    /// Requests in flight at once.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    concurrency: u64,

    /// Print one JSON object per row to stdout (the summary goes to stderr).
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    api: ApiArgs,
}

pub async fn run(command: ContactsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ContactsCommand::List(args) => list(args).await,
        ContactsCommand::Get(args) => get(args).await,
        ContactsCommand::Create(args) => create(args).await,
        ContactsCommand::Import(args) => import(args).await,
    }
}

fn parse_country(s: &str) -> Result<Country, String> {
    let upper = s.trim().to_ascii_uppercase();
    // `Id::from_str` also knows a few non-country codes; only two letters are countries.
    let two_letters = upper.len() == 2 && upper.bytes().all(|b| b.is_ascii_alphabetic());
    two_letters
        .then(|| Country::from_str(&upper).ok())
        .flatten()
        .ok_or_else(|| format!("unknown country '{s}': use an ISO 3166-1 alpha-2 code such as KE"))
}

fn parse_delimiter(s: &str) -> Result<u8, String> {
    if s == "\\t" || s.eq_ignore_ascii_case("tab") {
        return Ok(b'\t');
    }
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii() && !matches!(c, '"' | '\n' | '\r') => Ok(c as u8),
        _ => Err(format!(
            "'{s}' is not one ASCII character such as ',' or ';' (write \\t for tabs)"
        )),
    }
}

fn client(api: &ApiArgs) -> anyhow::Result<Client> {
    let config = api.require_client_config(None, TIMEOUT)?;
    Ok(Client::new(config)?)
}

/// `normalize_phone` speaks to campaign files ("set default_country"); here
/// the same advice is a flag.
fn phone_problem(why: &str) -> String {
    why.replace("set default_country", "pass --default-country")
}

/// Writes to stdout, treating a closed pipe (`| head`) as a normal end.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

// ---------------------------------------------------------------- list

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args.api)?;
    let page = if args.all {
        let contacts = client
            .list_contacts()
            .await
            .context("cannot list contacts")?;
        ContactsPage {
            contacts,
            pagination: None,
        }
    } else {
        client
            .list_contacts_page(args.page, args.per_page)
            .await
            .with_context(|| format!("cannot list contacts (page {})", args.page))?
    };
    if args.json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&page)?));
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = table(&page.contacts);
    text.push_str(&footer(&page, args.page));
    text.push('\n');
    emit(&text);
    Ok(ExitCode::SUCCESS)
}

fn footer(page: &ContactsPage, asked_page: u64) -> String {
    let count = |n: u64| format!("{n} contact{}", if n == 1 { "" } else { "s" });
    match page.pagination {
        Some(p) if p.total == 0 => "no contacts".to_owned(),
        Some(p) if page.contacts.is_empty() => format!(
            "page {} is past the end: there {} {} ({})",
            p.page,
            if p.total_pages == 1 { "is" } else { "are" },
            if p.total_pages == 1 {
                "1 page".to_owned()
            } else {
                format!("{} pages", p.total_pages)
            },
            count(p.total)
        ),
        Some(p) => format!("page {} of {} ({})", p.page, p.total_pages, count(p.total)),
        // `--all`, or a server answering the reference's bare array (no pagination).
        None if page.contacts.is_empty() => "no contacts".to_owned(),
        None if asked_page > 1 => format!(
            "{} (the server gave no page count)",
            count(page.contacts.len() as u64)
        ),
        None => count(page.contacts.len() as u64),
    }
}

/// An aligned table of contacts. Widths are terminal columns, so CJK names
/// (two columns a character) line up with Latin ones.
fn table(contacts: &[Contact]) -> String {
    if contacts.is_empty() {
        return String::new();
    }
    let header = ["ID", "NAME", "PHONE", "CREATED"];
    let rows: Vec<[String; 4]> = contacts
        .iter()
        .map(|c| {
            [
                printable(&c.id),
                clip_to_width(&printable(&c.name), NAME_COLUMN_MAX),
                printable(&c.phone_number),
                c.created_at.as_deref().map(printable).unwrap_or_default(),
            ]
        })
        .collect();
    let mut widths = header.map(UnicodeWidthStr::width);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.width());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 4]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            text.push_str(cell);
            if i + 1 < cells.len() {
                text.push_str(&" ".repeat(w - cell.width() + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header);
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3]]);
    }
    out
}

/// Server text with control characters replaced, so a contact's name cannot
/// move the cursor or recolour the terminal.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn clip_to_width(s: &str, max: usize) -> String {
    if s.width() <= max {
        return s.to_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if used + w + 1 > max {
            break;
        }
        used += w;
        out.push(c);
    }
    out.push('…');
    out
}

// ---------------------------------------------------------------- get

async fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args.api)?;
    let contact = match client.get_contact(&args.id).await {
        Ok(contact) => contact,
        Err(ApiError::NotFound { .. }) => bail!(
            "contact '{}' not found (`convers8-campaign contacts list --all` shows every id)",
            printable(&args.id)
        ),
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("cannot get contact '{}'", printable(&args.id))));
        }
    };
    print_contact(&contact, args.json)?;
    Ok(ExitCode::SUCCESS)
}

fn print_contact(contact: &Contact, json: bool) -> anyhow::Result<()> {
    if json {
        emit(&format!("{}\n", serde_json::to_string_pretty(contact)?));
        return Ok(());
    }
    let mut text = String::new();
    for (label, value) in [
        ("id", Some(&contact.id)),
        ("name", Some(&contact.name)),
        ("phone_number", Some(&contact.phone_number)),
        ("created_at", contact.created_at.as_ref()),
        ("updated_at", contact.updated_at.as_ref()),
    ] {
        if let Some(value) = value {
            text.push_str(&format!(
                "{:<14}{}\n",
                format!("{label}:"),
                printable(value)
            ));
        }
    }
    emit(&text);
    Ok(())
}

// ---------------------------------------------------------------- create

async fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let name = args.name.trim();
    if name.is_empty() {
        bail!("--name is empty: give the contact's display name");
    }
    let phone = normalize_phone(&args.phone, args.default_country)
        .map_err(|why| anyhow!("--phone: {}", phone_problem(&why)))?;
    let client = client(&args.api)?;
    let new = NewContact {
        name: name.to_owned(),
        phone_number: phone.clone(),
    };
    let contact = client
        .create_contact(&new)
        .await
        .with_context(|| format!("cannot create contact {phone}"))?;
    if args.json {
        print_contact(&contact, true)?;
    } else {
        emit(&format!(
            "created contact {}: {} {}\n",
            printable(&contact.id),
            printable(&contact.name),
            printable(&contact.phone_number)
        ));
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------- import

/// What became of one CSV row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Outcome {
    Created,
    Invalid,
    Duplicate,
    Failed,
}

/// One row's outcome, as `--json` prints it. Every key is always present
/// (null when it does not apply), so scripts can rely on the shape.
#[derive(Debug, Serialize)]
struct RowReport {
    row: u64,
    line: u64,
    outcome: Outcome,
    /// E.164 when the phone parsed, the cell as written otherwise.
    phone: Option<String>,
    name: Option<String>,
    /// The new contact's id.
    id: Option<String>,
    /// `invalid_phone`, `no_name`, `bad_row`, `duplicate`, or the API's error code.
    code: Option<String>,
    details: Option<String>,
}

/// A row on its way to the API.
struct Pending {
    row: u64,
    line: u64,
    contact: NewContact,
    /// Requests made for this row so far.
    attempts: u32,
}

#[derive(Debug, Default)]
struct Tally {
    rows: u64,
    created: u64,
    invalid: u64,
    duplicate: u64,
    failed: u64,
}

impl Tally {
    fn summary(&self) -> String {
        format!(
            "created {}, invalid {}, duplicate {}, failed {}",
            self.created, self.invalid, self.duplicate, self.failed
        )
    }
}

/// Prints each row's outcome as it is known and keeps the counts.
struct Reporter {
    json: bool,
    tally: Tally,
}

impl Reporter {
    fn record(&mut self, report: RowReport) {
        match report.outcome {
            Outcome::Created => self.tally.created += 1,
            Outcome::Invalid => self.tally.invalid += 1,
            Outcome::Duplicate => self.tally.duplicate += 1,
            Outcome::Failed => self.tally.failed += 1,
        }
        if self.json {
            // Serialising plain strings and numbers cannot fail.
            if let Ok(line) = serde_json::to_string(&report) {
                emit(&format!("{line}\n"));
            }
        } else if report.outcome != Outcome::Created {
            let details = report.details.as_deref().unwrap_or_default();
            let what = match report.code.as_deref() {
                Some("invalid_phone") => format!("invalid phone: {details}"),
                Some("validation_error" | "not_found") => format!("rejected: {details}"),
                _ => details.to_owned(),
            };
            emit(&format!("row {}: {}\n", report.row, printable(&what)));
        }
    }
}

async fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let spec = RecipientsSpec {
        csv: args.csv.clone(),
        phone_column: args.phone_column.clone(),
        name_column: args.name_column.clone(),
        default_country: args.default_country,
        delimiter: args.delimiter,
    };
    let mut reader = open_csv(&spec)?;
    let Some(name_index) = reader.name_index() else {
        bail!(
            "{} has no column '{}' (its columns: {}): pass --name-column",
            args.csv.display(),
            args.name_column,
            reader.headers().join(", ")
        );
    };
    let phone_index = reader.phone_index();
    let client = client(&args.api)?;

    // One pace for every request: a 429 slows the whole import, not one row.
    let pace = Arc::new(Pace::new(None));
    let interrupted = watch_for_interrupt();
    let concurrency = usize::try_from(args.concurrency).unwrap_or(1);
    let mut reporter = Reporter {
        json: args.json,
        tally: Tally::default(),
    };
    // E.164 → the first row that had it.
    let mut seen: HashMap<String, u64> = HashMap::new();
    // The set's length is the bound on requests in flight: one must finish
    // before the next row is read, so a huge file never queues up in memory.
    let mut tasks: JoinSet<(Pending, Result<Contact, ApiError>)> = JoinSet::new();
    let mut read_error = None;

    let stopped = loop {
        while tasks.len() >= concurrency {
            if let Some(done) = tasks.join_next().await {
                finish(&mut reporter, done, &mut tasks).await?;
            }
        }
        while let Some(done) = tasks.try_join_next() {
            finish(&mut reporter, done, &mut tasks).await?;
        }
        if interrupted.load(Ordering::SeqCst) {
            break true;
        }
        // A blocking read on the runtime: the reader refills a 64 KiB buffer
        // from a local file, microseconds at a time, and nothing else here is
        // waiting on this thread.
        let raw = match reader.next_row() {
            None => break false,
            Some(Err(e)) => {
                read_error = Some(e);
                break false;
            }
            Some(Ok(raw)) => raw,
        };
        reporter.tally.rows += 1;
        let problem = |outcome, phone, name, code: &str, details: String| RowReport {
            row: raw.row,
            line: raw.line,
            outcome,
            phone,
            name,
            id: None,
            code: Some(code.to_owned()),
            details: Some(details),
        };
        let record = match &raw.outcome {
            Ok(record) => record,
            Err(why) => {
                reporter.record(problem(
                    Outcome::Invalid,
                    None,
                    None,
                    "bad_row",
                    format!("line {} {why}", raw.line),
                ));
                continue;
            }
        };
        let cell = record.get(phone_index).unwrap_or_default().trim();
        let name = record
            .get(name_index)
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        let phone = match normalize_phone(cell, args.default_country) {
            Ok(phone) => phone,
            Err(why) => {
                let shown = Some(cell.to_owned()).filter(|c| !c.is_empty());
                reporter.record(problem(
                    Outcome::Invalid,
                    shown,
                    name,
                    "invalid_phone",
                    phone_problem(&why),
                ));
                continue;
            }
        };
        let Some(name) = name else {
            let details = format!("no name in column '{}'", reader.headers()[name_index]);
            reporter.record(problem(
                Outcome::Invalid,
                Some(phone),
                None,
                "no_name",
                details,
            ));
            continue;
        };
        if let Some(first) = seen.get(&phone) {
            let details = format!("duplicate of row {first} ({phone})");
            reporter.record(problem(
                Outcome::Duplicate,
                Some(phone),
                Some(name),
                "duplicate",
                details,
            ));
            continue;
        }
        seen.insert(phone.clone(), raw.row);
        let pending = Pending {
            row: raw.row,
            line: raw.line,
            contact: NewContact {
                name,
                phone_number: phone,
            },
            attempts: 0,
        };
        let (client, pace, interrupted) = (client.clone(), pace.clone(), interrupted.clone());
        tasks.spawn(async move {
            let mut pending = pending;
            let result = create_with_retries(
                &client,
                &pace,
                &pending.contact,
                &interrupted,
                &mut pending.attempts,
            )
            .await;
            (pending, result)
        });
    };
    // Rows already sent are allowed to finish, so every one gets an outcome.
    while let Some(done) = tasks.join_next().await {
        finish(&mut reporter, done, &mut tasks).await?;
    }

    let tally = &reporter.tally;
    let summary = format!(
        "{}: {} ({} row{})",
        args.csv.display(),
        tally.summary(),
        tally.rows,
        if tally.rows == 1 { "" } else { "s" }
    );
    if args.json {
        say!("{summary}");
    } else {
        emit(&format!("{summary}\n"));
    }
    if let Some(e) = read_error {
        return Err(anyhow::Error::new(e).context(format!(
            "stopped after row {}: the rows after it were not imported",
            tally.rows
        )));
    }
    if stopped {
        say!(
            "interrupted after row {}: the rows after it were not imported",
            tally.rows
        );
        return Ok(ExitCode::from(exit::INTERRUPTED));
    }
    if tally.failed > 0 {
        bail!(
            "{} of {} rows could not be created (see the rows above); fix them and import those rows again",
            tally.failed,
            tally.rows
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the CSV, rewording the campaign-file advice of a missing phone column as flag advice.
fn open_csv(spec: &RecipientsSpec) -> anyhow::Result<RecipientReader> {
    match RecipientReader::open(spec) {
        Ok(reader) => Ok(reader),
        Err(RecipientsError::NoPhoneColumn {
            path,
            column,
            columns,
        }) => Err(no_phone_column(&path, &column, &columns)),
        Err(e) => Err(e.into()),
    }
}

fn no_phone_column(path: &Path, column: &str, columns: &[String]) -> anyhow::Error {
    let hint = match columns {
        [only] if only.contains(';') => " (is it separated by ';'? pass --delimiter ';')",
        [only] if only.contains('\t') => " (is it separated by tabs? pass --delimiter '\\t')",
        _ => "",
    };
    anyhow!(
        "{} has no column '{column}' (its columns: {}): pass --phone-column{hint}",
        path.display(),
        columns.join(", ")
    )
}

/// Records a finished row. A rejected key ends the import at once: every
/// other request would be rejected too, so the rest are abandoned.
async fn finish(
    reporter: &mut Reporter,
    done: Result<(Pending, Result<Contact, ApiError>), tokio::task::JoinError>,
    tasks: &mut JoinSet<(Pending, Result<Contact, ApiError>)>,
) -> anyhow::Result<()> {
    let (pending, result) = match done {
        Ok(done) => done,
        // Only a panic gets here (tasks are aborted only on the way out);
        // which row it was is lost with the task.
        Err(e) => {
            reporter.tally.failed += 1;
            emit(&format!("a row failed unexpectedly: {e}\n"));
            return Ok(());
        }
    };
    let mut report = RowReport {
        row: pending.row,
        line: pending.line,
        outcome: Outcome::Created,
        phone: Some(pending.contact.phone_number),
        name: Some(pending.contact.name),
        id: None,
        code: None,
        details: None,
    };
    match result {
        Ok(contact) => report.id = Some(contact.id),
        Err(e @ ApiError::Unauthorized { .. }) => {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            let summary = reporter.tally.summary();
            return Err(anyhow::Error::new(e).context(format!(
                "import stopped at row {} ({summary} so far)",
                pending.row
            )));
        }
        Err(e) => {
            report.outcome = Outcome::Failed;
            report.code = Some(e.code().to_owned());
            report.details = Some(match e.disposition() {
                Disposition::Permanent => e.details(),
                // A timeout after sending: creating it again could make a second copy.
                Disposition::Uncertain => format!(
                    "no usable answer ({}); the contact may have been created: check `contacts list` before importing this row again",
                    e.details()
                ),
                _ => format!(
                    "gave up after {} attempt{}: {e}",
                    pending.attempts,
                    if pending.attempts == 1 { "" } else { "s" }
                ),
            });
        }
    }
    reporter.record(report);
    Ok(())
}

/// Creates one contact, retrying what is known to be safe to retry: a rate
/// limit (nothing was accepted), a 5xx, a connection refused before sending.
async fn create_with_retries(
    client: &Client,
    pace: &Pace,
    contact: &NewContact,
    interrupted: &AtomicBool,
    attempts: &mut u32,
) -> Result<Contact, ApiError> {
    let mut backoff = BackoffPolicy::default().start();
    loop {
        pace.wait().await;
        *attempts += 1;
        let error = match client.create_contact(contact).await {
            Ok(created) => {
                pace.on_accepted();
                return Ok(created);
            }
            Err(error) => error,
        };
        let floor = match (&error, error.disposition()) {
            (ApiError::RateLimited { retry_after, .. }, _) => {
                pace.on_rate_limited(*retry_after);
                *retry_after
            }
            (_, Disposition::Retry) => None,
            _ => return Err(error),
        };
        // After Ctrl-C a row waiting to retry gives up instead of holding the exit.
        if *attempts >= IMPORT_ATTEMPTS || interrupted.load(Ordering::SeqCst) {
            return Err(error);
        }
        tokio::time::sleep(backoff.next_delay(floor)).await;
    }
}

/// Ctrl-C stops reading rows and lets the rows in flight finish; a second
/// Ctrl-C exits at once.
fn watch_for_interrupt() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let seen = flag.clone();
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if seen.swap(true, Ordering::SeqCst) {
                std::process::exit(i32::from(exit::INTERRUPTED));
            }
            say!("interrupted: finishing the rows in flight (Ctrl-C again to quit now)");
        }
    });
    flag
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(id: &str, name: &str) -> Contact {
        Contact {
            id: id.into(),
            name: name.into(),
            phone_number: "+254712345678".into(),
            created_at: Some("2025-04-11T10:30:00Z".into()),
            updated_at: None,
        }
    }

    #[test]
    fn table_columns_line_up_for_wide_characters() {
        let text = table(&[contact("c1", "王小明"), contact("c22", "Ann\x1b[31m")]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(!text.contains('\x1b'), "control characters are replaced");
        // The phone column starts at the same terminal column on every line.
        let col = |line: &str| {
            let at = line.find(['+', 'P']).expect("phone column");
            line[..at].width()
        };
        assert_eq!(col(lines[0]), col(lines[1]));
        assert_eq!(col(lines[1]), col(lines[2]));
    }

    #[test]
    fn long_names_are_clipped_to_the_column() {
        let clipped = clip_to_width(&"x".repeat(100), NAME_COLUMN_MAX);
        assert_eq!(clipped.width(), NAME_COLUMN_MAX);
        assert!(clipped.ends_with('…'));
    }

    #[test]
    fn footers() {
        let page = |n: usize, p: Option<(u64, u64, u64)>| ContactsPage {
            contacts: (0..n).map(|i| contact(&i.to_string(), "A")).collect(),
            pagination: p.map(|(page, total, total_pages)| {
                convers8_campaign::api::model::Pagination {
                    total,
                    page,
                    per_page: 10,
                    total_pages,
                }
            }),
        };
        assert_eq!(
            footer(&page(10, Some((1, 25, 3))), 1),
            "page 1 of 3 (25 contacts)"
        );
        assert_eq!(
            footer(&page(0, Some((4, 25, 3))), 4),
            "page 4 is past the end: there are 3 pages (25 contacts)"
        );
        assert_eq!(footer(&page(0, Some((1, 0, 0))), 1), "no contacts");
        assert_eq!(footer(&page(1, None), 1), "1 contact");
    }

    #[test]
    fn flag_values() {
        assert_eq!(parse_country("ke").ok(), Some(Country::KE));
        assert!(parse_country("Kenya").unwrap_err().contains("'Kenya'"));
        assert_eq!(parse_delimiter(";"), Ok(b';'));
        assert_eq!(parse_delimiter("\\t"), Ok(b'\t'));
        assert!(parse_delimiter(";;").is_err());
        assert_eq!(
            phone_problem("'0712' has no country code: write it with + or set default_country"),
            "'0712' has no country code: write it with + or pass --default-country"
        );
    }
}
