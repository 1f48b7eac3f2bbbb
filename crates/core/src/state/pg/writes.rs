//! What a run writes to the PostgreSQL state ([`StateStore`] for
//! [`PgStore`]): the plan (streamed in with `COPY`), claims, outcomes and the
//! run history.
//!
//! A claim is one transaction: the outcomes it carries, then candidate rows
//! read `FOR UPDATE SKIP LOCKED` (rows another runner is claiming this
//! instant are skipped, not waited for), the screen's verdicts, and the rows
//! that may go marked `sending` with this runner and a fresh claim token —
//! committed before the engine sends anything. An outcome settles its row
//! only while the row carries the claim token it was claimed with: a
//! runner's late answer never touches a row claimed again since.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use chrono::Utc;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{ToSql, Type};

use super::PgStore;
use super::lease;
use super::link::Session;
use crate::state::store::{
    ClaimScreen, PlanRows, PlanWrite, PlannedAs, StateStore, plan_row, screen_batch,
};
use crate::state::{
    Claimed, EarlierMessage, Inserted, PlanInfo, PlannedRow, RecipientState, RetrySelection,
    RowOutcome, StateError, timestamp,
};

/// How many times a transaction's BEGIN is retried (see [`PgStore::begin`]),
/// waiting this long times the attempt number before each.
const BEGIN_RETRIES: u32 = 5;
const BEGIN_RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// How long the rescue at a run's start waits for a row lock.
const RESCUE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Planned rows are sent to the server in `COPY` batches of this many.
const PLAN_BATCH: usize = 5_000;

/// A parameter list built at run time.
type Params = Vec<Box<dyn ToSql + Sync + Send>>;

fn refs(params: &Params) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

impl PgStore {
    /// Begins a transaction; returns the connection epoch it lives in.
    ///
    /// A connection the server dropped while this runner was between
    /// transactions (a restart) is only noticed by the next statement: BEGIN
    /// is retried a few times, each on a connection made anew, since nothing
    /// of the transaction exists yet.
    fn begin(&self, operation: &'static str) -> Result<u64, StateError> {
        let mut tries = 0;
        loop {
            let begun = self.link.call_in(operation, None, |c, epoch| {
                c.batch_execute("BEGIN")?;
                Ok(epoch)
            });
            match begun {
                Err(e) if tries < BEGIN_RETRIES => {
                    tries += 1;
                    tracing::warn!(error = %e, "retrying after the database connection failed");
                    std::thread::sleep(BEGIN_RETRY_AFTER * tries);
                }
                other => return other,
            }
        }
    }

