//! `convers8-campaign contacts`: the guide's contacts endpoints — `list`,
//! `get`, `create` — and `import`, which creates one contact per CSV row.
//!
//! This file owns the flags, the table and JSON output, and the words and
//! exit codes of an import; the import itself (dedupe within the file, one
//! shared pace, retries, draining on a stop, one outcome per row) is the
//! library's `contacts::import`, stopped by this command's Ctrl-C/SIGTERM
//! handling (`signals`). It must not read a campaign or touch a state file,
//! and it never prints the API key: every message comes from the server's
//! answer or the request's URL, never from the key.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use phonenumber::country::Id as Country;
use unicode_width::UnicodeWidthStr;

use super::common::ApiArgs;
use super::output::say;
use super::{exit, signals};
use convers8_campaign::api::model::{Contact, ContactsPage, NewContact, codes};
use convers8_campaign::api::{ApiError, Client};
use convers8_campaign::campaign::RecipientsSpec;
use convers8_campaign::contacts::import::{
    self, ImportEnd, ImportError, ImportEvents, ImportOptions, ImportSummary, RowReport, RowStatus,
};
use convers8_campaign::engine::Stop;
use convers8_campaign::phone::E164;
use convers8_campaign::recipients::RecipientsError;

/// Per request, from connect to the last byte: the campaign default.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The widest a name may print in the table; longer ones end in `…`.
const NAME_COLUMN_MAX: usize = 40;

const LIST_EXAMPLES: &str = "\
Examples:
  # The first page of 10, then page 2 of 50
  convers8-campaign contacts list
  convers8-campaign contacts list --page 2 --per-page 50
  convers8-campaign contacts list --all --json \\
      | jq -r '.contacts[].phone_number'

Exit codes: 0 listed, 1 error (key rejected, the API refused), 2 usage.";

const GET_EXAMPLES: &str = "\
Examples:
  # One contact by the id `contacts list` shows
  convers8-campaign contacts get contact_20250411ABC
  convers8-campaign contacts get contact_20250411ABC --json

An unknown id prints \"contact 'ID' not found\" and exits 1.
Exit codes: 0 shown, 1 error (not found, key rejected), 2 usage.";

const CREATE_EXAMPLES: &str = "\
Examples:
  # The new contact is printed back; --json prints it as JSON
  convers8-campaign contacts create --name 'Jane Smith' --phone +254712345678
  convers8-campaign contacts create --name 'Wanjiru Kamau' \\
      --phone '0712 345 678' --default-country KE

The phone is checked and sent in international (E.164) form; a number the
campaign planner would refuse is refused here, before any request.
Exit codes: 0 created, 1 error (bad phone, key rejected, the API refused),
2 usage.";

const IMPORT_EXAMPLES: &str = "\
Examples:
  # National numbers (07...) read as Kenyan
  convers8-campaign contacts import customers.csv --default-country KE

  # Another export's columns and separator
  convers8-campaign contacts import crm.csv --phone-column Tel --delimiter ';'
  convers8-campaign contacts import crm.csv --name-column 'Full name'

  # More requests in flight; one JSON object per row for a script
  convers8-campaign contacts import customers.csv --concurrency 8
  convers8-campaign contacts import customers.csv --json > results.jsonl

Prints a line per row that was not created (invalid phone, no name,
duplicate phone within the file, rejected by the API) and a summary
\"created X, invalid Y, duplicate Z, failed W (N rows)\". With --json, one
JSON object per row goes to stdout and the summary to stderr. Rate-limited
rows wait (honouring Retry-After) and are tried again; server errors up to
5 attempts. A row with no answer after sending may have been created: it
is reported as uncertain and never sent again.

Ctrl-C or SIGTERM stops reading rows and lets the requests in flight
finish; the summary then says how many rows were not imported.

Exit codes: 0 every row was created or skipped as invalid/duplicate;
1 some row failed or may have been created, the key was rejected (the
import stops), or the file cannot be read; 130 interrupted.
Importing the same file twice creates the contacts twice: the API does
not deduplicate.";

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

