//! The PostgreSQL state against the SQLite file, and several runners on one
//! campaign.
//!
//! 1. Planning: the same CSV of `BENCH_PLAN_N` rows (default 1,000,000)
//!    planned with `run --dry-run` into an SQLite file and into PostgreSQL
//!    (rows go in with `COPY`), in rows per second.
//! 2. One runner: `BENCH_N` rows (default 50,000), planned beforehand, sent
//!    with concurrency 64 against an unlimited sandbox process, with the
//!    state in a file and in PostgreSQL (both with `ledger = false`, so the
//!    store is what differs).
//! 3. The ledger's cost: the same run, PostgreSQL state, with a cap and a
//!    daily limit that never bind (so every claim takes the admission lock
//!    and counts), the ledger a file on this machine against the ledger in
//!    the database.
//! 4. Several runners: 1, 2 and 3 runners on one campaign with
//!    `rate_per_second = 1000`, against a sandbox that answers after 100 ms
//!    (a link to a far API). Their aggregate rate, measured from the
//!    sandbox's own receive times of the first and last message, must reach
//!    97 % of 1,000/s: the shared pace hands out slots across runners
//!    without losing any.
//!
//! The server: `CONVERS8_BENCH_PG_URL`, else `CONVERS8_TEST_PG_URL`, else a
//! throw-away cluster started with `scripts/pg-throwaway` (and stopped).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn main() {
    if skip_unless_bench("postgres") {
        return;
    }
    let server = PgServer::find_or_start();
    let plan_n = env_count("BENCH_PLAN_N", 1_000_000);
    let n = env_count("BENCH_N", 50_000);
    let mut table = Table::new(format!(
        "postgres: the PostgreSQL state against SQLite, and several runners ({})",
        machine()
    ));

    // 1. Planning.
    let dir = CampaignDir::without_ledger(plan_n, "concurrency = 64");
    let sqlite_plan = plan(&dir);
    let pg_planned = pg_plan(&dir, &server.url, "bench-plan");
    table.info(
        &format!("plan {plan_n} rows, SQLite"),
        format!(
            "{:.2} s ({:.0} rows/s)",
            sqlite_plan.as_secs_f64(),
            per_second(plan_n as f64, sqlite_plan)
        ),
    );
    table.info(
        &format!("plan {plan_n} rows, PostgreSQL (COPY)"),
        format!(
            "{:.2} s ({:.0} rows/s)",
            pg_planned.as_secs_f64(),
            per_second(plan_n as f64, pg_planned)
        ),
    );
    drop(dir);

    // 2. One runner, unlimited sandbox.
    let dir = CampaignDir::without_ledger(n, "concurrency = 64");
    plan(&dir);
    let sqlite_rate = {
        let sandbox = SandboxProcess::start(&["--rate", "0"]);
        let toml = dir.toml();
        let (took, _) = run_timed(
            &mut command(Some(&sandbox), &["run", path(&toml)]),
            Duration::from_secs(900),
        );
        assert_eq!(sandbox.stats().accepted, n as u64, "every row sent once");
        per_second(n as f64, took)
    };
    pg_plan(&dir, &server.url, "bench-one");
    let pg_rate = {
        let sandbox = SandboxProcess::start(&["--rate", "0"]);
        let toml = dir.toml();
        let (took, _) = run_timed(
            &mut command(
                Some(&sandbox),
                &["run", path(&toml), "--state", &server.url],
            ),
            Duration::from_secs(900),
        );
        assert_eq!(sandbox.stats().accepted, n as u64, "every row sent once");
        per_second(n as f64, took)
    };
    table.info(
        &format!("one runner, {n} rows, SQLite"),
        format!("{sqlite_rate:.0} msg/s"),
    );
    table.info(
        &format!("one runner, {n} rows, PostgreSQL"),
        format!(
            "{pg_rate:.0} msg/s ({:.0} % of SQLite)",
            100.0 * pg_rate / sqlite_rate
        ),
    );
    drop(dir);

    // 3. The ledger's cost, a file against the database.
    let limits = format!("concurrency = 64\ndaily_limit = {}", 10 * n);
    let audience = "\n[audience]\nmax_messages = 5\nper = \"7d\"\n";
    let mut ledger_rates = Vec::new();
    for in_database in [false, true] {
        let dir = CampaignDir::new(n, &limits);
        let toml = dir.toml();
        let mut text = std::fs::read_to_string(&toml).expect("read the campaign");
        if in_database {
            // No [ledger] path: the campaign records in its state's database.
            text = text.replace("[ledger]\npath = \"ledger.db\"\n", "");
        }
        std::fs::write(&toml, format!("{text}{audience}")).expect("write the campaign");
        let name = if in_database {
            "bench-ledger-db"
        } else {
            "bench-ledger-file"
        };
        pg_plan(&dir, &server.url, name);
        let sandbox = SandboxProcess::start(&["--rate", "0"]);
        let mut cmd = command(
            Some(&sandbox),
            &["run", path(&toml), "--state", &server.url],
        );
        cmd.env_remove("CONVERS8_LEDGER");
        let (took, _) = run_timed(&mut cmd, Duration::from_secs(900));
        assert_eq!(sandbox.stats().accepted, n as u64, "every row sent once");
        ledger_rates.push(per_second(n as f64, took));
    }
    table.info(
        &format!("one runner, {n} rows, PostgreSQL, cap + daily limit, ledger file"),
        format!("{:.0} msg/s", ledger_rates[0]),
    );
    table.info(
        &format!("one runner, {n} rows, PostgreSQL, cap + daily limit, ledger in the database"),
        format!(
            "{:.0} msg/s ({:.0} % of the ledger file)",
            ledger_rates[1],
            100.0 * ledger_rates[1] / ledger_rates[0]
        ),
    );

    // 4. Several runners at 1,000/s over a 100 ms link.
    let rate = 1000.0;
    let rows = env_count("BENCH_RUNNERS_N", 15_000);
    for runners in 1..=3 {
        let name = format!("bench-runners-{runners}");
        let dir = CampaignDir::without_ledger(
            rows,
            "concurrency = 128\nrate_per_second = 1000\ntimeout_secs = 30",
        );
        pg_plan(&dir, &server.url, &name);
        let sandbox = SandboxProcess::start(&["--rate", "0", "--latency-ms", "100"]);
        let toml = dir.toml();
        let mut children: Vec<Child> = (0..runners)
            .map(|_| {
                command(
                    Some(&sandbox),
                    &["run", path(&toml), "--state", &server.url],
                )
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("a runner starts")
            })
            .collect();
        let started = Instant::now();
        for child in &mut children {
            let status = child.wait().expect("a runner ends");
            assert!(status.success(), "a runner failed: {status:?}");
        }
        let wall = started.elapsed();
        let messages = sandbox.messages();
        assert_eq!(messages.len(), rows, "every row sent once");
        let span = received_span(&messages);
        let aggregate = (rows - 1) as f64 / span.as_secs_f64();
        table.check(
            &format!("{runners} runner(s), {rows} rows at 1,000/s, 100 ms link"),
            format!(
                "{aggregate:.0} msg/s (first to last message; {:.1} s wall)",
                wall.as_secs_f64()
            ),
            ">= 970 msg/s (97 %)",
            aggregate >= 0.97 * rate,
        );
    }
    table.print();
}