    /// Runs `f` inside the transaction begun in `epoch`.
    fn in_tx<T, F>(&self, epoch: u64, operation: &'static str, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: for<'s> FnOnce(&mut Session<'s>) -> Result<T, postgres::Error> + Send + 'static,
    {
        self.link.call_in(operation, Some(epoch), move |c, _| f(c))
    }

    fn commit(&self, epoch: u64, operation: &'static str) -> Result<(), StateError> {
        self.in_tx(epoch, operation, |c| c.batch_execute("COMMIT"))
    }

    /// Undoes an unfinished transaction; nothing to undo if the connection
    /// was lost (the server rolled it back).
    fn rollback(&self) {
        let _ = self
            .link
            .call("rolling back", |c| c.batch_execute("ROLLBACK"));
    }

    /// Runs `body` in one transaction: committed if it succeeds, rolled
    /// back otherwise.
    fn transaction<T>(
        &mut self,
        operation: &'static str,
        body: impl FnOnce(&mut PgStore, u64) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let epoch = self.begin(operation)?;
        match body(self, epoch).and_then(|value| {
            self.commit(epoch, operation)?;
            Ok(value)
        }) {
            Ok(value) => Ok(value),
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    /// Records outcomes: each settles its row only while the row carries
    /// the claim token it was claimed with, and only if the row is still
    /// `sending` — or was rescued as `uncertain` (`runner_lost`) and the
    /// outcome is final (`sent`, `failed`), or a row given back before any
    /// request left for it (the token proves nobody claimed it since): a
    /// late answer may settle its own row, never one that may have gone.
    fn record_outcomes(&mut self, epoch: u64, outcomes: &[RowOutcome]) -> Result<(), StateError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(outcomes.len());
        let mut tokens = Vec::with_capacity(outcomes.len());
        let mut states = Vec::with_capacity(outcomes.len());
        let mut attempts = Vec::with_capacity(outcomes.len());
        let mut message_ids = Vec::with_capacity(outcomes.len());
        let mut codes = Vec::with_capacity(outcomes.len());
        let mut details = Vec::with_capacity(outcomes.len());
        let mut ats = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            // A row this handle never claimed has no token: it matches
            // nothing. Forgotten only once the outcome is committed.
            let token = self.tokens.get(&o.id).copied().unwrap_or(-1);
            let (message_id, code, detail) = o.outcome.columns();
            ids.push(o.id);
            tokens.push(token);
            states.push(o.outcome.state().as_str().to_owned());
            attempts.push(o.attempts as i32);
            message_ids.push(message_id.map(str::to_owned));
            codes.push(code.map(str::to_owned));
            details.push(detail.map(str::to_owned));
            ats.push(timestamp(o.at));
        }
        self.in_tx(epoch, "recording results", move |c| {
            c.execute(
                "UPDATE convers8.recipients r SET state = o.state,
                   attempts = r.attempts + o.attempts,
                   message_id = coalesce(o.message_id, r.message_id),
                   error_code = o.code, error_details = o.details, updated_at = o.at,
                   sent_at = CASE WHEN o.state = 'sent' THEN o.at ELSE r.sent_at END
                 FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::integer[], $5::text[],
                             $6::text[], $7::text[], $8::text[])
                      AS o(id, token, state, attempts, message_id, code, details, at)
                 WHERE r.id = o.id AND r.claim_token = o.token
                   AND (r.state = 'sending'
                        OR (r.state = 'uncertain' AND r.error_code = 'runner_lost'
                            AND (o.state IN ('sent', 'failed')
                                 OR (o.state = 'pending' AND o.attempts = 0))))",
                &[
                    &ids,
                    &tokens,
                    &states,
                    &attempts,
                    &message_ids,
                    &codes,
                    &details,
                    &ats,
                ],
            )
        })?;
        Ok(())
    }

    /// Inside a claim, just before it commits: this runner must still be
    /// live by the database's clock, with a third of a lease to spare. A
    /// runner that stalled (its process frozen, its connection retrying)
    /// may have been declared dead and its rows rescued meanwhile; claiming
    /// now would make rows `sending` that nobody will send.
    fn confirm_lease_in(&self, epoch: u64) -> Result<(), StateError> {
        let Some(runner) = self.runner_id() else {
            return Ok(());
        };
        let spare = self.target.lease.as_secs_f64() / 3.0;
        let live = self.in_tx(epoch, "checking this runner's lease", move |c| {
            c.query_one(
                "SELECT EXISTS (SELECT 1 FROM convers8.runners WHERE id = $1 AND state = 'live'
                   AND lease_until > clock_timestamp() + make_interval(secs => $2))",
                &[&runner, &spare],
            )
            .map(|r| r.get::<_, bool>(0))
        })?;
        let gate_open = self.gate().is_none_or(|g| g.may_send());
        if live && gate_open {
            Ok(())
        } else {
            Err(self.lease_lost(runner))
        }
    }

    /// The rows of recorded outcomes are no longer this handle's.
    fn forget_tokens(&mut self, outcomes: &[RowOutcome]) {
        for o in outcomes {
            self.tokens.remove(&o.id);
        }
    }

