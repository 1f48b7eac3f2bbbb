//! The state file's schema as an ordered, add-only list of migrations, applied
//! atomically and tracked with `PRAGMA user_version`.
//!
//! Never edit a migration that has shipped: add a new one at the end. PRAGMAs
//! that belong to a connection (WAL, synchronous, busy timeout) are set in
//! [`super::StateDb`], not here, because migrations run once per file.

use rusqlite::Connection;

/// Each entry moves the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the campaign as planned, one row per CSV data row, and a log of runs.
    r#"
    CREATE TABLE plan (
        id              INTEGER PRIMARY KEY CHECK (id = 1),
        campaign_name   TEXT NOT NULL,
        message_type    TEXT NOT NULL,
        campaign_file   TEXT NOT NULL,
        csv_file        TEXT NOT NULL,
        -- what decides the messages: content, vars, columns, country
        message_fingerprint TEXT NOT NULL,
        csv_sha256      TEXT NOT NULL,
        csv_rows        INTEGER NOT NULL,
        planned_at      TEXT NOT NULL,
        updated_at      TEXT NOT NULL
    );

    CREATE TABLE recipients (
        id              INTEGER PRIMARY KEY,
        -- 1-based CSV data row in the file as it was when this row was planned
        row             INTEGER NOT NULL,
        -- which plan or --add-new-recipients pass added it (1 = the first plan)
        generation      INTEGER NOT NULL,
        phone           TEXT,
        name            TEXT,
        state           TEXT NOT NULL CHECK (state IN
                            ('pending','sending','sent','failed','uncertain','invalid','duplicate')),
        body            TEXT,
        attempts        INTEGER NOT NULL DEFAULT 0,
        message_id      TEXT,
        error_code      TEXT,
        error_details   TEXT,
        updated_at      TEXT,
        sent_at         TEXT
    );
    CREATE INDEX recipients_by_state ON recipients(state, id);
    CREATE INDEX recipients_by_phone ON recipients(phone);
    CREATE INDEX recipients_by_sent_at ON recipients(sent_at) WHERE sent_at IS NOT NULL;

    CREATE TABLE runs (
        id              INTEGER PRIMARY KEY,
        pid             INTEGER NOT NULL,
        started_at      TEXT NOT NULL,
        finished_at     TEXT,
        outcome         TEXT,
        sent            INTEGER NOT NULL DEFAULT 0,
        failed          INTEGER NOT NULL DEFAULT 0,
        uncertain       INTEGER NOT NULL DEFAULT 0
    );
    "#,
    // 2: rows by CSV row number (preview --row, and --add-new-recipients
    // recognising an unusable row it has already planned).
    r#"
    CREATE INDEX recipients_by_row ON recipients(row);
    "#,
    // 3: who holds the run lock, so a second run can name the holder from
    // whatever path it reached the state by (the lock is on this file).
    r#"
    CREATE TABLE holder (
        id              INTEGER PRIMARY KEY CHECK (id = 1),
        pid             INTEGER NOT NULL,
        since           TEXT NOT NULL
    );
    "#,
    // 4: each recipient's own IANA zone, decided at plan time, for a send
    // window in the recipients' own hours (NULL for any other campaign).
    r#"
    ALTER TABLE recipients ADD COLUMN timezone TEXT;
    "#,
    // 5: the final state `suppressed` (opted out on the ledger, or in a
    // campaign's exclude file). SQLite cannot change a CHECK constraint in
    // place, so the table is rebuilt: every column and row copied as it is,
    // ids kept (outcomes and claims name rows by id), indexes made again.
    r#"
    CREATE TABLE recipients_new (
        id              INTEGER PRIMARY KEY,
        row             INTEGER NOT NULL,
        generation      INTEGER NOT NULL,
        phone           TEXT,
        name            TEXT,
        state           TEXT NOT NULL CHECK (state IN
                            ('pending','sending','sent','failed','uncertain','invalid','duplicate',
                             'suppressed')),
        body            TEXT,
        attempts        INTEGER NOT NULL DEFAULT 0,
        message_id      TEXT,
        error_code      TEXT,
        error_details   TEXT,
        updated_at      TEXT,
        sent_at         TEXT,
        timezone        TEXT
    );
    INSERT INTO recipients_new
        (id, row, generation, phone, name, state, body, attempts, message_id,
         error_code, error_details, updated_at, sent_at, timezone)
    SELECT id, row, generation, phone, name, state, body, attempts, message_id,
           error_code, error_details, updated_at, sent_at, timezone
    FROM recipients;
    DROP TABLE recipients;
    ALTER TABLE recipients_new RENAME TO recipients;
    CREATE INDEX recipients_by_state ON recipients(state, id);
    CREATE INDEX recipients_by_phone ON recipients(phone);
    CREATE INDEX recipients_by_sent_at ON recipients(sent_at) WHERE sent_at IS NOT NULL;
    CREATE INDEX recipients_by_row ON recipients(row);
    "#,
];

