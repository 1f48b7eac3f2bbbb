//! The ledger in PostgreSQL: the tables `ledger_senders`, `ledger_messages`
//! and `opt_outs` of the `convers8` schema (migration 4 of the state's
//! schema), shared by every runner on every machine that reaches the
//! database. Runners of several machines then count one another's messages,
//! which a ledger file on each machine cannot do.
//!
//! What makes the cap and the daily limit exact across runners is the same
//! as in the file: an admission reads the counts and reserves the messages
//! it admits in one transaction, and every write of messages (admissions and
//! settles alike) takes one lock, a transaction-scoped advisory lock for the
//! whole ledger, as the file's write lock is. So the second admission counts
//! the first one's reservations, and nothing is taken back between the
//! statements of one admission (each statement of a READ COMMITTED
//! transaction sees its own moment). The
//! decision itself is the file's ([`super::admit::decide`]); here each
//! question is asked for the whole claim at once (arrays, `unnest`), so an
//! admission costs a handful of round trips whatever the claim's size.
//!
//! The connection lives on a thread of its own, as the state's do
//! ([`crate::state::pg::link`]).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::admit::{Facts, day_before, decide};
use super::{
    Admission, Candidate, LedgerEntry, LedgerError, LedgerState, LedgerStore, Limits, OptOut,
    Sender, Settled,
};
use crate::phone::E164;
use crate::state::location::PgTarget;
use crate::state::pg::link::{Link, Session};
use crate::state::pg::schema;
use crate::state::{StateError, timestamp};

/// The advisory lock every counting admission takes ("C8LG", the ledger
/// file's application id): one per database, as one ledger is the account's.
const ADMISSION_LOCK: i64 = 0x4338_4C47;

/// How many times an admission or a settle is tried: once more after the
/// connection broke (the link connects again first), never after an error
/// the server answered. If the first attempt's COMMIT went through after
/// all, the second finds its own reservations (not counted against it) and
/// its own settled answers (settled again to the same).
const TRIES: u32 = 2;

/// The ledger's tables in a database.
pub struct PgLedger {
    link: Link,
    shown: String,
    /// Whose reservations this handle's are (see [`super::new_holder`]).
    holder: String,
    /// Sender ids, once known (a sender is never deleted).
    senders: HashMap<(String, String), i64>,
}

impl std::fmt::Debug for PgLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLedger")
            .field("url", &self.shown)
            .finish()
    }
}

impl PgLedger {
    /// Connects and brings the schema up to date (creating the ledger's
    /// tables on first use).
    pub fn open(target: &PgTarget) -> Result<PgLedger, LedgerError> {
        let ledger = PgLedger::connect(target)?;
        let migrated = ledger.call("migrating the schema", |c| schema::migrate(c.client()))?;
        if let Err(found) = migrated {
            return Err(ledger.too_new(found));
        }
        Ok(ledger)
    }

    /// Connects if the database has the ledger's tables (`Ok(None)` when it
    /// has none yet), changing nothing.
    pub fn open_existing(target: &PgTarget) -> Result<Option<PgLedger>, LedgerError> {
        let ledger = PgLedger::connect(target)?;
        let version = ledger.call("reading the schema version", |c| {
            schema::version(c.client())
        })?;
        if version > schema::latest_version() {
            return Err(ledger.too_new(version));
        }
        if version < schema::LEDGER_TABLES_VERSION {
            return Ok(None);
        }
        Ok(Some(ledger))
    }

    fn connect(target: &PgTarget) -> Result<PgLedger, LedgerError> {
        let shown = target.shown().to_owned();
        let link = Link::open(target, "ledger").map_err(|e| ledger_error(&shown, e))?;
        Ok(PgLedger {
            link,
            shown,
            holder: super::new_holder(),
            senders: HashMap::new(),
        })
    }

    fn too_new(&self, found: i64) -> LedgerError {
        LedgerError::TooNew {
            path: self.shown.clone(),
            found,
            known: schema::latest_version(),
        }
    }

