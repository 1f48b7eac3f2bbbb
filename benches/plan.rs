//! Planning speed and memory: a generated 1,000,000-row CSV (five countries,
//! five columns) planned with `run --dry-run` — every phone parsed to E.164,
//! deduplicated, every message rendered and stored — at ≥ 100,000 rows/s,
//! with peak memory flat: 1M rows within 1.5× of 100k rows and under 150 MB.
//!
//! The reference is `sqlite3`'s own `.import` of the same CSV into a bare
//! table (no parsing, no rendering, no index), timed in the same run; the
//! table prints our speed as a share of it. Peak RSS comes from
//! `/usr/bin/time -v` when it exists, else from `VmHWM` in /proc polled while
//! the process runs; the table says which. `BENCH_N` (default 1,000,000)
//! overrides the large size; the small one is a tenth of it.
//!
//! Planning reads the account's ledger (its opt-out list, and what this
//! campaign already sent from another state). The large size is planned a
//! second time with `ledger = false`; the ledger-on plan reads a ledger
//! holding 10,000 opt-outs and 100,000 messages of another campaign. Target:
//! within 20 % of the ledger-off time.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use convers8_campaign::state::{StateDb, StateRead};

const TIME: &str = "/usr/bin/time";
const SQLITE3: &str = "/usr/bin/sqlite3";

struct Planned {
    rows: u64,
    pending: u64,
    elapsed: Duration,
    peak_kb: u64,
}

/// Plans `n` rows once with the ledger on (a ledger filled as an account's
/// would be), measuring wall time and peak RSS of the process.
fn plan_measured(n: usize) -> (Planned, CampaignDir) {
    let dir = CampaignDir::new(n, "concurrency = 16");
    fill_ledger(&dir.ledger());
    (measure(&dir), dir)
}

/// Plans the campaign in `dir` once, measuring wall time and peak RSS.
fn measure(dir: &CampaignDir) -> Planned {
    let toml = dir.toml();
    let args = ["run", toml.to_str().expect("utf-8 path"), "--dry-run"];
    let (elapsed, peak_kb) = if Path::new(TIME).exists() {
        let mut cmd = Command::new(TIME);
        cmd.arg("-v").arg(bin()).args(args);
        let (elapsed, output) = run_timed(
            cmd.env_remove("CONVERS8_API_KEY").env_remove("RUST_LOG"),
            Duration::from_secs(600),
        );
        let report = String::from_utf8_lossy(&output.stderr);
        let peak = report
            .lines()
            .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
            .and_then(|v| v.trim().parse().ok())
            .expect("/usr/bin/time -v reports the maximum resident set size");
        (elapsed, peak)
    } else {
        poll_vmhwm(&mut command(None, &args))
    };
    let counts = StateDb::open_read_only(&dir.state())
        .expect("state")
        .counts()
        .expect("counts");
    Planned {
        rows: counts.total(),
        pending: counts.pending,
        elapsed,
        peak_kb,
    }
}

/// Runs the command, reading `VmHWM` (the kernel's peak RSS) every 5 ms.
fn poll_vmhwm(cmd: &mut Command) -> (Duration, u64) {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let deadline = started + Duration::from_secs(600);
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file)
            && let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kb);
        }
        if let Some(status) = child.try_wait().expect("poll") {
            break status;
        }
        assert!(Instant::now() < deadline, "planning overran 10 minutes");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "planning failed: {status:?}");
    (started.elapsed(), peak)
}

/// `sqlite3`'s `.import` of the CSV into a new bare table, timed.
fn sqlite_import(csv: &Path) -> Duration {
    let db = csv.with_file_name("sqlite3-reference.db");
    let import = format!(".import --csv '{}' recipients", csv.display());
    let (elapsed, _) = run_timed(
        Command::new(SQLITE3).arg(&db).arg(&import),
        Duration::from_secs(600),
    );
    let (_, count) = run_timed(
        Command::new(SQLITE3)
            .arg(&db)
            .arg("SELECT count(*) FROM recipients"),
        Duration::from_secs(60),
    );
    let count = String::from_utf8_lossy(&count.stdout).trim().to_owned();
    assert!(!count.is_empty(), "sqlite3 imported nothing");
    elapsed
}

fn main() {
    if skip_unless_bench("plan") {
        return;
    }
    let large = env_count("BENCH_N", 1_000_000);
    let small = large / 10;
    let (s, _small_dir) = plan_measured(small);
    let (l, large_dir) = plan_measured(large);
    let off = measure(&CampaignDir::without_ledger(large, "concurrency = 16"));
    let reference = sqlite_import(&large_dir.csv());
    let csv_mb = std::fs::metadata(large_dir.csv()).map_or(0, |m| m.len()) as f64 / 1e6;

    let rate = per_second(l.rows as f64, l.elapsed);
    let reference_rate = per_second(large as f64, reference);
    let growth = l.peak_kb as f64 / s.peak_kb.max(1) as f64;
    let peak_mb = l.peak_kb as f64 / 1024.0;
    let how = if Path::new(TIME).exists() {
        "/usr/bin/time -v"
    } else {
        "VmHWM polled every 5 ms"
    };

    let mut table = Table::new(format!(
        "plan: run --dry-run of a generated CSV (5 countries, 5 columns, {csv_mb:.0} MB at {large} rows) ({})",
        machine()
    ));
    for (label, p) in [("100k-size", &s), ("1M-size", &l)] {
        table.info(
            &format!("{label}: rows planned (pending)"),
            format!("{} ({})", p.rows, p.pending),
        );
        table.info(
            &format!("{label}: wall time"),
            format!(
                "{:.2} s ({:.0} rows/s)",
                p.elapsed.as_secs_f64(),
                per_second(p.rows as f64, p.elapsed)
            ),
        );
        table.info(
            &format!("{label}: peak RSS ({how})"),
            format!("{:.1} MB", p.peak_kb as f64 / 1024.0),
        );
    }
    table.check(
        "1M-size: planning speed",
        format!("{rate:.0} rows/s"),
        ">= 100000 rows/s",
        rate >= 100_000.0 && l.rows == large as u64,
    );
    table.check(
        "peak RSS 1M-size / 100k-size",
        format!("{growth:.2}x"),
        "<= 1.5x",
        growth <= 1.5,
    );
    table.check(
        "peak RSS at 1M-size",
        format!("{peak_mb:.1} MB"),
        "< 150 MB",
        peak_mb < 150.0,
    );
    table.info(
        "1M-size, ledger = false: wall time",
        format!(
            "{:.2} s ({:.0} rows/s)",
            off.elapsed.as_secs_f64(),
            per_second(off.rows as f64, off.elapsed)
        ),
    );
    let ledger_cost = l.elapsed.as_secs_f64() / off.elapsed.as_secs_f64() - 1.0;
    table.check(
        "ledger cost: ledger-on time / ledger = false time - 1",
        format!("{:.1} %", ledger_cost * 100.0),
        "<= 20 %",
        ledger_cost <= 0.20 && off.rows == l.rows,
    );
    table.info(
        "reference: sqlite3 .import into a bare table",
        format!(
            "{:.2} s ({reference_rate:.0} rows/s)",
            reference.as_secs_f64()
        ),
    );
    table.info(
        "our planning speed / sqlite3 .import",
        format!("{:.2}", rate / reference_rate),
    );
    table.print();
}
