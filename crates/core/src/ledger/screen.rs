//! What keeps a recipient from being sent: the ledger's opt-out list and the
//! campaign's exclude files, checked twice — when the campaign is planned
//! ([`Suppressions`], a snapshot) and again when each row is claimed
//! ([`RunLedger::screen`], the opt-out list read at that moment, so an
//! opt-out added while a campaign runs is honoured before that person's
//! claim) — and, at claim time only, the account's limits: the frequency
//! cap per phone and the daily limit of unique recipients, counted in the
//! ledger (see [`super::admit`]). [`RunLedger`] is also how the state writer
//! settles what a run sent in the ledger. It decides nothing about pacing.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use std::sync::Arc;

use super::phone_list::{self, PhoneListError, PhoneListFormat};
use super::{
    Admission, Candidate, Ledger, LedgerEntry, LedgerError, LedgerState, LedgerStore, Limits,
    Sender, Settled,
};
use crate::campaign::{AudienceSpec, Campaign};
use crate::engine::clock::{Clock, SystemClock};
use crate::state::{Claimed, EarlierMessage, ProblemCode, Suppression, Verdict};

/// Who must not be sent, as known when a plan is made.
#[derive(Debug, Clone, Default)]
pub struct Suppressions {
    opted_out: HashSet<String>,
    /// Phone → the exclude file it came from (the first one that lists it).
    excluded: HashMap<String, PathBuf>,
    /// The ledger the opt-outs came from, for the reason shown.
    ledger: Option<String>,
    /// Phones the ledger shows this campaign already messaged.
    messaged: Vec<EarlierMessage>,
}

impl Suppressions {
    /// Nobody suppressed.
    pub fn none() -> Suppressions {
        Suppressions::default()
    }

    /// The opt-outs of `ledger` (when there is one) and the campaign's
    /// exclude files.
    pub fn load(
        campaign: &Campaign,
        ledger: Option<&dyn LedgerStore>,
    ) -> Result<Suppressions, ScreenError> {
        let opted_out = match ledger {
            Some(l) => l.opted_out_set()?,
            None => HashSet::new(),
        };
        Ok(Suppressions {
            opted_out,
            excluded: load_excludes(campaign)?,
            ledger: ledger.map(|l| l.shown()),
            messaged: Vec::new(),
        })
    }

    /// Adds what the ledger shows this campaign already sent (from any state
    /// file): a plan marks those phones' rows sent or uncertain.
    pub fn with_earlier_messages(mut self, entries: Vec<LedgerEntry>) -> Suppressions {
        self.messaged = entries
            .into_iter()
            .map(|e| {
                let sent = e.state == LedgerState::Sent;
                EarlierMessage {
                    details: format!(
                        "{} by this campaign from {} at {} (the ledger's record)",
                        if sent { "sent" } else { "may have been sent" },
                        e.state_file,
                        crate::state::timestamp(e.at)
                    ),
                    phone: e.phone,
                    sent,
                    message_id: e.message_id,
                    at: e.at,
                }
            })
            .collect();
        self
    }

