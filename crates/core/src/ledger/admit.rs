//! Admitting messages: the claim-time decision, in one ledger transaction,
//! of whether each claimed row may go — opted out, already messaged by this
//! campaign from another state file, over the phone's frequency cap, or
//! beyond the account's daily limit of unique recipients —
//! and, for those that may, a `sending` entry that reserves the message.
//!
//! The reservation is what makes the limits exact across runs: two
//! campaigns claiming at the same moment take the ledger's write lock one
//! after the other, and the second counts the first one's reservations as
//! messages. An answer then settles the entry ([`FileLedger::settle`]): `sent`
//! or `uncertain` stay and count, a message that did not go out is removed
//! (or, for a resend, gets back what it replaced). A run that dies leaves
//! its reservations; they count as messages (they may have gone) until the
//! next run of that state settles them from the state ([`FileLedger::sending_of`]).
//! The decision itself ([`decide`]) is the same for every store; each reads
//! the facts it needs ([`Facts`]) and reserves in its own way.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{FileLedger, LedgerError};
use crate::state::timestamp;

/// Which campaign, from which state file, is sending: the key of its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    /// The `[campaign] name`.
    pub campaign: String,
    /// The state file's identity (its absolute path when known).
    pub state_file: String,
}

/// One claimed row asking to go.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// E.164.
    pub phone: &'a str,
    /// Its CSV data row.
    pub row: u64,
}

/// The account's rules a claim is checked against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// At most this many messages to one phone in this period, counting every
    /// campaign (`[audience]`).
    pub cap: Option<(u32, chrono::Duration)>,
    /// At most this many unique recipients in a moving 24 hours, across the
    /// account (`daily_limit`).
    pub daily: Option<u32>,
}

/// What the ledger says about one candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Reserved: it may go.
    Admitted,
    /// On the opt-out list.
    OptedOut,
    /// This campaign (its name) already messaged the phone from another
    /// state file: a copied state, or a second one running beside it.
    MessagedElsewhere,
    /// The phone already has this many messages in the cap's period.
    Capped { messages: u64 },
    /// The daily limit is used up: this row and every later one of the claim
    /// wait (nothing is reserved for them).
    Held,
}

/// How a reserved message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    Sent {
        message_id: Option<String>,
        at: DateTime<Utc>,
    },
    Uncertain {
        at: DateTime<Utc>,
    },
    /// It never left, or the API refused it: it is no message.
    NotSent,
}

/// The moving window of the account's daily limit.
pub fn day_before(now: DateTime<Utc>) -> DateTime<Utc> {
    now - chrono::Duration::hours(24)
}

/// What a ledger holds about one candidate, read inside the transaction
/// that admits it: the same questions whichever store answers them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Facts {
    /// On the opt-out list.
    pub opted_out: bool,
    /// This campaign messaged the phone from another state.
    pub elsewhere: bool,
    /// Messages to the phone from other senders in the cap's period.
    pub messages: u64,
    /// The phone was messaged in the last 24 hours (it is already one of
    /// the day's unique recipients).
    pub seen_today: bool,
}

/// Decides each candidate in claim order from its facts: opted out, then
/// messaged elsewhere, then over the cap, then the daily limit, which once
/// used up holds this row and every later one of the claim.
/// `unique_today` counts the day's unique recipients, asked at most once
/// (only when a new phone needs a slot) and then counted up as the claim
/// admits. The same for every store, so both decide alike.
pub(super) fn decide<E>(
    facts: &[Facts],
    limits: &Limits,
    mut unique_today: impl FnMut() -> Result<u64, E>,
) -> Result<Vec<Admission>, E> {
    let mut answers = Vec::with_capacity(facts.len());
    let mut used: Option<u64> = None;
    let mut held = false;
    for f in facts {
        let answer = if held {
            Admission::Held
        } else if f.opted_out {
            Admission::OptedOut
        } else if f.elsewhere {
            Admission::MessagedElsewhere
        } else if let Some((max, _)) = limits.cap
            && f.messages >= u64::from(max)
        {
            Admission::Capped {
                messages: f.messages,
            }
        } else if let Some(daily) = limits.daily
            && !f.seen_today
        {
            let today = match used {
                Some(n) => n,
                None => unique_today()?,
            };
            if today >= u64::from(daily) {
                held = true;
                Admission::Held
            } else {
                used = Some(today + 1);
                Admission::Admitted
            }
        } else {
            Admission::Admitted
        };
        answers.push(answer);
    }
    Ok(answers)
}

