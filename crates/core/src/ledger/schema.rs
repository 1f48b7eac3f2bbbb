//! The ledger's schema: an ordered, add-only list of migrations tracked with
//! `PRAGMA user_version`, and the `application_id` that marks a ledger.
//!
//! Never edit a migration that has shipped: add a new one at the end.
//! Connection settings (WAL, busy timeout) belong to [`super::Ledger`].

use rusqlite::Connection;

/// Each entry moves the schema from version `index` to `index + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: every message that left or may have left, from any campaign of the
    // account, and the account's opt-out list.
    r#"
    CREATE TABLE messages (
        id              INTEGER PRIMARY KEY,
        -- E.164
        phone           TEXT NOT NULL,
        -- [campaign] name
        campaign        TEXT NOT NULL,
        -- the state file that sent it, as the run named it (absolute when it could be)
        state_file      TEXT NOT NULL,
        -- the CSV data row in that state
        row             INTEGER NOT NULL,
        -- RFC 3339 UTC, fixed width: sorts as text
        at              TEXT NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('sent', 'uncertain')),
        message_id      TEXT
    );
    -- frequency caps: one phone's messages over a period
    CREATE INDEX messages_by_phone ON messages(phone, at);
    -- the account's unique recipients over a moving 24 hours
    CREATE INDEX messages_by_at ON messages(at, phone);
    -- a campaign name with messages from another state file
    CREATE INDEX messages_by_campaign ON messages(campaign, state_file);

    CREATE TABLE opt_outs (
        phone           TEXT PRIMARY KEY,
        added_at        TEXT NOT NULL,
        -- where it came from: "cli", or the imported file's path
        source          TEXT NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 2: a message is reserved (`sending`) in the same moment its row is
    // claimed, so runs of other campaigns count it before it leaves; one
    // entry per sender (a campaign name and its state file) and phone (a
    // resend updates it, and a resend that does not go out restores what it
    // replaced, `prior_state` and `prior_at`). Senders get a number so each message carries
    // a small key instead of two paths, and the table has two indexes
    // besides its own: it takes a write per message sent. A state's own
    // messages (read once per run or plan) are found by scanning. `state` is
    // in no index, so settling rewrites no index.
    r#"
    CREATE TABLE senders (
        id              INTEGER PRIMARY KEY,
        campaign        TEXT NOT NULL,
        state_file      TEXT NOT NULL,
        UNIQUE (campaign, state_file)
    );
    INSERT INTO senders (campaign, state_file)
        SELECT DISTINCT campaign, state_file FROM messages;
    CREATE TABLE messages_v2 (
        id              INTEGER PRIMARY KEY,
        phone           TEXT NOT NULL,
        sender          INTEGER NOT NULL REFERENCES senders(id),
        row             INTEGER NOT NULL,
        at              TEXT NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('sending', 'sent', 'uncertain')),
        message_id      TEXT,
        prior_state     TEXT CHECK (prior_state IN ('sent', 'uncertain')),
        -- and the replaced message's time, restored with it
        prior_at        TEXT,
        -- also the frequency cap's index: a phone's messages, by sender
        UNIQUE (phone, sender)
    );
    INSERT INTO messages_v2 (id, phone, sender, row, at, state, message_id)
        SELECT m.id, m.phone, s.id, m.row, m.at, m.state, m.message_id
        FROM messages m JOIN senders s ON s.campaign = m.campaign AND s.state_file = m.state_file
        WHERE m.id IN (SELECT max(id) FROM messages GROUP BY campaign, state_file, phone);
    DROP TABLE messages;
    ALTER TABLE messages_v2 RENAME TO messages;
    CREATE INDEX messages_by_at ON messages(at, phone);
    "#,
    // 3: the ledger handle (one run) whose reservation an entry is: runs of
    // one shared state reserve under one sender, and a late "not sent" of
    // one must not take back another's reservation of the same phone.
    r#"
    ALTER TABLE messages ADD COLUMN reserved_by TEXT;
    "#,
];

/// `PRAGMA application_id` of a ledger ("C8LG"), so a state file or another
/// program's database given as the ledger is refused untouched.
pub const APPLICATION_ID: i32 = 0x4338_4C47;

/// The schema version this build writes.
pub fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Why the file is not a ledger (`Ok(Err(what))`), or `Ok(Ok(()))` when it
/// is one or is empty. Reads only.
pub fn check_owner(conn: &Connection) -> rusqlite::Result<Result<(), String>> {
    let id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let objects: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    if id == APPLICATION_ID || (id == 0 && objects == 0) {
        return Ok(Ok(()));
    }
    if id == crate::state::schema::APPLICATION_ID {
        return Ok(Err("a campaign's state file".to_owned()));
    }
    if id != 0 {
        return Ok(Err(format!(
            "an SQLite database of another program (application id {id:#x})"
        )));
    }
    Ok(Err(format!(
        "an SQLite database with {objects} tables and indexes of its own"
    )))
}

/// Brings the file up to [`latest_version`]; `Ok(Err(found))` for a file
/// from a newer build, which is refused rather than guessed at.
///
/// Runs of different campaigns may open a new ledger at the same moment, so
/// each step takes the write lock first (IMMEDIATE) and reads the version
/// under it: the second process finds the first one's work done instead of
/// creating the same tables again.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<Result<(), i64>> {
    loop {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current > latest_version() {
            return Ok(Err(current));
        }
        let Some(sql) = MIGRATIONS.get(current as usize) else {
            tx.commit()?;
            return Ok(Ok(()));
        };
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", current + 1)?;
        // Set with the first migration, so a half-made ledger is still ours.
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.commit()?;
    }
}