    /// Up to `n` claimable rows from `from_id` on, locked for this
    /// transaction; rows another runner holds are skipped.
    fn claimable_rows(
        &self,
        epoch: u64,
        from_id: i64,
        n: usize,
    ) -> Result<Vec<Claimed>, StateError> {
        let mut params: Params = vec![
            Box::new(self.campaign_id),
            Box::new(from_id),
            Box::new(n as i64),
        ];
        let also = match &self.resend {
            None => String::new(),
            Some(selection) => {
                let (state, codes) = match selection {
                    RetrySelection::Uncertain => ("uncertain", Vec::new()),
                    RetrySelection::Failed { codes } => ("failed", codes.clone()),
                    RetrySelection::Suppressed { codes } => ("suppressed", codes.clone()),
                };
                params.push(Box::new(self.resend_since.clone()));
                let since = params.len();
                let mut clause =
                    format!(" OR (state = '{state}' AND coalesce(updated_at, '') < ${since}");
                if !codes.is_empty() {
                    params.push(Box::new(codes));
                    clause.push_str(&format!(" AND error_code = ANY(${})", params.len()));
                }
                clause.push(')');
                clause
            }
        };
        let in_zone = match &self.zones {
            Some(zones) => {
                params.push(Box::new(zones.clone()));
                format!(" AND timezone = ANY(${})", params.len())
            }
            None => String::new(),
        };
        let sql = format!(
            "SELECT id, csv_row, phone, body, attempts, timezone FROM convers8.recipients
             WHERE campaign_id = $1 AND id >= $2 AND (state = 'pending'{also}){in_zone}
             ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED"
        );
        self.in_tx(epoch, "claiming rows", move |c| {
            let rows = c.query(&sql, &refs(&params))?;
            Ok(rows
                .iter()
                .map(|r| Claimed {
                    id: r.get(0),
                    row: r.get::<_, i64>(1) as u64,
                    phone: r.get::<_, Option<String>>(2).unwrap_or_default(),
                    body: r.get::<_, Option<String>>(3).unwrap_or_default(),
                    attempts: r.get::<_, i32>(4) as u32,
                    timezone: r.get(5),
                })
                .collect())
        })
    }

    /// The claim inside its transaction (see [`StateStore::record_and_claim_screened`]).
    fn claim_in(
        &mut self,
        epoch: u64,
        n: usize,
        screen: &mut ClaimScreen<'_>,
    ) -> Result<(Vec<Claimed>, i64), StateError> {
        let mut claimed: Vec<Claimed> = Vec::new();
        let mut claim_token = -1;
        if n == 0 || self.zones.as_ref().is_some_and(|z| z.is_empty()) {
            return Ok((claimed, claim_token));
        }
        let runner_id = self.runner_id().unwrap_or(0);
        let mut held = false;
        // From the low-water mark first; once, from the start, for rows
        // given back below it (released by a runner that stopped).
        let mut from_start_tried = self.low_water == 0;
        let mut from = self.low_water;
        while !held && claimed.len() < n {
            let want = n - claimed.len();
            let batch = self.claimable_rows(epoch, from, want)?;
            let taken = batch.len();
            if let Some(last) = batch.last() {
                from = last.id + 1;
            }
            if taken == 0 && !from_start_tried {
                from_start_tried = true;
                from = 0;
                continue;
            }
            if taken == 0 {
                break;
            }
            let screened = screen_batch(batch, screen)?;
            held = screened.held;
            let now = timestamp(Utc::now());
            let sending: Vec<i64> = screened.send.iter().map(|row| row.id).collect();
            claimed.extend(screened.send);
            if !screened.suppress.is_empty() {
                let (ids, (codes, details)): (Vec<i64>, (Vec<String>, Vec<String>)) = screened
                    .suppress
                    .into_iter()
                    .map(|(id, why)| (id, (why.code.as_str().to_owned(), why.details)))
                    .unzip();
                let at = now.clone();
                self.in_tx(epoch, "suppressing rows", move |c| {
                    c.execute(
                        "UPDATE convers8.recipients r SET state = 'suppressed',
                           error_code = s.code, error_details = s.details, updated_at = $4
                         FROM unnest($1::bigint[], $2::text[], $3::text[]) AS s(id, code, details)
                         WHERE r.id = s.id",
                        &[&ids, &codes, &details, &at],
                    )
                })?;
            }
            if !sending.is_empty() {
                if claim_token < 0 {
                    claim_token = self.in_tx(epoch, "claiming rows", |c| {
                        c.query_one("SELECT nextval('convers8.claim_tokens')", &[])
                            .map(|row| row.get::<_, i64>(0))
                    })?;
                }
                let token = claim_token;
                self.in_tx(epoch, "claiming rows", move |c| {
                    c.execute(
                        "UPDATE convers8.recipients SET state = 'sending', updated_at = $2,
                           runner_id = $3, claim_token = $4
                         WHERE id = ANY($1)",
                        &[&sending, &now, &runner_id, &token],
                    )
                })?;
            }
            if taken < want && from_start_tried {
                break;
            }
            if taken < want {
                from_start_tried = true;
                from = 0;
            }
        }
        if !claimed.is_empty() {
            self.confirm_lease_in(epoch)?;
        }
        if let Some(first) = claimed.iter().map(|c| c.id).min() {
            self.low_water = self.low_water.max(first);
        }
        claimed.sort_by_key(|c| c.id);
        Ok((claimed, claim_token))
    }
}

