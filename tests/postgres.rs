//! PostgreSQL for the tests: the server `.ci/run` starts (or
//! `CONVERS8_TEST_PG_URL` names) gives every test a database of its own, and
//! takes it back when the test ends — what the PostgreSQL state store's tests
//! build on. Skipped with a notice when no server is configured (a failure
//! under `CI=true`).

mod common;

use std::process::Command;

use common::pg::{TestDatabase, psql_path, test_pg_url};

/// One value from `psql -Atc SQL` on `url`.
fn query(url: &str, sql: &str) -> String {
    let psql = psql_path().expect("psql is installed where a server is configured");
    let out = Command::new(psql)
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn each_test_gets_a_database_of_its_own_and_it_is_dropped_after() {
    let Some(server) = test_pg_url() else {
        return;
    };
    let first = TestDatabase::create(&server);
    let second = TestDatabase::create(&server);
    assert_ne!(first.name(), second.name());
    assert_eq!(query(&first.url, "SELECT current_database()"), first.name());
    assert_eq!(
        query(&second.url, "SELECT current_database()"),
        second.name()
    );

    // A table in one is not in the other.
    query(
        &first.url,
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1)",
    );
    assert_eq!(query(&first.url, "SELECT count(*) FROM t"), "1");
    assert_eq!(
        query(
            &second.url,
            "SELECT count(*) FROM pg_tables WHERE tablename = 't'"
        ),
        "0"
    );

    // Dropped with the value.
    let name = first.name().to_owned();
    drop(first);
    assert_eq!(
        query(
            &second.url,
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'")
        ),
        "0"
    );
}
