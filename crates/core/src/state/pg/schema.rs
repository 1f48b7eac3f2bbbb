//! The PostgreSQL state's schema: an ordered, add-only list of migrations in
//! the `convers8` schema, applied under a transaction-scoped advisory lock so
//! runners starting together on an empty database migrate it once.
//!
//! Never edit a migration that has shipped: add one at the end. One database
//! holds many campaigns; every table but `campaigns` names its campaign.

use postgres::Client;

/// The advisory lock key every migration takes ("C8CC").
const MIGRATION_LOCK: i64 = 0x4338_4343;

/// Each entry moves the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: campaigns (with their plan and their shared pace), recipients,
    // runners (with their leases), runs, and the claim tokens.
    r#"
    CREATE TABLE convers8.campaigns (
        id                  bigserial PRIMARY KEY,
        name                text NOT NULL UNIQUE,
        -- the plan: NULL until the campaign is planned
        message_type        text,
        campaign_file       text,
        csv_file            text,
        message_fingerprint text,
        csv_sha256          text,
        csv_rows            bigint,
        planned_at          text,
        updated_at          text,
        -- the shared pace (GCRA): the next free send slot for every runner,
        -- the rate it is spaced at, and when that rate last changed
        pace_next_slot      timestamptz,
        pace_rate           double precision,
        pace_adjusted_at    timestamptz,
        pace_decreased_at   timestamptz
    );

    CREATE TABLE convers8.recipients (
        id              bigserial PRIMARY KEY,
        campaign_id     bigint NOT NULL REFERENCES convers8.campaigns (id) ON DELETE CASCADE,
        csv_row         bigint NOT NULL,
        generation      integer NOT NULL,
        phone           text,
        name            text,
        state           text NOT NULL CHECK (state IN
                            ('pending','sending','sent','failed','uncertain','invalid',
                             'duplicate','suppressed')),
        body            text,
        attempts        integer NOT NULL DEFAULT 0,
        message_id      text,
        error_code      text,
        error_details   text,
        updated_at      text,
        sent_at         text,
        timezone        text,
        -- who claimed it last, and with which claim: a late outcome only
        -- settles the row of its own claim
        runner_id       bigint,
        claim_token     bigint
    );
    CREATE INDEX recipients_by_state ON convers8.recipients (campaign_id, state, id);
    CREATE INDEX recipients_by_phone ON convers8.recipients (campaign_id, phone);
    CREATE INDEX recipients_by_sent_at ON convers8.recipients (campaign_id, sent_at)
        WHERE sent_at IS NOT NULL;
    CREATE INDEX recipients_by_row ON convers8.recipients (campaign_id, csv_row);
    CREATE INDEX recipients_in_flight ON convers8.recipients (runner_id)
        WHERE state = 'sending';

    CREATE TABLE convers8.runners (
        id              bigserial PRIMARY KEY,
        campaign_id     bigint NOT NULL REFERENCES convers8.campaigns (id) ON DELETE CASCADE,
        host            text NOT NULL,
        pid             integer NOT NULL,
        started_at      timestamptz NOT NULL DEFAULT now(),
        -- the database's clock decides, never a runner's
        lease_until     timestamptz NOT NULL,
        state           text NOT NULL CHECK (state IN ('live', 'dead', 'finished')),
        ended_at        timestamptz
    );
    CREATE INDEX runners_by_state ON convers8.runners (campaign_id, state);

    CREATE TABLE convers8.runs (
        id              bigserial PRIMARY KEY,
        campaign_id     bigint NOT NULL REFERENCES convers8.campaigns (id) ON DELETE CASCADE,
        runner_id       bigint,
        pid             integer NOT NULL,
        started_at      text NOT NULL,
        finished_at     text,
        outcome         text,
        sent            bigint NOT NULL DEFAULT 0,
        failed          bigint NOT NULL DEFAULT 0,
        uncertain       bigint NOT NULL DEFAULT 0
    );
    CREATE INDEX runs_by_campaign ON convers8.runs (campaign_id, id);

    CREATE SEQUENCE convers8.claim_tokens;
    "#,
    // 2: a CSV row is planned once per generation, whatever happens to the
    // runners planning it: two plans of one campaign at once (a runner that
    // lost its setup lock with its connection) cannot both commit.
    r#"
    CREATE UNIQUE INDEX recipients_planned_once
        ON convers8.recipients (campaign_id, generation, csv_row);
    "#,
    // 3: where a runner's pid means something (this boot of this machine,
    // this pid namespace), so a runner started there can tell at once that
    // one which died there is gone, without waiting for its lease.
    r#"
    ALTER TABLE convers8.runners ADD COLUMN process_space text;
    "#,
    // 4: the account's ledger, shared by every runner on every machine that
    // reaches this database (see `ledger::pg`): each message that left or
    // may have left, its sender (a campaign name and the state that sent
    // it), and the opt-out list. The same shape as the ledger file's;
    // times are the ledger's fixed-width RFC 3339 text, as in the file.
    r#"
    CREATE TABLE convers8.ledger_senders (
        id              bigserial PRIMARY KEY,
        campaign        text NOT NULL,
        state_file      text NOT NULL,
        UNIQUE (campaign, state_file)
    );
    CREATE TABLE convers8.ledger_messages (
        id              bigserial PRIMARY KEY,
        phone           text NOT NULL,
        sender          bigint NOT NULL REFERENCES convers8.ledger_senders (id),
        csv_row         bigint NOT NULL,
        at              text NOT NULL,
        state           text NOT NULL CHECK (state IN ('sending', 'sent', 'uncertain')),
        message_id      text,
        -- what a resend replaced, restored if the resend does not go out
        prior_state     text CHECK (prior_state IN ('sent', 'uncertain')),
        prior_at        text,
        -- the ledger handle (one run) whose reservation this is: runners of
        -- one campaign share a sender, and a late "not sent" of one must
        -- not take back another's reservation of the same phone
        reserved_by     text,
        -- also the frequency cap's index: a phone's messages, by sender
        UNIQUE (phone, sender)
    );
    -- the account's unique recipients over a moving 24 hours
    CREATE INDEX ledger_messages_by_at ON convers8.ledger_messages (at, phone);
    CREATE TABLE convers8.opt_outs (
        phone           text PRIMARY KEY,
        added_at        text NOT NULL,
        -- "cli", or the imported file's path
        source          text NOT NULL
    );
    "#,
];

