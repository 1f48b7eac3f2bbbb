//! Lists of phones in a CSV (`optout import`, a campaign's `[recipients]
//! exclude` files): a header row with a phone column, one number a row.
//!
//! Read with the recipients reader, so quoting, a BOM, CRLF and delimiters
//! work as in the recipient CSV, and every number is normalised with
//! [`E164::parse`] exactly as recipients are — an opt-out written `0712…`
//! matches a recipient written `+254712…`. A row whose phone does not parse
//! fails the whole list with its row and line: a list meant to stop messages
//! must not be half-read. Rows with an empty phone cell are skipped.

use std::path::{Path, PathBuf};

use crate::campaign::RecipientsSpec;
use crate::phone::E164;
use crate::recipients::{RecipientReader, RecipientsError};

/// Why a phone list cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PhoneListError {
    #[error(transparent)]
    Read(#[from] RecipientsError),
    #[error(
        "{} row {row} (line {line}): phone '{cell}' is not a phone number ({reason}): fix or delete the row",
        file.display()
    )]
    BadPhone {
        file: PathBuf,
        row: u64,
        line: u64,
        cell: String,
        reason: String,
    },
    #[error("{} row {row} (line {line}): {reason}: fix or delete the row", file.display())]
    BadRow {
        file: PathBuf,
        row: u64,
        line: u64,
        reason: String,
    },
}

/// How to read a phone list.
#[derive(Debug, Clone)]
pub struct PhoneListFormat {
    pub phone_column: String,
    pub default_country: Option<phonenumber::country::Id>,
    pub delimiter: u8,
}

/// Every phone in the list at `path`, in file order, normalised to E.164.
pub fn read(path: &Path, format: &PhoneListFormat) -> Result<Vec<E164>, PhoneListError> {
    let spec = RecipientsSpec {
        csv: path.to_owned(),
        phone_column: format.phone_column.clone(),
        name_column: String::new(),
        default_country: format.default_country,
        delimiter: format.delimiter,
        timezone_column: None,
        fallback_timezone: None,
        exclude: Vec::new(),
    };
    let mut reader = RecipientReader::open(&spec)?;
    let phone_index = reader.phone_index();
    let mut phones = Vec::new();
    while let Some(raw) = reader.next_row() {
        let raw = raw?;
        let record = raw.outcome.map_err(|reason| PhoneListError::BadRow {
            file: path.to_owned(),
            row: raw.row,
            line: raw.line,
            reason,
        })?;
        let cell = record.get(phone_index).unwrap_or("").trim();
        if cell.is_empty() {
            continue;
        }
        let phone =
            E164::parse(cell, format.default_country).map_err(|why| PhoneListError::BadPhone {
                file: path.to_owned(),
                row: raw.row,
                line: raw.line,
                cell: cell.chars().take(40).collect(),
                reason: why.to_string(),
            })?;
        phones.push(phone);
    }
    Ok(phones)
}