/// The time from the first message the sandbox received to the last.
fn received_span(messages: &[convers8_campaign::sandbox::RecordedMessage]) -> Duration {
    let times: Vec<chrono::DateTime<chrono::Utc>> = messages
        .iter()
        .filter_map(|m| chrono::DateTime::parse_from_rfc3339(&m.received_at).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .collect();
    let first = times.iter().min().expect("messages were received");
    let last = times.iter().max().expect("messages were received");
    (*last - *first).to_std().unwrap_or_default()
}

/// Plans the campaign into PostgreSQL under `name`; returns how long it took.
fn pg_plan(dir: &CampaignDir, url: &str, name: &str) -> Duration {
    let toml = dir.toml();
    let text = std::fs::read_to_string(&toml).expect("read the campaign");
    // Unique per bench run: a server given by the environment may hold the
    // campaigns of an earlier run.
    let unique = format!("{name}-{}-{}", std::process::id(), run_stamp());
    let named = text.replacen("name = \"bench\"", &format!("name = \"{unique}\""), 1);
    std::fs::write(&toml, named).expect("name the campaign");
    run_timed(
        &mut command(None, &["run", path(&toml), "--dry-run", "--state", url]),
        Duration::from_secs(900),
    )
    .0
}

/// Seconds since the epoch when the bench started.
fn run_stamp() -> u64 {
    static STAMP: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *STAMP.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// The server the bench uses: one given, or a throw-away one of its own.
struct PgServer {
    url: String,
    /// The throw-away cluster's folder, stopped and removed on drop.
    own: Option<PathBuf>,
}

impl PgServer {
    fn find_or_start() -> PgServer {
        for var in ["CONVERS8_BENCH_PG_URL", "CONVERS8_TEST_PG_URL"] {
            if let Ok(url) = std::env::var(var)
                && !url.trim().is_empty()
            {
                return PgServer {
                    url: url.trim().to_owned(),
                    own: None,
                };
            }
        }
        let dir = std::env::temp_dir().join(format!("convers8-bench-pg-{}", std::process::id()));
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-throwaway");
        let status = Command::new(&script)
            .arg("start")
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .expect("scripts/pg-throwaway runs");
        assert!(
            status.success(),
            "no PostgreSQL: set CONVERS8_BENCH_PG_URL, or install the Debian package postgresql"
        );
        let url = std::fs::read_to_string(dir.join("url")).expect("the cluster's URL");
        PgServer {
            url: url.trim().to_owned(),
            own: Some(dir),
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(dir) = &self.own {
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-throwaway");
            let _ = Command::new(script).arg("stop").arg(dir).status();
        }
    }
}
