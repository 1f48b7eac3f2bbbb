//! What keeps a recipient from being sent: the ledger's opt-out list and the
//! campaign's exclude files, checked twice — when the campaign is planned
//! ([`Suppressions`], a snapshot) and again when each row is claimed
//! ([`RunLedger::screen`], the opt-out list read at that moment, so an
//! opt-out added while a campaign runs is honoured before that person's
//! claim). [`RunLedger`] is also how the state writer appends what a run
//! sent to the ledger. It decides nothing about pacing or limits.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use super::phone_list::{self, PhoneListError, PhoneListFormat};
use super::{Ledger, LedgerEntry, LedgerError};
use crate::campaign::Campaign;
use crate::state::{ProblemCode, Suppression};

/// Who must not be sent, as known when a plan is made.
#[derive(Debug, Clone, Default)]
pub struct Suppressions {
    opted_out: HashSet<String>,
    /// Phone → the exclude file it came from (the first one that lists it).
    excluded: HashMap<String, PathBuf>,
    /// The ledger the opt-outs came from, for the reason shown.
    ledger: Option<PathBuf>,
}

impl Suppressions {
    /// Nobody suppressed.
    pub fn none() -> Suppressions {
        Suppressions::default()
    }

    /// The opt-outs of `ledger` (when there is one) and the campaign's
    /// exclude files.
    pub fn load(campaign: &Campaign, ledger: Option<&Ledger>) -> Result<Suppressions, ScreenError> {
        let opted_out = match ledger {
            Some(l) => l.opted_out_set()?,
            None => HashSet::new(),
        };
        Ok(Suppressions {
            opted_out,
            excluded: load_excludes(campaign)?,
            ledger: ledger.map(|l| l.path().to_owned()),
        })
    }

    /// Why `phone` (E.164) must not be sent, if it must not.
    pub fn check(&self, phone: &str) -> Option<Suppression> {
        if self.opted_out.contains(phone) {
            return Some(opted_out(self.ledger.as_deref()));
        }
        self.excluded.get(phone).map(|file| excluded(file))
    }

    /// The campaign-local exclusions, for the claim-time screen.
    pub fn excluded(&self) -> &HashMap<String, PathBuf> {
        &self.excluded
    }

    pub fn is_empty(&self) -> bool {
        self.opted_out.is_empty() && self.excluded.is_empty()
    }
}

/// Why suppressions could not be read: the run does not start, because a
/// list meant to stop messages must not be skipped.
#[derive(Debug, thiserror::Error)]
pub enum ScreenError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    List(#[from] PhoneListError),
}

fn opted_out(ledger: Option<&std::path::Path>) -> Suppression {
    Suppression {
        code: ProblemCode::OptedOut,
        details: match ledger {
            Some(p) => format!("on the opt-out list of the ledger {}", p.display()),
            None => "on the opt-out list".to_owned(),
        },
    }
}

fn excluded(file: &std::path::Path) -> Suppression {
    Suppression {
        code: ProblemCode::Excluded,
        details: format!("listed in the exclude file {}", file.display()),
    }
}

/// Every phone in the campaign's `[recipients] exclude` files, read like the
/// recipient CSV (its phone column, delimiter and default country).
pub fn load_excludes(campaign: &Campaign) -> Result<HashMap<String, PathBuf>, PhoneListError> {
    let r = &campaign.recipients;
    let format = PhoneListFormat {
        phone_column: r.phone_column.clone(),
        default_country: r.default_country,
        delimiter: r.delimiter,
    };
    let mut excluded = HashMap::new();
    for file in &r.exclude {
        for phone in phone_list::read(file, &format)? {
            excluded
                .entry(phone.into_string())
                .or_insert_with(|| file.clone());
        }
    }
    Ok(excluded)
}

/// The ledger as one run uses it from the state writer's thread: it screens
/// each claim and appends what went out.
#[derive(Debug)]
pub struct RunLedger {
    /// `None`: no ledger file (disabled and none exists); only the exclude
    /// files screen.
    ledger: Option<Ledger>,
    /// `false` for `[ledger] enabled = false`: opt-outs are honoured, nothing is written.
    record: bool,
    excluded: HashMap<String, PathBuf>,
}

impl RunLedger {
    pub fn new(ledger: Option<Ledger>, record: bool, excluded: HashMap<String, PathBuf>) -> Self {
        RunLedger {
            ledger,
            record,
            excluded,
        }
    }

    /// Whether this run appends to a ledger.
    pub fn records(&self) -> bool {
        self.record && self.ledger.is_some()
    }

    /// One answer per phone: opted out now (read from the ledger), excluded,
    /// or free to send. An unreadable ledger is an error, never "free".
    pub fn screen(&mut self, phones: &[&str]) -> Result<Vec<Option<Suppression>>, String> {
        let opted = match &self.ledger {
            Some(l) => l.opted_out(phones).map_err(|e| e.to_string())?,
            None => vec![false; phones.len()],
        };
        let path = self.ledger.as_ref().map(|l| l.path().to_owned());
        Ok(phones
            .iter()
            .zip(opted)
            .map(|(phone, out)| {
                if out {
                    Some(opted_out(path.as_deref()))
                } else {
                    self.excluded.get(*phone).map(|f| excluded(f))
                }
            })
            .collect())
    }

    /// Appends a batch of messages in one transaction (nothing when this run
    /// does not record).
    pub fn record(&mut self, entries: &[LedgerEntry]) -> Result<(), LedgerError> {
        match &mut self.ledger {
            Some(l) if self.record => l.record(entries),
            _ => Ok(()),
        }
    }
}