pub(super) fn parse_country(s: &str) -> Result<Country, String> {
    let upper = s.trim().to_ascii_uppercase();
    // `Id::from_str` also knows a few non-country codes; only two letters are countries.
    let two_letters = upper.len() == 2 && upper.bytes().all(|b| b.is_ascii_alphabetic());
    two_letters
        .then(|| Country::from_str(&upper).ok())
        .flatten()
        .ok_or_else(|| format!("unknown country '{s}': use an ISO 3166-1 alpha-2 code such as KE"))
}

pub(super) fn parse_delimiter(s: &str) -> Result<u8, String> {
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

/// [`E164::parse`]'s reasons speak to campaign files ("set default_country");
/// here the same advice is a flag.
pub(super) fn phone_problem(why: &str) -> String {
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
    let phone = E164::parse(&args.phone, args.default_country)
        .map_err(|why| anyhow!("--phone: {}", phone_problem(&why.to_string())))?;
    let client = client(&args.api)?;
    let new = NewContact {
        name: name.to_owned(),
        phone_number: phone.as_str().to_owned(),
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

/// Prints each row's outcome as it is known: in text, a line for each row
/// that was not created; with `--json`, every row as one JSON object.
struct Printer {
    json: bool,
}

impl ImportEvents for Printer {
    fn row(&mut self, report: &RowReport) {
        let report = for_the_command_line(report);
        if self.json {
            // Serialising plain strings and numbers cannot fail.
            if let Ok(line) = serde_json::to_string(&report) {
                emit(&format!("{line}\n"));
            }
            return;
        }
        let code = report.code.as_deref();
        match report.outcome {
            RowStatus::Created => return,
            // The import's one error line says the key was rejected.
            RowStatus::NotImported if code == Some(codes::UNAUTHORIZED) => return,
            _ => {}
        }
        let details = report.details.as_deref().unwrap_or_default();
        let what = match (report.outcome, code) {
            (RowStatus::NotImported, _) => format!("not imported: {details}"),
            (_, Some("invalid_phone")) => format!("invalid phone: {details}"),
            (_, Some("validation_error" | "not_found")) => format!("rejected: {details}"),
            _ => details.to_owned(),
        };
        emit(&format!("row {}: {}\n", report.row, printable(&what)));
    }
}

/// The library's row report in this command's words: flag advice instead of
/// campaign-file advice, and what to do about a contact that may exist.
fn for_the_command_line(report: &RowReport) -> RowReport {
    let mut report = report.clone();
    let (outcome, code) = (report.outcome, report.code.clone());
    report.details = report
        .details
        .map(|details| match (outcome, code.as_deref()) {
            (_, Some("invalid_phone")) => phone_problem(&details),
            (RowStatus::Uncertain, _) => format!(
                "no usable answer ({details}); the contact may have been created: check `contacts list` before importing this row again"
            ),
            _ => details,
        });
    report
}

/// `created X, invalid Y, duplicate Z, failed W`, then what else happened.
fn tally(s: &ImportSummary) -> String {
    let mut text = format!(
        "created {}, invalid {}, duplicate {}, failed {}",
        s.created, s.invalid, s.duplicate, s.failed
    );
    if s.uncertain > 0 {
        text.push_str(&format!(", uncertain {}", s.uncertain));
    }
    if s.not_imported() > 0 {
        text.push_str(&format!(", not imported {}", s.not_imported()));
    }
    text
}

fn rows(n: u64) -> String {
    format!("{n} row{}", if n == 1 { "" } else { "s" })
}

async fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let source = RecipientsSpec {
        csv: args.csv.clone(),
        phone_column: args.phone_column.clone(),
        name_column: args.name_column.clone(),
        default_country: args.default_country,
        delimiter: args.delimiter,
        timezone_column: None,
        fallback_timezone: None,
        exclude: Vec::new(),
    };
    let options = ImportOptions {
        concurrency: usize::try_from(args.concurrency).unwrap_or(1),
        ..ImportOptions::new(source)
    };
    let client = client(&args.api)?;
    let stop = Stop::new();
    let signals = signals::stop_on_signals(
        stop.clone(),
        signals::Words {
            stopping: "reading no more rows; letting the contacts in flight finish",
            quit_costs: "the rows in flight are then not reported",
        },
    );
    let mut printer = Printer { json: args.json };
    let summary = import::run(&client, &options, &mut printer, stop)
        .await
        .map_err(|e| import_error(e, &args.csv))?;
    let result = finish_import(summary, &args);
    // Listening until the summary is out: a later Ctrl-C still quits at once.
    drop(signals);
    result
}

/// Prints the summary and chooses the exit code.
fn finish_import(mut summary: ImportSummary, args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let end = std::mem::take(&mut summary.end);
    if let ImportEnd::Refused { row, error } = end {
        // One line: the rows were not created, and the key (or the trust) is what to fix.
        let mut so_far = format!(
            "created {}, invalid {}, duplicate {}, failed {}",
            summary.created, summary.invalid, summary.duplicate, summary.failed
        );
        if summary.uncertain > 0 {
            so_far.push_str(&format!(", uncertain {}", summary.uncertain));
        }
        return Err(anyhow::Error::new(error).context(format!(
            "import stopped at row {row} ({so_far} so far; {} not imported)",
            rows(summary.not_imported())
        )));
    }
    let line = format!(
        "{}: {} ({})",
        args.csv.display(),
        tally(&summary),
        rows(summary.rows)
    );
    if args.json {
        say!("{line}");
    } else {
        emit(&format!("{line}\n"));
    }
    match end {
        ImportEnd::ReadFailed(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "stopped after row {}: the rows after it were not imported",
                summary.rows_read()
            )));
        }
        ImportEnd::Stopped(_) => {
            say!("{}", interrupted(&summary));
            return Ok(ExitCode::from(exit::INTERRUPTED));
        }
        ImportEnd::Completed | ImportEnd::Refused { .. } => {}
    }
    let mut problems = Vec::new();
    if summary.failed > 0 {
        let codes: Vec<String> = summary
            .failed_codes
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect();
        problems.push(format!(
            "{} of {} could not be created ({}; see the rows above): fix them and import those rows again",
            summary.failed,
            rows(summary.rows),
            codes.join(", ")
        ));
    }
    if summary.uncertain > 0 {
        problems.push(format!(
            "{} of {} may have been created (no usable answer; see the rows above): check `contacts list` before importing {} again",
            summary.uncertain,
            rows(summary.rows),
            if summary.uncertain == 1 { "it" } else { "them" }
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(ExitCode::SUCCESS)
}

/// Which rows an interrupted import did not create, so they can be imported again.
fn interrupted(s: &ImportSummary) -> String {
    let last = s.rows;
    let unread = match s.first_unread() {
        Some(first) if first == last => Some(format!("row {first}")),
        Some(first) => Some(format!("rows {first} to {last}")),
        None => None,
    };
    let which = match (s.stopped, unread) {
        (0, None) => return "interrupted: every row was handled before the import stopped".into(),
        (0, Some(unread)) => unread,
        (n, None) => format!("the {} reported as not imported", rows(n)),
        (n, Some(unread)) => format!("the {} reported as not imported, and {unread}", rows(n)),
    };
    format!(
        "interrupted: {} of {} were not imported ({which}); import those rows again",
        s.not_imported(),
        rows(s.rows)
    )
}

/// The library's refusals to start, in flag terms.
fn import_error(error: ImportError, csv: &Path) -> anyhow::Error {
    match error {
        ImportError::Recipients(RecipientsError::NoPhoneColumn {
            path,
            column,
            columns,
        }) => no_phone_column(&path, &column, &columns),
        ImportError::NoNameColumn {
            column, columns, ..
        } => anyhow!(
            "{} has no column '{column}' (its columns: {}): pass --name-column",
            csv.display(),
            columns.join(", ")
        ),
        other => other.into(),
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