/// The version whose state tables this build reads: later migrations only
/// add what a reader of a campaign does not need (the ledger's tables).
pub const STATE_TABLES_VERSION: i64 = 3;

/// The first version with the ledger's tables.
pub const LEDGER_TABLES_VERSION: i64 = 4;

/// The schema version this build writes.
pub fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Brings the database up to [`latest_version`]; `Ok(Err(found))` for a
/// database a newer build migrated.
pub fn migrate(client: &mut Client) -> Result<Result<(), i64>, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS convers8;
         CREATE TABLE IF NOT EXISTS convers8.schema_version (version bigint NOT NULL);",
    )?;
    let current: i64 = match tx.query_opt("SELECT version FROM convers8.schema_version", &[])? {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO convers8.schema_version VALUES (0)", &[])?;
            0
        }
    };
    if current > latest_version() {
        return Ok(Err(current));
    }
    for sql in MIGRATIONS.iter().skip(current as usize) {
        tx.batch_execute(sql)?;
    }
    tx.execute(
        "UPDATE convers8.schema_version SET version = $1",
        &[&latest_version()],
    )?;
    tx.commit()?;
    Ok(Ok(()))
}

/// The schema version of the database, without changing it (0: none yet).
pub fn version(client: &mut Client) -> Result<i64, postgres::Error> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('convers8.schema_version') IS NOT NULL",
            &[],
        )?
        .get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_opt("SELECT version FROM convers8.schema_version", &[])?
        .map_or(0, |row| row.get(0)))
}