    fn call<T, F>(&self, operation: &'static str, f: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: for<'s> FnOnce(&mut Session<'s>) -> Result<T, postgres::Error> + Send + 'static,
    {
        self.link
            .call(operation, f)
            .map_err(|e| ledger_error(&self.shown, e))
    }

    /// A write of messages: [`PgLedger::call`] of a transaction that
    /// holds [`ADMISSION_LOCK`], tried again once if the connection broke
    /// (see [`TRIES`]).
    fn write_messages<T, F>(&self, operation: &'static str, f: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: for<'s> Fn(&mut Session<'s>) -> Result<T, postgres::Error> + Send + Sync + 'static,
    {
        let f = std::sync::Arc::new(f);
        let mut tries = 0;
        loop {
            tries += 1;
            let attempt = f.clone();
            let broke = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let noted = broke.clone();
            let answer = self.call(operation, move |c| {
                let result = in_transaction(c, |c| {
                    c.execute("SELECT pg_advisory_xact_lock($1)", &[&ADMISSION_LOCK])?;
                    attempt(c)
                });
                // No answer from the server: the connection, not the write.
                if let Err(e) = &result
                    && e.as_db_error().is_none()
                {
                    noted.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                result
            });
            match answer {
                Err(e) if tries < TRIES && broke.load(std::sync::atomic::Ordering::Relaxed) => {
                    tracing::warn!("{e}: trying once more");
                }
                other => return other,
            }
        }
    }

    /// Settles `sender`'s messages in one write (see [`settle_in`] for
    /// `holder`).
    fn settle_as(
        &mut self,
        sender: &Sender,
        outcomes: &[(String, u64, Settled)],
        holder: Option<String>,
        operation: &'static str,
    ) -> Result<(), LedgerError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let me = self.sender_id(sender)?;
        let outcomes = outcomes.to_vec();
        self.write_messages(operation, move |c| {
            settle_in(c, me, &outcomes, holder.as_deref())
        })
    }

    /// The number of `sender`, given one the first time it is seen.
    fn sender_id(&mut self, sender: &Sender) -> Result<i64, LedgerError> {
        let key = (sender.campaign.clone(), sender.state_file.clone());
        if let Some(id) = self.senders.get(&key) {
            return Ok(*id);
        }
        let (campaign, state_file) = key.clone();
        let id = self.call("registering the sender", move |c| {
            c.execute(
                "INSERT INTO convers8.ledger_senders (campaign, state_file) VALUES ($1, $2)
                 ON CONFLICT (campaign, state_file) DO NOTHING",
                &[&campaign, &state_file],
            )?;
            Ok(c.query_one(
                "SELECT id FROM convers8.ledger_senders WHERE campaign = $1 AND state_file = $2",
                &[&campaign, &state_file],
            )?
            .get::<_, i64>(0))
        })?;
        self.senders.insert(key, id);
        Ok(id)
    }
}

impl LedgerStore for PgLedger {
    fn shown(&self) -> String {
        self.shown.clone()
    }

    fn messages(&self) -> Result<Vec<LedgerEntry>, LedgerError> {
        self.call("reading messages", |c| {
            let rows = c.query(
                "SELECT m.phone, s.campaign, s.state_file, m.csv_row, m.at, m.state, m.message_id
                 FROM convers8.ledger_messages m JOIN convers8.ledger_senders s ON s.id = m.sender
                 ORDER BY m.at, m.id",
                &[],
            )?;
            Ok(rows.iter().map(read_entry).collect())
        })
    }

    fn other_state_files(
        &self,
        campaign: &str,
        state_file: &str,
    ) -> Result<Vec<(String, u64)>, LedgerError> {
        let (campaign, state_file) = (campaign.to_owned(), state_file.to_owned());
        self.call("reading campaigns", move |c| {
            let rows = c.query(
                "SELECT s.state_file, count(*)
                 FROM convers8.ledger_senders s JOIN convers8.ledger_messages m ON m.sender = s.id
                 WHERE s.campaign = $1 AND s.state_file <> $2
                 GROUP BY s.state_file ORDER BY min(m.at)",
                &[&campaign, &state_file],
            )?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1).max(0) as u64))
                .collect())
        })
    }

    fn campaign_messages(&self, campaign: &str) -> Result<Vec<LedgerEntry>, LedgerError> {
        let campaign = campaign.to_owned();
        self.call("reading a campaign's messages", move |c| {
            // One per phone: a `sent` one when there is one, else the latest.
            let rows = c.query(
                "SELECT DISTINCT ON (m.phone)
                        m.phone, s.campaign, s.state_file, m.csv_row, m.at, m.state, m.message_id
                 FROM convers8.ledger_messages m JOIN convers8.ledger_senders s ON s.id = m.sender
                 WHERE s.campaign = $1
                 ORDER BY m.phone, m.state = 'sent' DESC, m.at DESC",
                &[&campaign],
            )?;
            Ok(rows.iter().map(read_entry).collect())
        })
    }