impl FileLedger {
    /// Decides each candidate in order and reserves those admitted, all in
    /// one transaction holding the ledger's write lock. `settle_first` are
    /// answers of this sender's earlier messages, settled in the same
    /// transaction before anything is counted (one commit instead of two:
    /// this runs for every claim).
    pub fn admit(
        &mut self,
        sender: &Sender,
        settle_first: &[(String, u64, Settled)],
        candidates: &[Candidate<'_>],
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Vec<Admission>, LedgerError> {
        let holder = self.holder.clone();
        self.write("reserving messages", |tx| {
            let me = sender_id(tx, &sender.campaign, &sender.state_file)?;
            settle_in(tx, me, settle_first, Some(&holder))?;
            // One lookup for the whole claim, not one per row.
            let opted_out = opted_out_among(tx, candidates)?;
            // Only a campaign run from more than one state file can have
            // messaged a phone from another one: most claims skip that check.
            let other_states: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM senders WHERE campaign = ?1 AND id <> ?2)",
                params![sender.campaign, me],
                |r| r.get(0),
            )?;
            let day = timestamp(day_before(now));
            let facts = {
                // The row's own entry is the same message tried again, not another one.
                let mut to_phone = tx.prepare_cached(
                    "SELECT count(*) FROM messages
                     WHERE phone = ?1 AND at >= ?2 AND sender <> ?3",
                )?;
                let mut same_campaign_elsewhere = tx.prepare_cached(
                    "SELECT 1 FROM messages m JOIN senders s ON s.id = m.sender
                     WHERE m.phone = ?1 AND m.sender <> ?2 AND s.campaign = ?3 LIMIT 1",
                )?;
                let mut seen_today = tx.prepare_cached(
                    "SELECT 1 FROM messages WHERE phone = ?1 AND at >= ?2 LIMIT 1",
                )?;
                let cap_since = limits.cap.map(|(_, per)| timestamp(now - per));
                let mut facts = Vec::with_capacity(candidates.len());
                for c in candidates {
                    let messages = match &cap_since {
                        Some(since) => to_phone
                            .query_row(params![c.phone, since, me], |r| r.get::<_, i64>(0))?
                            .max(0) as u64,
                        None => 0,
                    };
                    facts.push(Facts {
                        opted_out: opted_out.contains(c.phone),
                        elsewhere: other_states
                            && same_campaign_elsewhere.exists(params![
                                c.phone,
                                me,
                                sender.campaign
                            ])?,
                        messages,
                        seen_today: limits.daily.is_some()
                            && seen_today.exists(params![c.phone, day])?,
                    });
                }
                facts
            };
            let answers = decide(&facts, limits, || unique_since(tx, &day))?;
            let mut reserve = tx.prepare_cached(
                "INSERT INTO messages (phone, sender, row, at, state, reserved_by)
                 VALUES (?1, ?2, ?3, ?4, 'sending', ?5)
                 ON CONFLICT(phone, sender) DO UPDATE SET
                   row = excluded.row, at = excluded.at,
                   state = 'sending', reserved_by = excluded.reserved_by,
                   prior_state = CASE WHEN messages.state = 'sending'
                                      THEN messages.prior_state ELSE messages.state END,
                   prior_at = CASE WHEN messages.state = 'sending'
                                   THEN messages.prior_at ELSE messages.at END",
            )?;
            let at = timestamp(now);
            for (c, answer) in candidates.iter().zip(&answers) {
                if *answer == Admission::Admitted {
                    reserve.execute(params![c.phone, me, c.row as i64, at, holder])?;
                }
            }
            Ok(answers)
        })
    }

    /// Settles this handle's reserved messages in one transaction.
    pub fn settle(
        &mut self,
        sender: &Sender,
        outcomes: &[(String, u64, Settled)],
    ) -> Result<(), LedgerError> {
        let holder = Some(self.holder.clone());
        self.settle_as(sender, outcomes, holder)
    }

    /// Settles what a dead run of `sender` reserved, whichever run it was.
    pub fn settle_leftovers(
        &mut self,
        sender: &Sender,
        outcomes: &[(String, u64, Settled)],
    ) -> Result<(), LedgerError> {
        self.settle_as(sender, outcomes, None)
    }