impl StateStore for PgStore {
    fn check_still_there(&mut self) -> Result<(), StateError> {
        self.check_lease()
    }

    fn rescue_copy(&self) -> Result<Option<PathBuf>, StateError> {
        // A database cannot be deleted from under a run the way a file can.
        Ok(None)
    }

    fn resend_during_run(&mut self, selection: Option<RetrySelection>) {
        self.resend = selection;
        self.resend_since = timestamp(Utc::now());
        // Resent rows may lie anywhere in the campaign.
        self.low_water = 0;
    }

    fn claim_only_zones(&mut self, zones: Option<Vec<String>>) {
        // Rows of a zone that just opened may lie below the mark. (The run
        // names the zones before every claim; most claims change nothing.)
        if zones != self.zones {
            self.low_water = 0;
        }
        self.zones = zones;
    }

    fn begin_plan(&mut self, mode: PlanWrite) -> Result<Box<dyn PlanRows + '_>, StateError> {
        self.check_lease()?;
        let epoch = self.begin("starting the plan")?;
        // The setup lock went with a connection that broke: another runner
        // may be planning this campaign right now.
        if self.setup_locked && epoch != self.setup_epoch {
            self.rollback();
            return Err(StateError::Postgres {
                location: self.target.shown().to_owned(),
                operation: "starting the plan",
                reason: "the connection was lost while this runner held the campaign's setup lock, so another runner may be planning it: nothing was planned; run again".to_owned(),
            });
        }
        let campaign_id = self.campaign_id;
        let known = self.in_tx(epoch, "starting the plan", move |c| {
            if mode == PlanWrite::Replace {
                // "Nothing was sent" was read before this transaction: a
                // runner may have claimed rows since. Deleted rows are
                // checked as they go, after any wait for that runner's
                // locks; one that went out undoes the whole replacement.
                let touched: i64 = c
                    .query_one(
                        "WITH gone AS (DELETE FROM convers8.recipients WHERE campaign_id = $1
                                       RETURNING state, attempts)
                         SELECT count(*) FROM gone
                         WHERE state IN ('sending', 'sent', 'failed', 'uncertain') OR attempts > 0",
                        &[&campaign_id],
                    )?
                    .get(0);
                if touched > 0 {
                    return Ok(Err(touched));
                }
                c.execute(
                    "UPDATE convers8.campaigns SET planned_at = NULL WHERE id = $1",
                    &[&campaign_id],
                )?;
            }
            Known::load(c, campaign_id, mode == PlanWrite::Add).map(Ok)
        });
        let known = match known {
            Ok(Ok(k)) => k,
            Ok(Err(touched)) => {
                self.rollback();
                return Err(StateError::Postgres {
                    location: self.target.shown().to_owned(),
                    operation: "planning the campaign again",
                    reason: format!(
                        "another runner started sending {:?} while this one was about to plan it again ({touched} rows went out): nothing was changed; check that every runner has the same campaign file and CSV",
                        self.target.campaign
                    ),
                });
            }
            Err(e) => {
                self.rollback();
                return Err(e);
            }
        };
        Ok(Box::new(PgPlan {
            store: self,
            epoch,
            generation: known.generation,
            known,
            add_mode: mode == PlanWrite::Add,
            buffer: Vec::with_capacity(PLAN_BATCH),
            pending_in_buffer: HashMap::new(),
            now: timestamp(Utc::now()),
            committed: false,
        }))
    }

    fn mark_interrupted_uncertain(&mut self) -> Result<u64, StateError> {
        // After a lost lease this runner's rows are the others' to rescue,
        // and the run's end already says why it stopped.
        if self.runner.as_ref().is_some_and(|r| r.gate.is_lost()) {
            return Ok(0);
        }
        // At the end of a run: every outcome of this handle is recorded, so
        // its rows still `sending` were cut off in flight and may have been
        // delivered. (Other runners' are theirs, or the rescue's.)
        if self.started {
            let (runner, now) = (self.runner_id(), timestamp(Utc::now()));
            return self.link.call("settling this run's rows cut off in flight", move |c| {
                c.execute(
                    "UPDATE convers8.recipients SET state = 'uncertain', error_code = 'interrupted',
                       error_details = 'the run stopped while this message was being sent; it may have been delivered',
                       updated_at = $2
                     WHERE runner_id = $1 AND state = 'sending'",
                    &[&runner, &now],
                )
            });
        }
        // Before it: the rows of lost runners. Best effort: a runner frozen
        // in the middle of a claim holds its rows' locks; every heartbeat
        // and every later start rescues again.
        match lease::rescue(&self.link, self.campaign_id, RESCUE_PATIENCE) {
            Ok(n) => Ok(n),
            Err(e) => {
                tracing::warn!(error = %e, "could not rescue the rows of lost runners now");
                Ok(0)
            }
        }
    }

    fn record_and_claim_screened(
        &mut self,
        outcomes: &[RowOutcome],
        n: usize,
        screen: &mut ClaimScreen<'_>,
    ) -> Result<Vec<Claimed>, StateError> {
        // A runner whose lease may have run out claims nothing more; its
        // outcomes are still recorded (each settles only its own row).
        let lease_gone = self.gate().is_some_and(|gate| !gate.may_send());
        if n > 0 && lease_gone {
            self.transaction("recording results", |store, epoch| {
                store.record_outcomes(epoch, outcomes)
            })?;
            self.forget_tokens(outcomes);
            return Err(self.lease_lost(self.runner_id().unwrap_or(0)));
        }
        // A transaction that failed before its screen ran (the server
        // restarted, the connection dropped) is tried once more on a new
        // connection: nothing of it was committed, and nothing was asked of
        // the ledger, so its outcomes are not lost to one failover. After
        // the screen, or at COMMIT (which may have gone through), it is not.
        let mut retried = false;
        let (claimed, token) = loop {
            let screened = std::sync::atomic::AtomicBool::new(false);
            let mut watched = |rows: &[Claimed]| {
                screened.store(true, std::sync::atomic::Ordering::Relaxed);
                screen(rows)
            };
            let epoch = self.begin("recording results")?;
            let body = self
                .record_outcomes(epoch, outcomes)
                .and_then(|()| self.claim_in(epoch, n, &mut watched));
            match body {
                Ok(value) => {
                    if let Err(e) = self.commit(epoch, "recording results") {
                        self.rollback();
                        return Err(e);
                    }
                    break value;
                }
                Err(e) => {
                    self.rollback();
                    let screened = screened.load(std::sync::atomic::Ordering::Relaxed);
                    if retried || screened || !matches!(e, StateError::Postgres { .. }) {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, "recording results again on a new connection");
                    retried = true;
                }
            }
        };
        self.forget_tokens(outcomes);
        // Known only once committed: a claim rolled back holds no row.
        for row in &claimed {
            self.tokens.insert(row.id, token);
        }
        Ok(claimed)
    }

    fn end_setup(&mut self) -> Result<(), StateError> {
        self.release_setup_lock()
    }

    fn start_run(&mut self) -> Result<i64, StateError> {
        self.check_lease()?;
        self.release_setup_lock()?;
        self.started = true;
        let campaign_id = self.campaign_id;
        let runner = self.runner_id();
        let pid = std::process::id() as i32;
        let at = timestamp(Utc::now());
        self.link.call("recording the run", move |c| {
            c.query_one(
                "INSERT INTO convers8.runs (campaign_id, runner_id, pid, started_at)
                 VALUES ($1, $2, $3, $4) RETURNING id",
                &[&campaign_id, &runner, &pid, &at],
            )
            .map(|row| row.get::<_, i64>(0))
        })
    }

    fn send_gate(&self) -> Option<crate::state::SendGate> {
        self.gate()
    }

    fn shared_pace(
        &self,
    ) -> Result<Option<std::sync::Arc<dyn crate::state::SharedPace>>, StateError> {
        let pace = super::pace::PgPace::open(&self.target, self.campaign_id)?;
        Ok(Some(std::sync::Arc::new(pace)))
    }

    fn finish_run(
        &mut self,
        run_id: i64,
        end: &str,
        sent: u64,
        failed: u64,
        uncertain: u64,
    ) -> Result<(), StateError> {
        let end = end.to_owned();
        let at = timestamp(Utc::now());
        let (sent, failed, uncertain) = (sent as i64, failed as i64, uncertain as i64);
        self.link.call("recording the run", move |c| {
            c.execute(
                "UPDATE convers8.runs SET finished_at = $2, outcome = $3, sent = $4, failed = $5,
                   uncertain = $6 WHERE id = $1",
                &[&run_id, &at, &end, &sent, &failed, &uncertain],
            )
        })?;
        Ok(())
    }
}