    fn add_opt_outs(&mut self, phones: &[E164], source: &str) -> Result<u64, LedgerError> {
        let phones: Vec<String> = phones.iter().map(|p| p.as_str().to_owned()).collect();
        let (now, source) = (timestamp(Utc::now()), source.to_owned());
        self.call("adding opt-outs", move |c| {
            // One already there keeps its first date and source.
            c.execute(
                "INSERT INTO convers8.opt_outs (phone, added_at, source)
                 SELECT DISTINCT p, $2, $3 FROM unnest($1::text[]) AS p
                 ON CONFLICT (phone) DO NOTHING",
                &[&phones, &now, &source],
            )
        })
    }

    fn remove_opt_out(&mut self, phone: &E164) -> Result<bool, LedgerError> {
        let phone = phone.as_str().to_owned();
        self.call("removing an opt-out", move |c| {
            c.execute("DELETE FROM convers8.opt_outs WHERE phone = $1", &[&phone])
                .map(|n| n > 0)
        })
    }

    fn opt_outs(&self) -> Result<Vec<OptOut>, LedgerError> {
        self.call("reading opt-outs", |c| {
            let rows = c.query(
                "SELECT phone, added_at, source FROM convers8.opt_outs ORDER BY phone COLLATE \"C\"",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|r| OptOut {
                    phone: r.get(0),
                    added_at: r.get(1),
                    source: r.get(2),
                })
                .collect())
        })
    }

    fn opted_out(&self, phones: &[&str]) -> Result<Vec<bool>, LedgerError> {
        let asked: Vec<String> = phones.iter().map(|p| (*p).to_owned()).collect();
        let out = self.call("reading opt-outs", move |c| opted_out_among(c, &asked))?;
        Ok(phones.iter().map(|p| out.contains(*p)).collect())
    }

    fn admit(
        &mut self,
        sender: &Sender,
        settle_first: &[(String, u64, Settled)],
        candidates: &[Candidate<'_>],
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Vec<Admission>, LedgerError> {
        let me = self.sender_id(sender)?;
        let campaign = sender.campaign.clone();
        let settle_first = settle_first.to_vec();
        let phones: Vec<String> = candidates.iter().map(|c| c.phone.to_owned()).collect();
        let rows: Vec<i64> = candidates.iter().map(|c| c.row as i64).collect();
        let limits = *limits;
        let holder = self.holder.clone();
        self.write_messages("reserving messages", move |c| {
            settle_in(c, me, &settle_first, Some(&holder))?;
            let day = timestamp(day_before(now));
            let cap_since = limits.cap.map(|(_, per)| timestamp(now - per));
            let daily_day = limits.daily.map(|_| day.clone());
            let facts: Vec<Facts> = c
                .query(
                    "SELECT
                       EXISTS (SELECT 1 FROM convers8.opt_outs o WHERE o.phone = u.phone),
                       EXISTS (SELECT 1 FROM convers8.ledger_messages m
                               JOIN convers8.ledger_senders s ON s.id = m.sender
                               WHERE m.phone = u.phone AND m.sender <> $2 AND s.campaign = $3),
                       CASE WHEN $4::text IS NULL THEN 0 ELSE
                         (SELECT count(*) FROM convers8.ledger_messages m
                          WHERE m.phone = u.phone AND m.at >= $4 AND m.sender <> $2) END,
                       $5::text IS NOT NULL AND EXISTS (SELECT 1 FROM convers8.ledger_messages m
                               WHERE m.phone = u.phone AND m.at >= $5)
                     FROM unnest($1::text[]) WITH ORDINALITY AS u(phone, i)
                     ORDER BY u.i",
                    &[&phones, &me, &campaign, &cap_since, &daily_day],
                )?
                .iter()
                .map(|r| Facts {
                    opted_out: r.get(0),
                    elsewhere: r.get(1),
                    messages: r.get::<_, i64>(2).max(0) as u64,
                    seen_today: r.get(3),
                })
                .collect();
            let answers = decide(&facts, &limits, || {
                c.query_one(
                    "SELECT count(DISTINCT phone) FROM convers8.ledger_messages WHERE at >= $1",
                    &[&day],
                )
                .map(|r| r.get::<_, i64>(0).max(0) as u64)
            })?;
            // A phone asked twice in one claim is one reservation (one
            // statement may not change a row twice): its first row's.
            let mut seen = HashSet::new();
            let (admitted, admitted_rows): (Vec<&String>, Vec<i64>) = phones
                .iter()
                .zip(&rows)
                .zip(&answers)
                .filter(|((p, _), a)| **a == Admission::Admitted && seen.insert(p.as_str()))
                .map(|((p, r), _)| (p, *r))
                .unzip();
            if !admitted.is_empty() {
                // A resend keeps what it replaces, restored if it does not go out.
                c.execute(
                    "INSERT INTO convers8.ledger_messages AS m
                       (phone, sender, csv_row, at, state, reserved_by)
                     SELECT p, $2, r, $4, 'sending', $5
                     FROM unnest($1::text[], $3::bigint[]) AS u(p, r)
                     ON CONFLICT (phone, sender) DO UPDATE SET
                       csv_row = excluded.csv_row, at = excluded.at, state = 'sending',
                       reserved_by = excluded.reserved_by,
                       prior_state = CASE WHEN m.state = 'sending' THEN m.prior_state ELSE m.state END,
                       prior_at = CASE WHEN m.state = 'sending' THEN m.prior_at ELSE m.at END",
                    &[&admitted, &me, &admitted_rows, &timestamp(now), &holder],
                )?;
            }
            Ok(answers)
        })
    }

    fn settle(
        &mut self,
        sender: &Sender,
        outcomes: &[(String, u64, Settled)],
    ) -> Result<(), LedgerError> {
        let holder = Some(self.holder.clone());
        self.settle_as(sender, outcomes, holder, "recording messages")
    }

    fn settle_leftovers(
        &mut self,
        sender: &Sender,
        outcomes: &[(String, u64, Settled)],
    ) -> Result<(), LedgerError> {
        self.settle_as(sender, outcomes, None, "settling a dead run's messages")
    }

    fn sending_of(&self, sender: &Sender) -> Result<Vec<(String, u64)>, LedgerError> {
        let (campaign, state_file) = (sender.campaign.clone(), sender.state_file.clone());
        self.call("reading reserved messages", move |c| {
            let rows = c.query(
                "SELECT m.phone, m.csv_row
                 FROM convers8.ledger_messages m JOIN convers8.ledger_senders s ON s.id = m.sender
                 WHERE s.campaign = $1 AND s.state_file = $2 AND m.state = 'sending'",
                &[&campaign, &state_file],
            )?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1).max(0) as u64))
                .collect())
        })
    }

    fn next_daily_slot(
        &self,
        daily: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, LedgerError> {
        let day = timestamp(day_before(now));
        let last: Option<String> = self.call("counting unique recipients", move |c| {
            let used = c
                .query_one(
                    "SELECT count(DISTINCT phone) FROM convers8.ledger_messages WHERE at >= $1",
                    &[&day],
                )?
                .get::<_, i64>(0)
                .max(0) as u64;
            if used < u64::from(daily) {
                return Ok(None);
            }
            // The phone whose last message is the oldest in the window
            // leaves it first (a phone messaged again stays counted longer).
            let offset = (used - u64::from(daily)) as i64;
            Ok(c.query_opt(
                "SELECT max(at) AS last FROM convers8.ledger_messages WHERE at >= $1
                 GROUP BY phone ORDER BY last LIMIT 1 OFFSET $2",
                &[&day, &offset],
            )?
            .map(|r| r.get::<_, String>(0)))
        })?;
        Ok(last
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc) + chrono::Duration::hours(24)))
    }
}

