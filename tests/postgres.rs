//! PostgreSQL for the tests: the server `.ci/run` starts (or
//! `CONVERS8_TEST_PG_URL` names) gives every test a database of its own, and
//! takes it back when the test ends — what the PostgreSQL state store's tests
//! build on. Skipped with a notice when no server is configured (a failure
//! under `CI=true`).

mod common;

use common::pg::{Psql, TestDatabase, test_pg_url};

#[test]
fn each_test_gets_a_database_of_its_own_and_it_is_dropped_after() {
    let Some(server) = test_pg_url() else {
        return;
    };
    let first = TestDatabase::create(&server);
    let second = TestDatabase::create(&server);
    assert_ne!(first.name(), second.name());
    let (in_first, in_second) = (Psql::new(&first.url), Psql::new(&second.url));
    assert_eq!(in_first.value("SELECT current_database()"), first.name());
    assert_eq!(in_second.value("SELECT current_database()"), second.name());

    // A table in one is not in the other.
    in_first.rows("CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
    assert_eq!(in_first.value("SELECT count(*) FROM t"), "1");
    assert_eq!(
        in_second.value("SELECT count(*) FROM pg_tables WHERE tablename = 't'"),
        "0"
    );

    // Dropped with the value.
    let name = first.name().to_owned();
    drop(first);
    assert_eq!(
        in_second.value(&format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{name}'"
        )),
        "0"
    );
}