    /// What the ledger shows this campaign already sent.
    pub fn earlier_messages(&self) -> &[EarlierMessage] {
        &self.messaged
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

fn opted_out(ledger: Option<&str>) -> Suppression {
    Suppression {
        code: ProblemCode::OptedOut,
        details: match ledger {
            Some(l) => format!("on the opt-out list of the ledger {l}"),
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
/// each claim (reserving the messages it admits) and settles what went out.
#[derive(Debug)]
pub struct RunLedger {
    /// `None`: no ledger file (disabled and none exists); only the exclude
    /// files screen.
    ledger: Option<Ledger>,
    /// `false` for `[ledger] enabled = false`: opt-outs are honoured, nothing is written.
    record: bool,
    excluded: HashMap<String, PathBuf>,
    sender: Sender,
    limits: Limits,
    /// `per` as the campaign wrote it, for the reason shown.
    cap_text: String,
    /// The last screen held rows back: the daily limit is used up.
    held: bool,
    /// What "now" is for the cap's period and the daily limit's 24 hours
    /// (the run's clock, so a test can move it).
    clock: Arc<dyn Clock>,
}

impl RunLedger {
    pub fn new(
        ledger: Option<Ledger>,
        record: bool,
        excluded: HashMap<String, PathBuf>,
        sender: Sender,
    ) -> Self {
        RunLedger {
            ledger,
            record,
            excluded,
            sender,
            limits: Limits::default(),
            cap_text: String::new(),
            held: false,
            clock: Arc::new(SystemClock),
        }
    }

    /// Judges the cap's period and the daily limit's 24 hours by `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Enforces the campaign's frequency cap and the account's daily limit
    /// at claim time (only when this run records: the limits count the
    /// ledger's messages, and a run that does not record would not be counted).
    pub fn with_limits(mut self, audience: Option<&AudienceSpec>, daily: Option<u32>) -> Self {
        self.limits = Limits {
            cap: audience.map(|a| (a.max_messages, a.per)),
            daily,
        };
        self.cap_text = audience
            .map(|a| format!("{} per {}", a.max_messages, a.per_text))
            .unwrap_or_default();
        self
    }

    /// Whether this run appends to a ledger.
    pub fn records(&self) -> bool {
        self.record && self.ledger.is_some()
    }

    /// Whether the account's daily limit is counted here, in the ledger
    /// (rather than from this campaign's state alone).
    pub fn enforces_daily_limit(&self) -> bool {
        self.records() && self.limits.daily.is_some()
    }

    /// The ledger, for reads beside the run (the daily limit's next slot).
    pub fn ledger(&self) -> Option<&dyn LedgerStore> {
        self.ledger.as_deref()
    }

    pub fn sender(&self) -> &Sender {
        &self.sender
    }

    /// Whether the last screen held rows back (and clears it).
    pub fn take_held(&mut self) -> bool {
        std::mem::take(&mut self.held)
    }

    /// One verdict per row: excluded by the campaign, opted out now (read
    /// from the ledger), over the frequency cap, held by the daily limit,
    /// or free to send — in which case, when this run records, its message
    /// is reserved in the ledger before the claim commits. `settle_first`
    /// are answers not yet settled in the ledger; they are settled in the
    /// same ledger transaction, before anything is counted, and cleared once
    /// it commits. An unreadable ledger is an error, never "free".
    pub fn screen(
        &mut self,
        rows: &[Claimed],
        settle_first: &mut Vec<(String, u64, Settled)>,
    ) -> Result<Vec<Verdict>, String> {
        let mut verdicts: Vec<Option<Verdict>> = rows
            .iter()
            .map(|r| {
                self.excluded
                    .get(&r.phone)
                    .map(|f| Verdict::Suppress(excluded(f)))
            })
            .collect();
        let asking: Vec<(usize, Candidate<'_>)> = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| verdicts[*i].is_none())
            .map(|(i, r)| {
                (
                    i,
                    Candidate {
                        phone: &r.phone,
                        row: r.row,
                    },
                )
            })
            .collect();
        let shown = self.ledger.as_ref().map(|l| l.shown());
        let answers: Vec<Admission> = match &mut self.ledger {
            None => vec![Admission::Admitted; asking.len()],
            Some(ledger) if self.record => {
                let candidates: Vec<Candidate<'_>> = asking.iter().map(|(_, c)| *c).collect();
                let answers = ledger
                    .admit(
                        &self.sender,
                        settle_first,
                        &candidates,
                        &self.limits,
                        self.clock.now(),
                    )
                    .map_err(|e| e.to_string())?;
                // Settled only once the transaction committed.
                settle_first.clear();
                answers
            }
            Some(ledger) => {
                let phones: Vec<&str> = asking.iter().map(|(_, c)| c.phone).collect();
                ledger
                    .opted_out(&phones)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|out| {
                        if out {
                            Admission::OptedOut
                        } else {
                            Admission::Admitted
                        }
                    })
                    .collect()
            }
        };
        if answers.len() != asking.len() {
            return Err(format!(
                "the ledger answered for {} of {} rows",
                answers.len(),
                asking.len()
            ));
        }
        for ((i, _), answer) in asking.iter().zip(answers) {
            verdicts[*i] = Some(match answer {
                Admission::Admitted => Verdict::Send,
                Admission::OptedOut => Verdict::Suppress(opted_out(shown.as_deref())),
                Admission::MessagedElsewhere => Verdict::Suppress(Suppression {
                    code: ProblemCode::AlreadyMessaged,
                    details: format!(
                        "the ledger shows campaign {:?} already messaged this phone from another state file",
                        self.sender.campaign
                    ),
                }),
                Admission::Capped { messages } => Verdict::Suppress(Suppression {
                    code: ProblemCode::FrequencyCap,
                    details: format!(
                        "{messages} messages in the last {} from campaigns sharing the ledger (cap: {})",
                        self.limits
                            .cap
                            .map(|(_, per)| describe_period(per))
                            .unwrap_or_default(),
                        self.cap_text
                    ),
                }),
                Admission::Held => {
                    self.held = true;
                    Verdict::Hold
                }
            });
        }
        Ok(verdicts
            .into_iter()
            .map(|v| v.unwrap_or(Verdict::Hold))
            .collect())
    }

    /// Settles a batch of this run's reserved messages in one transaction
    /// (nothing when this run does not record).
    pub fn settle(&mut self, outcomes: &[(String, u64, Settled)]) -> Result<(), LedgerError> {
        match &mut self.ledger {
            Some(l) if self.record => l.settle(&self.sender, outcomes),
            _ => Ok(()),
        }
    }

    /// Settles what dead runs of this state reserved and never settled.
    pub fn settle_leftovers(
        &mut self,
        outcomes: &[(String, u64, Settled)],
    ) -> Result<(), LedgerError> {
        match &mut self.ledger {
            Some(l) if self.record => l.settle_leftovers(&self.sender, outcomes),
            _ => Ok(()),
        }
    }
}

/// A period as a person says it: "7 days", "24 hours".
fn describe_period(per: chrono::Duration) -> String {
    let hours = per.num_hours();
    if hours % 24 == 0 {
        let days = hours / 24;
        format!("{days} day{}", if days == 1 { "" } else { "s" })
    } else {
        format!("{hours} hours")
    }
}