/// `PRAGMA application_id` of a state file ("C8CC"), so a path that leads
/// to some other program's SQLite database is refused before anything in it
/// changes. Files from versions before it was set have 0 and a schema version.
pub const APPLICATION_ID: i32 = 0x4338_4343;

/// Why an SQLite file is not a state of this tool, or `Ok` when it is one (or
/// empty, about to become one). Reads only.
pub fn check_owner(conn: &Connection) -> rusqlite::Result<Result<(), String>> {
    let id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    if id != 0 && id != APPLICATION_ID {
        return Ok(Err(format!(
            "an SQLite database of another program (application id {id:#x})"
        )));
    }
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let objects: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    if id == 0 && version == 0 && objects > 0 {
        return Ok(Err(format!(
            "an SQLite database with {objects} tables and indexes of its own"
        )));
    }
    Ok(Ok(()))
}

/// The schema version this build writes.
pub fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Brings the file up to [`latest_version`]. A file from a newer build is refused
/// rather than guessed at.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<Result<(), i64>> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > latest_version() {
        return Ok(Err(current));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    let id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    if id != APPLICATION_ID {
        conn.pragma_update(None, "application_id", APPLICATION_ID)?;
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_in_order_and_are_idempotent() {
        let mut conn = Connection::open_in_memory().expect("memory db");
        migrate(&mut conn).expect("sql").expect("version");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, latest_version());
        // A second pass over an up-to-date file changes nothing.
        migrate(&mut conn).expect("sql").expect("version");
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(tables, 4);
        // 4: each recipient's own zone.
        let zone_column: i64 = conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('recipients') WHERE name = 'timezone'",
                [],
                |r| r.get(0),
            )
            .expect("columns");
        assert_eq!((latest_version(), zone_column), (5, 1));
    }

    #[test]
    fn other_programs_databases_are_told_apart() {
        let conn = Connection::open_in_memory().expect("memory db");
        assert_eq!(
            check_owner(&conn).expect("sql"),
            Ok(()),
            "empty: becomes ours"
        );
        conn.execute_batch("CREATE TABLE accounts (id INTEGER)")
            .expect("create");
        assert!(
            check_owner(&conn).expect("sql").is_err(),
            "someone's tables"
        );
        let mut ours = Connection::open_in_memory().expect("memory db");
        migrate(&mut ours).expect("sql").expect("version");
        assert_eq!(check_owner(&ours).expect("sql"), Ok(()));
        ours.pragma_update(None, "application_id", 7).expect("set");
        assert!(check_owner(&ours).expect("sql").is_err(), "another id");
    }

    #[test]
    fn the_suppressed_rebuild_keeps_every_row_column_and_index() {
        let mut conn = Connection::open_in_memory().expect("memory db");
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).expect("old schema");
        }
        conn.pragma_update(None, "user_version", 3).expect("set");
        conn.execute_batch(
            "INSERT INTO recipients (id, row, generation, phone, name, state, body, attempts,
                                     message_id, error_code, error_details, updated_at, sent_at)
             VALUES (7, 3, 2, '+254700000001', 'A', 'sent', '{}', 2, 'm1', NULL, NULL, 'u', 's'),
                    (9, 4, 2, 'x', NULL, 'invalid', NULL, 0, NULL, 'invalid_phone', 'd', 'u', NULL)",
        )
        .expect("rows");
        migrate(&mut conn).expect("sql").expect("version");
        // id, row, generation, state, attempts, message_id, error_code
        type Row = (i64, i64, i64, String, i64, Option<String>, Option<String>);
        let rows: Vec<Row> = conn
            .prepare("SELECT id, row, generation, state, attempts, message_id, error_code FROM recipients ORDER BY id")
            .expect("select")
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            rows,
            vec![
                (7, 3, 2, "sent".into(), 2, Some("m1".into()), None),
                (
                    9,
                    4,
                    2,
                    "invalid".into(),
                    0,
                    None,
                    Some("invalid_phone".into())
                ),
            ]
        );
        conn.execute(
            "UPDATE recipients SET state = 'suppressed' WHERE id = 9",
            [],
        )
        .expect("the new state is allowed");
        assert!(
            conn.execute("UPDATE recipients SET state = 'bogus' WHERE id = 9", [])
                .is_err(),
            "the CHECK constraint is still there"
        );
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'recipients'",
                [],
                |r| r.get(0),
            )
            .expect("indexes");
        assert_eq!(indexes, 4);
    }

    #[test]
    fn a_newer_file_is_refused() {
        let mut conn = Connection::open_in_memory().expect("memory db");
        conn.pragma_update(None, "user_version", 99).expect("set");
        assert_eq!(migrate(&mut conn).expect("sql"), Err(99));
    }
}
