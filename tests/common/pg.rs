//! PostgreSQL for the tests: the server named by `CONVERS8_TEST_PG_URL` (CI
//! starts one with `scripts/pg-throwaway`), and a fresh database per test so
//! tests running in parallel never share tables.
//! Without a server the PostgreSQL tests are skipped, saying so; under
//! `CI=true` that is a failure.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const PG_URL_ENV: &str = "CONVERS8_TEST_PG_URL";

const NO_PSQL: &str = "psql not found: install the Debian package postgresql-client";

/// The test server's URL, or `None` (with a notice on stderr) when there is
/// none. Panics under `CI=true`: CI must provide a server.
pub fn test_pg_url() -> Option<String> {
    match std::env::var(PG_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().to_string()),
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

/// A database of its own on the test server, dropped (with its connections)
/// when this value is dropped.
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
        let pid = std::process::id();
        let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("t_{pid}_{counter}_{nanos:08x}");
        let admin_url = base_url.to_string();
        run_psql(
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

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = run_psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
        );
    }
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
    let authority = &base[..authority_end];
    format!("{authority}/{name}{query}")
}

/// `psql` on PATH, else the highest /usr/lib/postgresql/*/bin/psql.
pub fn psql_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("psql");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let version = entry.file_name();
        let version = version.to_string_lossy();
        let major: u32 = match version.split('.').next().unwrap_or_default().parse() {
            Ok(major) => major,
            Err(_) => continue,
        };
        let candidate = entry.path().join("bin/psql");
        if candidate.is_file() && best.as_ref().is_none_or(|(b, _)| major > *b) {
            best = Some((major, candidate));
        }
    }
    best.map(|(_, path)| path)
}

/// Runs one SQL command with psql, stopping at the first error.
fn run_psql(url: &str, sql: &str) -> Result<(), String> {
    Psql::try_new(url)?.try_rows(sql).map(drop)
}

/// psql against one database: the test crate has no PostgreSQL driver.
pub struct Psql {
    /// The database's URL.
    pub url: String,
    psql: PathBuf,
}

impl Psql {
    /// psql against `url`. Panics without psql (it is installed wherever a
    /// server is configured).
    pub fn new(url: &str) -> Psql {
        Psql::try_new(url).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_new(url: &str) -> Result<Psql, String> {
        Ok(Psql {
            url: url.to_owned(),
            psql: psql_path().ok_or_else(|| NO_PSQL.to_string())?,
        })
    }

    /// Rows of `sql`, each a vector of its columns as text (NULL is ""), or
    /// psql's error (it stops at the first).
    pub fn try_rows(&self, sql: &str) -> Result<Vec<Vec<String>>, String> {
        let out = Command::new(&self.psql)
            .args(["-X", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1"])
            .args(["-d", &self.url, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.psql.display()))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('|').map(str::to_owned).collect())
            .collect())
    }

    /// Rows of `sql`, each a vector of its columns as text (NULL is "");
    /// panics on an error.
    pub fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        self.try_rows(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The one value of `sql` ("" when it returns no row).
    pub fn value(&self, sql: &str) -> String {
        self.rows(sql)
            .first()
            .and_then(|r| r.first())
            .cloned()
            .unwrap_or_default()
    }

    /// The one value of `sql`, a number (`SELECT count(*) …`).
    pub fn count(&self, sql: &str) -> u64 {
        let v = self.value(sql);
        v.parse()
            .unwrap_or_else(|_| panic!("{sql}: not a number: {v:?}"))
    }

    /// The runner id a process registered under in `convers8.runners` (the
    /// newest for its pid), waiting up to `within` for it to register.
    pub fn runner_of(&self, pid: u32, within: Duration) -> i64 {
        let deadline = Instant::now() + within;
        loop {
            let v = self.value(&format!(
                "SELECT id FROM convers8.runners WHERE pid = {pid} ORDER BY id DESC LIMIT 1"
            ));
            if let Ok(id) = v.parse() {
                return id;
            }
            assert!(
                Instant::now() < deadline,
                "process {pid} registered no runner in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