    fn settle_as(
        &mut self,
        sender: &Sender,
        outcomes: &[(String, u64, Settled)],
        holder: Option<String>,
    ) -> Result<(), LedgerError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        self.write("recording messages", |tx| {
            let me = sender_id(tx, &sender.campaign, &sender.state_file)?;
            settle_in(tx, me, outcomes, holder.as_deref())?;
            Ok(())
        })
    }

    /// Phones and rows `sender` reserved and did not settle: what a run of
    /// that state left when it died (or is sending right now).
    pub fn sending_of(&self, sender: &Sender) -> Result<Vec<(String, u64)>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT m.phone, m.row FROM messages m JOIN senders s ON s.id = m.sender
                 WHERE s.campaign = ?1 AND s.state_file = ?2 AND m.state = 'sending'",
            )
            .map_err(|e| self.sql("reading reserved messages", e))?;
        let rows = stmt
            .query_map(params![sender.campaign, sender.state_file], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
            })
            .map_err(|e| self.sql("reading reserved messages", e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql("reading reserved messages", e))
    }

    /// When the account's daily limit frees its next slot, if it is used up
    /// now: the moment the phone whose last message is the oldest in the
    /// window leaves it (a phone messaged again stays counted longer).
    pub fn next_daily_slot(
        &self,
        daily: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, LedgerError> {
        let day = timestamp(day_before(now));
        let used = unique_since(&self.conn, &day)
            .map_err(|e| self.sql("counting unique recipients", e))?;
        if used < u64::from(daily) {
            return Ok(None);
        }
        let offset = (used - u64::from(daily)) as i64;
        let last: Option<String> = self
            .conn
            .query_row(
                "SELECT max(at) AS last FROM messages WHERE at >= ?1
                 GROUP BY phone ORDER BY last LIMIT 1 OFFSET ?2",
                params![day, offset],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql("counting unique recipients", e))?;
        Ok(last
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc) + chrono::Duration::hours(24)))
    }
}

/// Which of the candidates' phones are on the opt-out list, in one query.
fn opted_out_among(
    tx: &rusqlite::Connection,
    candidates: &[Candidate<'_>],
) -> rusqlite::Result<std::collections::HashSet<String>> {
    if candidates.is_empty() {
        return Ok(Default::default());
    }
    let phones = serde_json::to_string(&candidates.iter().map(|c| c.phone).collect::<Vec<_>>())
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let mut stmt = tx.prepare_cached(
        "SELECT o.phone FROM json_each(?1) j JOIN opt_outs o ON o.phone = j.value",
    )?;
    let rows = stmt.query_map([phones], |r| r.get::<_, String>(0))?;
    rows.collect()
}

/// Settles reserved messages of sender `me` inside the caller's write
/// transaction: a message that did not go out gives back `holder`'s
/// reservation only (`None`: whoever's, for a dead run's leftovers).
fn settle_in(
    tx: &rusqlite::Connection,
    me: i64,
    outcomes: &[(String, u64, Settled)],
    holder: Option<&str>,
) -> rusqlite::Result<()> {
    let mut went = tx.prepare_cached(
        // The entry keeps the time of its reservation: seconds
        // apart from the answer's, and leaving `at` alone spares
        // two index updates per message (this runs for every row).
        "INSERT INTO messages (phone, sender, row, at, state, message_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(phone, sender) DO UPDATE SET
               state = excluded.state,
               message_id = coalesce(excluded.message_id, messages.message_id),
               prior_state = NULL, prior_at = NULL",
    )?;
    // Only this holder's reservation (another run of a shared state may
    // hold the phone's entry by now), or any for leftovers (`holder` None).
    let mut drop_new = tx.prepare_cached(
        "DELETE FROM messages WHERE sender = ?1 AND phone = ?2
               AND state = 'sending' AND prior_state IS NULL
               AND (?3 IS NULL OR reserved_by = ?3)",
    )?;
    let mut restore = tx.prepare_cached(
        "UPDATE messages SET state = prior_state, at = coalesce(prior_at, at),
           prior_state = NULL, prior_at = NULL
             WHERE sender = ?1 AND phone = ?2
               AND state = 'sending' AND prior_state IS NOT NULL
               AND (?3 IS NULL OR reserved_by = ?3)",
    )?;
    for (phone, row, settled) in outcomes {
        let (state, at, message_id) = match settled {
            Settled::Sent { message_id, at } => ("sent", at, message_id.as_deref()),
            Settled::Uncertain { at } => ("uncertain", at, None),
            Settled::NotSent => {
                drop_new.execute(params![me, phone, holder])?;
                restore.execute(params![me, phone, holder])?;
                continue;
            }
        };
        went.execute(params![
            phone,
            me,
            *row as i64,
            timestamp(*at),
            state,
            message_id,
        ])?;
    }
    Ok(())
}

/// The number of a sender (a campaign name and its state file), given one
/// the first time it is seen. Inside the caller's write transaction.
pub(super) fn sender_id(
    tx: &rusqlite::Connection,
    campaign: &str,
    state_file: &str,
) -> rusqlite::Result<i64> {
    tx.prepare_cached(
        "INSERT INTO senders (campaign, state_file) VALUES (?1, ?2)
         ON CONFLICT(campaign, state_file) DO NOTHING",
    )?
    .execute(params![campaign, state_file])?;
    tx.prepare_cached("SELECT id FROM senders WHERE campaign = ?1 AND state_file = ?2")?
        .query_row(params![campaign, state_file], |r| r.get(0))
}

fn unique_since(conn: &rusqlite::Connection, since: &str) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT count(DISTINCT phone) FROM messages WHERE at >= ?1",
        [since],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as u64)
}
