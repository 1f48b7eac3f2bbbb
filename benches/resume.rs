//! Resume start-up: on a 1,000,000-row state with all but the last 1,000 rows
//! sent, the time from starting `run` to the first message the sandbox
//! accepts must be ≤ 1 s — a resumed run must not re-read or re-plan what is
//! already done.
//!
//! The state is built quickly: the CSV is planned with `run --dry-run`, then
//! one `UPDATE` marks every row but the last 1,000 as sent (not timed). The
//! sandbox runs as its own process with `--log`; its log line for the first
//! message carries `received_at` (milliseconds, UTC), compared with the wall
//! clock taken just before the runner is spawned. `BENCH_N` (default
//! 1,000,000) overrides the row count.

mod common;

use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use common::*;
use convers8_campaign::state::{StateDb, StateRead};

const LEFT: usize = 1_000;

fn main() {
    if skip_unless_bench("resume") {
        return;
    }
    let n = env_count("BENCH_N", 1_000_000);
    let dir = CampaignDir::new(n, "concurrency = 32");
    let plan_time = plan(&dir);
    let setup = Instant::now();
    {
        let conn = rusqlite::Connection::open(dir.state()).expect("the state opens");
        let marked = conn
            .execute(
                "UPDATE recipients SET state = 'sent', sent_at = '2020-01-01T00:00:00.000Z',
                   message_id = 'wamid.bench' || id, attempts = 1
                 WHERE state = 'pending'
                   AND id <= (SELECT max(id) FROM recipients) - ?1",
                [LEFT as i64],
            )
            .expect("mark rows sent");
        assert_eq!(marked, n - LEFT, "every row but the last {LEFT} is sent");
    }
    let setup_time = setup.elapsed();

    let log = dir.dir.path().join("sandbox.jsonl");
    let sandbox = SandboxProcess::start(&["--rate", "0", "--log", log.to_str().expect("path")]);
    let toml = dir.toml();
    let toml = toml.to_str().expect("utf-8 temp path");
    let spawned_at = SystemTime::now();
    let (elapsed, _) = run_timed(
        &mut command(Some(&sandbox), &["run", toml]),
        Duration::from_secs(300),
    );
    let first = first_received_at(&log);
    let to_first = first
        .signed_duration_since(DateTime::<Utc>::from(spawned_at))
        .to_std()
        .unwrap_or(Duration::ZERO);
    let counts = StateDb::open_read_only(&dir.state())
        .expect("state")
        .counts()
        .expect("counts");

    let mut table = Table::new(format!(
        "resume: {n}-row state, all but {LEFT} sent ({})",
        machine()
    ));
    table.info(
        "set-up (not timed below): plan / mark sent",
        format!(
            "{:.1} s / {:.1} s",
            plan_time.as_secs_f64(),
            setup_time.as_secs_f64()
        ),
    );
    table.info(
        "CSV size",
        format!(
            "{:.0} MB",
            std::fs::metadata(dir.csv()).map_or(0, |m| m.len()) as f64 / 1e6
        ),
    );
    table.check(
        "start of `run` to the sandbox's first accepted message",
        format!("{} ms", to_first.as_millis()),
        "<= 1000 ms",
        to_first <= Duration::from_secs(1),
    );
    table.info(
        "whole resumed run (start to exit)",
        format!("{:.2} s", elapsed.as_secs_f64()),
    );
    table.info(
        "rows sent now / sandbox accepted",
        format!("{} / {}", counts.sent, sandbox.stats().accepted),
    );
    table.print();
}

/// `received_at` of the message with `seq` 1 in the sandbox's JSON-lines log,
/// waiting (bounded) for the log writer to put it on disk.
fn first_received_at(log: &std::path::Path) -> DateTime<Utc> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(log) {
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
                if v["seq"] == 1 {
                    let at = v["received_at"].as_str().expect("received_at");
                    return DateTime::parse_from_rfc3339(at)
                        .expect("RFC 3339")
                        .with_timezone(&Utc);
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no first message in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
