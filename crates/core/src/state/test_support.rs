//! Plans for unit tests of the state and of what reads it (reports): an
//! in-memory state with sendable rows, written through the same seam a run
//! uses; and the stores the conformance tests run on ([`TestStore`]): an
//! SQLite file, and a campaign in a fresh PostgreSQL database when the tests
//! have a server ([`PG_URL_ENV`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::Utc;

use super::{
    PgTarget, PlanInfo, PlanWrite, PlannedRow, StateDb, StateError, StateLocation, StateRead,
    StateStore, open_for_reading, open_for_run, timestamp, write_plan,
};

/// A sendable row at CSV row `row`, with a distinct Kenyan phone.
pub fn sendable(row: u64) -> PlannedRow {
    let phone = format!("+2547{:08}", 11_000_000 + row);
    PlannedRow {
        row,
        outcome: Ok(format!("{{\"to\":\"{phone}\"}}")),
        phone: Some(phone),
        name: None,
        timezone: None,
    }
}

/// The plan record of a campaign called `name` read from `rows` CSV rows.
pub fn plan_info(name: &str, rows: u64) -> PlanInfo {
    let at = timestamp(Utc::now());
    PlanInfo {
        campaign_name: name.into(),
        message_type: "text".into(),
        campaign_file: "campaign.toml".into(),
        csv_file: "recipients.csv".into(),
        message_fingerprint: "fp".into(),
        csv_sha256: "sha".into(),
        csv_rows: rows,
        planned_at: at.clone(),
        updated_at: at,
    }
}

/// An in-memory state planned from `rows`.
pub fn planned_state(name: &str, rows: &[PlannedRow]) -> StateDb {
    let mut db = StateDb::in_memory().expect("in-memory state");
    write_plan(&mut db, PlanWrite::Fresh, |sink| {
        for row in rows {
            sink.insert(row)?;
        }
        Ok::<_, StateError>(((), plan_info(name, rows.len() as u64)))
    })
    .expect("plan");
    db
}

/// The environment variable naming the PostgreSQL server of the tests (CI
/// sets it; `scripts/pg-throwaway start DIR` starts one for a developer).
pub const PG_URL_ENV: &str = "CONVERS8_TEST_PG_URL";

/// The test server's URL, or `None` (with a one-line notice on stderr) when
/// there is none. Panics under `CI=true`: CI must provide a server. As
/// `tests/common/pg.rs` does for the integration tests.
pub fn test_pg_url() -> Option<String> {
    match std::env::var(PG_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().to_owned()),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI must provide a PostgreSQL server: set {PG_URL_ENV}"
            );
            eprintln!(
                "skipped: no PostgreSQL server; set {PG_URL_ENV} or run `scripts/pg-throwaway start DIR`"
            );
            None
        }
    }
}

/// A database of its own on the test server, so tests running in parallel
/// never share tables; dropped (with its connections) when this is dropped.
pub struct TestDatabase {
    /// The URL of the new database.
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates a fresh, uniquely named database on the server of `base_url`
    /// (a role allowed to CREATE DATABASE).
    pub fn create(base_url: &str) -> TestDatabase {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "u_{}_{}_{nanos:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let admin_url = base_url.to_owned();
        admin_execute(
            &admin_url,
            &format!("CREATE DATABASE \"{name}\" TEMPLATE template0"),
        )
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        TestDatabase {
            url: with_database(base_url, &name),
            name,
            admin_url,
        }
    }

    /// Runs SQL in this database, past the store (to play a clock or a crash).
    pub fn execute(&self, sql: &str) {
        admin_execute(&self.url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = admin_execute(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
        );
    }
}

/// One statement on its own connection (TLS as the URL says, as the store
/// connects).
fn admin_execute(url: &str, sql: &str) -> Result<(), String> {
    let mut client = super::pg::connect(&PgTarget::new(url, "tests")).map_err(|e| e.to_string())?;
    client.batch_execute(sql).map_err(|e| e.to_string())
}

/// `url` with its database (the path) replaced by `name`, keeping any query.
fn with_database(url: &str, name: &str) -> String {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    let (base, query) = match url[after_scheme..].find('?') {
        Some(q) => url.split_at(after_scheme + q),
        None => (url, ""),
    };
    let authority_end = base[after_scheme..]
        .find('/')
        .map(|i| after_scheme + i)
        .unwrap_or(base.len());
    format!("{}/{name}{query}", &base[..authority_end])
}

/// An empty state in one of the stores, for the conformance tests: each
/// contract test takes one and runs the same on both. Stores are opened
/// through the seam the program uses ([`open_for_run`], [`open_for_reading`]).
pub struct TestStore {
    location: StateLocation,
    /// What holds the state; dropped after every handle a test opened.
    home: Home,
}

enum Home {
    /// A temporary folder with the state file in it.
    File(#[allow(dead_code)] tempfile::TempDir),
    /// A fresh database on the test server.
    Postgres(TestDatabase),
}

impl TestStore {
    /// A state file (`c.state.db`) in a fresh temporary folder.
    pub fn sqlite() -> TestStore {
        let dir = tempfile::tempdir().expect("tempdir");
        TestStore {
            location: StateLocation::File(dir.path().join("c.state.db")),
            home: Home::File(dir),
        }
    }

    /// Campaign `t` in a fresh database on the test server; `None` (the test
    /// is skipped, saying so) without a server.
    pub fn postgres() -> Option<TestStore> {
        let db = TestDatabase::create(&test_pg_url()?);
        Some(TestStore {
            location: StateLocation::Postgres(PgTarget::new(&db.url, "t")),
            home: Home::Postgres(db),
        })
    }

    /// Where the state is.
    pub fn location(&self) -> &StateLocation {
        &self.location
    }

    /// Opens the state for a run, as `run` does. Only one run handle at a
    /// time: a second one waits (PostgreSQL: the setup lock, until the first
    /// starts its run) or is refused (SQLite: the run lock).
    pub fn open_for_run(&self) -> Box<dyn StateStore> {
        open_for_run(&self.location).expect("open for a run")
    }

    /// Opens the planned state for reading, as `status` and `report` do.
    pub fn open_for_reading(&self) -> Box<dyn StateRead> {
        open_for_reading(&self.location).expect("open for reading")
    }

    /// Runs SQL in the test's database, past the store (PostgreSQL only: to
    /// play a crash, a lost connection, another runner's verdict).
    pub fn sql(&self, sql: &str) {
        match &self.home {
            Home::Postgres(db) => db.execute(sql),
            Home::File(_) => panic!("SQL past the store is for a database"),
        }
    }

    /// The run holding `run` dies mid-flight (killed, power cut): it writes
    /// nothing more and its rows in flight stay `sending`. For a file, its
    /// lock goes with the process. For a database, its lease then runs out:
    /// set to have run out rather than waited for. (Closing a handle with
    /// rows in flight leaves its runner live, as a killed process would.)
    pub fn run_dies(&self, run: Box<dyn StateStore>) {
        drop(run);
        if let Home::Postgres(db) = &self.home {
            db.execute(
                "UPDATE convers8.runners SET lease_until = now() - interval '1 second'
                 WHERE state = 'live'",
            );
        }
    }
}