/// What a plan must know of the rows already planned, to decide duplicates
/// and (in add mode) rows planned before, without a query per row.
#[derive(Default)]
struct Known {
    generation: i32,
    /// Phones with a row that is not invalid or duplicate: the first row
    /// planned for each (a later one is its duplicate).
    first: PhoneMap<(u64, i32)>,
    /// Every phone in the campaign (add mode: an unusable row planned before).
    any_phone: PhoneMap<()>,
    /// CSV row numbers of earlier generations (add mode: a row without a
    /// phone planned before is recognised by its place).
    rows: HashSet<u64>,
}

/// A map keyed by phone that keeps a million E.164 numbers small: `+` and
/// up to 18 digits (every E.164 number) as a number, anything else (a raw
/// cell) as text. A plan holds one entry per row it planned.
#[derive(Default)]
struct PhoneMap<V> {
    numbers: HashMap<u64, V>,
    texts: HashMap<String, V>,
}

enum PhoneKey<'a> {
    Number(u64),
    Text(&'a str),
}

impl<'a> PhoneKey<'a> {
    fn of(phone: &'a str) -> PhoneKey<'a> {
        let digits = phone.strip_prefix('+').unwrap_or_default();
        let is_number = (1..=18).contains(&digits.len())
            && !digits.starts_with('0')
            && digits.bytes().all(|b| b.is_ascii_digit());
        match digits.parse() {
            Ok(n) if is_number => PhoneKey::Number(n),
            _ => PhoneKey::Text(phone),
        }
    }
}

impl<V> PhoneMap<V> {
    fn get(&self, phone: &str) -> Option<&V> {
        match PhoneKey::of(phone) {
            PhoneKey::Number(n) => self.numbers.get(&n),
            PhoneKey::Text(t) => self.texts.get(t),
        }
    }