/// Runs `f` between BEGIN and COMMIT on the session, rolling back when it fails.
fn in_transaction<T>(
    c: &mut Session<'_>,
    f: impl FnOnce(&mut Session<'_>) -> Result<T, postgres::Error>,
) -> Result<T, postgres::Error> {
    c.batch_execute("BEGIN")?;
    match f(c) {
        Ok(value) => {
            c.batch_execute("COMMIT")?;
            Ok(value)
        }
        Err(e) => {
            // A broken connection rolls back by itself.
            let _ = c.batch_execute("ROLLBACK");
            Err(e)
        }
    }
}

/// Which of `phones` are on the opt-out list, in one query.
fn opted_out_among(
    c: &mut Session<'_>,
    phones: &[String],
) -> Result<HashSet<String>, postgres::Error> {
    Ok(c.query(
        "SELECT o.phone FROM unnest($1::text[]) AS p JOIN convers8.opt_outs o ON o.phone = p",
        &[&phones],
    )?
    .iter()
    .map(|r| r.get::<_, String>(0))
    .collect())
}

/// Settles reserved messages of sender `me` inside the caller's
/// transaction, as the file does (see `admit::settle_in`): a message that
/// went out keeps its reservation's time; one that did not is removed, or
/// gets back what a resend replaced, if `holder` reserved it (`None`:
/// whoever did, for a dead run's leftovers). Outcomes go in batches of
/// distinct phones, in order (one statement may not change a row twice).
fn settle_in(
    c: &mut Session<'_>,
    me: i64,
    outcomes: &[(String, u64, Settled)],
    holder: Option<&str>,
) -> Result<(), postgres::Error> {
    let mut start = 0;
    while start < outcomes.len() {
        let mut seen = HashSet::new();
        let end = outcomes[start..]
            .iter()
            .position(|(phone, _, _)| !seen.insert(phone.as_str()))
            .map_or(outcomes.len(), |n| start + n);
        settle_batch(c, me, &outcomes[start..end], holder)?;
        start = end;
    }
    Ok(())
}

fn settle_batch(
    c: &mut Session<'_>,
    me: i64,
    outcomes: &[(String, u64, Settled)],
    holder: Option<&str>,
) -> Result<(), postgres::Error> {
    let mut went = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut not_sent: Vec<&str> = Vec::new();
    for (phone, row, settled) in outcomes {
        let (state, at, message_id) = match settled {
            Settled::Sent { message_id, at } => ("sent", at, message_id.clone()),
            Settled::Uncertain { at } => ("uncertain", at, None),
            Settled::NotSent => {
                not_sent.push(phone);
                continue;
            }
        };
        went.0.push(phone.as_str());
        went.1.push(*row as i64);
        went.2.push(timestamp(*at));
        went.3.push(state);
        went.4.push(message_id);
    }
    if !went.0.is_empty() {
        c.execute(
            "INSERT INTO convers8.ledger_messages AS m (phone, sender, csv_row, at, state, message_id)
             SELECT p, $2, r, a, s, i
             FROM unnest($1::text[], $3::bigint[], $4::text[], $5::text[], $6::text[]) AS u(p, r, a, s, i)
             ON CONFLICT (phone, sender) DO UPDATE SET
               state = excluded.state,
               message_id = coalesce(excluded.message_id, m.message_id),
               prior_state = NULL, prior_at = NULL",
            &[&went.0, &me, &went.1, &went.2, &went.3, &went.4],
        )?;
    }
    if !not_sent.is_empty() {
        c.execute(
            "DELETE FROM convers8.ledger_messages
             WHERE sender = $1 AND phone = ANY($2) AND state = 'sending' AND prior_state IS NULL
               AND ($3::text IS NULL OR reserved_by = $3)",
            &[&me, &not_sent, &holder],
        )?;
        c.execute(
            "UPDATE convers8.ledger_messages SET state = prior_state, at = coalesce(prior_at, at),
               prior_state = NULL, prior_at = NULL
             WHERE sender = $1 AND phone = ANY($2) AND state = 'sending'
               AND prior_state IS NOT NULL AND ($3::text IS NULL OR reserved_by = $3)",
            &[&me, &not_sent, &holder],
        )?;
    }
    Ok(())
}

/// One `ledger_messages` row, selected as `phone, campaign, state_file,
/// csv_row, at, state, message_id`.
fn read_entry(r: &postgres::Row) -> LedgerEntry {
    let at: String = r.get(4);
    let state: String = r.get(5);
    LedgerEntry {
        phone: r.get(0),
        campaign: r.get(1),
        state_file: r.get(2),
        row: r.get::<_, i64>(3).max(0) as u64,
        at: DateTime::parse_from_rfc3339(&at)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default(),
        state: LedgerState::parse(&state),
        message_id: r.get(6),
    }
}

/// A store error as the ledger's: it names the database as a ledger.
fn ledger_error(shown: &str, e: StateError) -> LedgerError {
    match e {
        StateError::Postgres {
            location,
            operation,
            reason,
        } => LedgerError::Postgres {
            location,
            operation,
            reason,
        },
        other => LedgerError::Postgres {
            location: shown.to_owned(),
            operation: "connecting",
            reason: other.to_string(),
        },
    }
}