    fn contains(&self, phone: &str) -> bool {
        self.get(phone).is_some()
    }

    /// Keeps the first value for a phone.
    fn insert_first(&mut self, phone: &str, value: V) {
        match PhoneKey::of(phone) {
            PhoneKey::Number(n) => {
                self.numbers.entry(n).or_insert(value);
            }
            PhoneKey::Text(t) => {
                if !self.texts.contains_key(t) {
                    self.texts.insert(t.to_owned(), value);
                }
            }
        }
    }
}

impl Known {
    fn load(
        c: &mut Session<'_>,
        campaign_id: i64,
        add_mode: bool,
    ) -> Result<Known, postgres::Error> {
        let generation: i32 = c
            .query_one(
                "SELECT coalesce(max(generation), 0) + 1 FROM convers8.recipients
                 WHERE campaign_id = $1",
                &[&campaign_id],
            )?
            .get(0);
        let mut known = Known {
            generation,
            ..Known::default()
        };
        if !add_mode {
            return Ok(known);
        }
        // Streamed: an add to a campaign of a million rows never holds them.
        let mut rows = c.query_raw(
            "SELECT phone, csv_row, generation, state FROM convers8.recipients
             WHERE campaign_id = $1 ORDER BY id",
            [&campaign_id],
        )?;
        while let Some(row) = rows.next()? {
            let csv_row = row.get::<_, i64>(1) as u64;
            known.rows.insert(csv_row);
            let Some(phone) = row.get::<_, Option<&str>>(0) else {
                continue;
            };
            let state: &str = row.get(3);
            if state != "invalid" && state != "duplicate" {
                known.first.insert_first(phone, (csv_row, row.get(2)));
            }
            known.any_phone.insert_first(phone, ());
        }
        Ok(known)
    }
}

/// A planned row waiting for its `COPY` batch.
struct PlanRow {
    csv_row: i64,
    phone: Option<String>,
    name: Option<String>,
    state: RecipientState,
    body: Option<String>,
    code: Option<String>,
    details: Option<String>,
    timezone: Option<String>,
    message_id: Option<String>,
    sent_at: Option<String>,
    updated_at: Option<String>,
}

/// A plan being written in one transaction: rows are decided here (from
/// [`Known`] and the rows of this plan) and streamed in with `COPY`.
struct PgPlan<'a> {
    store: &'a mut PgStore,
    epoch: u64,
    generation: i32,
    known: Known,
    add_mode: bool,
    buffer: Vec<PlanRow>,
    /// The buffered pending row of each phone, for [`PlanRows::mark_messaged`].
    pending_in_buffer: HashMap<String, usize>,
    now: String,
    committed: bool,
}

impl PgPlan<'_> {
    fn flush(&mut self) -> Result<(), StateError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.buffer);
        self.pending_in_buffer.clear();
        let campaign_id = self.store.campaign_id;
        let generation = self.generation;
        let now = self.now.clone();
        self.store
            .in_tx(self.epoch, "planning rows", move |c| {
                let sink = c.copy_in(
                    "COPY convers8.recipients (campaign_id, csv_row, generation, phone, name,
                       state, body, error_code, error_details, updated_at, timezone,
                       message_id, sent_at) FROM STDIN (FORMAT binary)",
                )?;
                let types = [
                    Type::INT8,
                    Type::INT8,
                    Type::INT4,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                ];
                let mut writer = BinaryCopyInWriter::new(sink, &types);
                for r in &rows {
                    let updated = r.updated_at.as_ref().unwrap_or(&now);
                    writer.write(&[
                        &campaign_id,
                        &r.csv_row,
                        &generation,
                        &r.phone,
                        &r.name,
                        &r.state.as_str(),
                        &r.body,
                        &r.code,
                        &r.details,
                        updated,
                        &r.timezone,
                        &r.message_id,
                        &r.sent_at,
                    ])?;
                }
                writer.finish()
            })
            .map(|_| ())
    }
}

impl PlanRows for PgPlan<'_> {
    fn insert(&mut self, row: &PlannedRow) -> Result<Inserted, StateError> {
        let known = &self.known;
        let planned = plan_row(
            row,
            self.add_mode,
            i64::from(self.generation),
            |phone| {
                Ok::<_, StateError>(
                    known
                        .first
                        .get(phone)
                        .map(|&(of_row, generation)| (of_row, i64::from(generation))),
                )
            },
            |phone, csv_row| {
                Ok(match phone {
                    Some(phone) => known.any_phone.contains(phone),
                    None => known.rows.contains(&csv_row),
                })
            },
        )?;
        let Some(PlannedAs {
            state,
            body,
            code,
            details,
            inserted,
        }) = planned
        else {
            return Ok(Inserted::AlreadyPlanned);
        };
        if let Some(phone) = &row.phone {
            if !matches!(state, RecipientState::Invalid | RecipientState::Duplicate) {
                self.known
                    .first
                    .insert_first(phone, (row.row, self.generation));
            }
            // Only an add asks whether a phone was planned before.
            if self.add_mode {
                self.known.any_phone.insert_first(phone, ());
            }
            if state == RecipientState::Pending {
                self.pending_in_buffer
                    .insert(phone.clone(), self.buffer.len());
            }
        }
        self.buffer.push(PlanRow {
            csv_row: row.row as i64,
            phone: row.phone.clone(),
            name: row.name.clone(),
            state,
            body: body.map(str::to_owned),
            code: code.map(str::to_owned),
            details,
            timezone: row.timezone.map(|tz| tz.zone.name().to_owned()),
            message_id: None,
            sent_at: None,
            updated_at: None,
        });
        if self.buffer.len() >= PLAN_BATCH {
            self.flush()?;
        }
        Ok(inserted)
    }

    fn mark_messaged(&mut self, earlier: &EarlierMessage) -> Result<bool, StateError> {
        let (state, code) = if earlier.sent {
            (RecipientState::Sent, None)
        } else {
            (
                RecipientState::Uncertain,
                Some("earlier_attempt".to_owned()),
            )
        };
        let at = timestamp(earlier.at);
        if let Some(&i) = self.pending_in_buffer.get(&earlier.phone) {
            self.pending_in_buffer.remove(&earlier.phone);
            let r = &mut self.buffer[i];
            r.state = state;
            r.message_id = earlier.message_id.clone();
            r.code = code;
            r.details = Some(earlier.details.clone());
            r.sent_at = earlier.sent.then(|| at.clone());
            r.updated_at = Some(at);
            return Ok(true);
        }
        let (campaign_id, generation) = (self.store.campaign_id, self.generation);
        let (phone, message_id, details) = (
            earlier.phone.clone(),
            earlier.message_id.clone(),
            earlier.details.clone(),
        );
        let changed = self.store.in_tx(
            self.epoch,
            "marking rows the ledger shows messaged",
            move |c| {
                c.execute(
                    "UPDATE convers8.recipients SET state = $3, message_id = $4, error_code = $5,
                       error_details = $6, updated_at = $7,
                       sent_at = CASE WHEN $3 = 'sent' THEN $7 ELSE NULL END
                     WHERE campaign_id = $1 AND phone = $2 AND state = 'pending'
                       AND generation = $8",
                    &[
                        &campaign_id,
                        &phone,
                        &state.as_str(),
                        &message_id,
                        &code,
                        &details,
                        &at,
                        &generation,
                    ],
                )
            },
        )?;
        Ok(changed > 0)
    }

    fn commit(mut self: Box<Self>, info: &PlanInfo) -> Result<(), StateError> {
        self.flush()?;
        let campaign_id = self.store.campaign_id;
        let info = info.clone();
        self.store
            .in_tx(self.epoch, "recording the plan", move |c| {
                c.execute(
                    "UPDATE convers8.campaigns SET message_type = $2, campaign_file = $3,
                   csv_file = $4, message_fingerprint = $5, csv_sha256 = $6, csv_rows = $7,
                   planned_at = coalesce(planned_at, $8), updated_at = $9
                 WHERE id = $1",
                    &[
                        &campaign_id,
                        &info.message_type,
                        &info.campaign_file,
                        &info.csv_file,
                        &info.message_fingerprint,
                        &info.csv_sha256,
                        &(info.csv_rows as i64),
                        &info.planned_at,
                        &info.updated_at,
                    ],
                )
            })?;
        self.store.commit(self.epoch, "committing the plan")?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PgPlan<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.store.rollback();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_told_apart_whether_kept_as_numbers_or_text() {
        let mut map = PhoneMap::default();
        map.insert_first("+254700000001", 1);
        map.insert_first("+254700000001", 2);
        map.insert_first("+0254700000001", 3);
        map.insert_first("0712 345", 4);
        assert_eq!(map.get("+254700000001"), Some(&1), "the first one stays");
        assert_eq!(map.get("+0254700000001"), Some(&3), "not the number above");
        assert_eq!(map.get("0712 345"), Some(&4));
        assert!(!map.contains("254700000001"), "no + is another phone");
        assert!(!map.contains("+2547000000011"));
        assert_eq!((map.numbers.len(), map.texts.len()), (1, 2));
    }
}
