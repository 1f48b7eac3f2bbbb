//! Send throughput against the physical limit: how close the engine gets to
//! the rate a bare load generator gets from the same sandbox.
//!
//! The sandbox runs as its own process with no latency and no rate limit.
//! First a bare load generator — `oha` when it is on PATH, else a minimal
//! reqwest loop in this file — sends `N` copies of a real planned body with the
//! same concurrency; then the campaign, planned beforehand with `run --dry-run`
//! (not timed), is sent with `run` against a fresh sandbox of the same kind.
//! The ratio of the two rates is the engine's overhead: claiming, pacing,
//! classifying and recording every row. Target: ratio ≥ 0.70.
//!
//! The same campaign is also sent with `ledger = false`: the difference is
//! what the account's ledger costs (a reservation per claimed row before it
//! leaves, a settle per answer). Runs on two shared cores vary by 10-20 %
//! from one to the next, so after the run the ratio is taken from, the two
//! are sent in `BENCH_PAIRS` (default 5) alternating pairs, each planned just
//! before and sent to its own fresh sandbox, and the medians are compared.
//! The ledger-on runs start from a ledger holding 10,000 opt-outs and
//! 100,000 messages of another campaign, as a busy account's would.
//! Target: ledger on within 15 % of off.
//!
//! `BENCH_N` (default 200,000) and `BENCH_CONCURRENCY` (default 64) override;
//! `BENCH_GENERATOR=reqwest` uses the reqwest loop even when `oha` is there.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use convers8_campaign::state::{StateDb, StateRead};

fn main() {
    if skip_unless_bench("send_throughput") {
        return;
    }
    let n = env_count("BENCH_N", 200_000);
    let concurrency = env_count("BENCH_CONCURRENCY", 64);
    let pairs = env_count("BENCH_PAIRS", 5).max(1);
    let send = format!("concurrency = {concurrency}");
    let dir = CampaignDir::new(n, &send);
    let plan_time = plan(&dir);
    let body = {
        let db = StateDb::open_read_only(&dir.state()).expect("the planned state opens");
        db.body_for_row(1)
            .expect("read row 1")
            .expect("row 1 is planned")
            .1
    };

    // The bare load generator, against its own fresh sandbox.
    let (generator, raw_rate, raw_ok) = {
        let sandbox = SandboxProcess::start(&["--rate", "0"]);
        let url = format!("{}/whatsapp/message/text", sandbox.url);
        // BENCH_GENERATOR=reqwest forces the in-file loop even when oha is
        // installed: it shows how much of the gap is the HTTP client itself.
        let forced = std::env::var("BENCH_GENERATOR").is_ok_and(|g| g == "reqwest");
        let (name, rate) = match find_oha().filter(|_| !forced) {
            Some(oha) => ("oha", oha_rate(&oha, &url, &body, n, concurrency)),
            None if forced => (
                "reqwest loop (BENCH_GENERATOR=reqwest)",
                reqwest_rate(&url, &body, n, concurrency),
            ),
            None => (
                "reqwest loop (oha not on PATH)",
                reqwest_rate(&url, &body, n, concurrency),
            ),
        };
        (name, rate, sandbox.stats().accepted)
    };

    // The engine against a fresh sandbox of the same kind: the ratio.
    let on = engine_run(&dir);
    let ledger_entries = convers8_campaign::ledger::FileLedger::open(&dir.ledger())
        .and_then(|l| l.messages())
        .map_or(0, |m| m.len());
    // Then the ledger's cost: without it and with it, alternately, each
    // planned just before and sent to a fresh sandbox, so neither side gets
    // the first run after the load generator.
    let mut on_runs = Vec::new();
    let mut off_runs = Vec::new();
    let mut all_sent = on.sent == n as u64;
    for _ in 0..pairs {
        for (with_ledger, runs) in [(false, &mut off_runs), (true, &mut on_runs)] {
            let pair_dir = if with_ledger {
                let dir = CampaignDir::new(n, &send);
                fill_ledger(&dir.ledger());
                dir
            } else {
                CampaignDir::without_ledger(n, &send)
            };
            plan(&pair_dir);
            let run = engine_run(&pair_dir);
            all_sent &= run.sent == n as u64;
            runs.push(run.rate);
        }
    }
    let (elapsed, counts, accepted, own) = (on.elapsed, on.sent, on.accepted, on.own.clone());
    let engine_rate = on.rate;
    let ratio = engine_rate / raw_rate;
    let (on_median, off_median) = (median(&on_runs), median(&off_runs));
    let ledger_cost = 1.0 - on_median / off_median;

    let mut table = Table::new(format!(
        "send_throughput: N = {n}, concurrency {concurrency}, sandbox --rate 0 --latency-ms 0 ({})",
        machine()
    ));
    table.info(
        "plan (run --dry-run, not timed below)",
        format!("{:.2} s", plan_time.as_secs_f64()),
    );
    table.info("request body", format!("{} bytes", body.len()));
    table.info("load generator", generator);
    table.info(
        "load generator: accepted by the sandbox",
        raw_ok.to_string(),
    );
    table.info("load generator: rate", format!("{raw_rate:.0} req/s"));
    table.info(
        "engine: sent / sandbox accepted",
        format!("{counts} / {accepted}"),
    );
    table.info(
        "engine: wall time of `run` (process start to exit)",
        format!("{:.2} s", elapsed.as_secs_f64()),
    );
    table.info("engine: own summary", own);
    table.info(
        "engine: rate (sent / wall time)",
        format!("{engine_rate:.0} msg/s"),
    );
    table.check(
        "ratio engine / load generator",
        format!("{ratio:.2}"),
        ">= 0.70",
        ratio >= 0.70 && counts == n as u64,
    );
    let rates = |runs: &[f64]| {
        runs.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    table.info(
        "engine, ledger on: runs (msg/s), median",
        format!("{} -> {on_median:.0}", rates(&on_runs)),
    );
    table.info(
        "engine, ledger = false: runs (msg/s), median",
        format!("{} -> {off_median:.0}", rates(&off_runs)),
    );
    table.info(
        "engine, ledger on: messages in the first run's ledger",
        ledger_entries.to_string(),
    );
    table.check(
        "ledger cost: 1 - (median on / median off)",
        format!("{:.1} %", ledger_cost * 100.0),
        "<= 15 %",
        ledger_cost <= 0.15 && all_sent && ledger_entries == n,
    );
    table.print();
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// One `run` of a planned campaign against a fresh unlimited sandbox.
struct EngineRun {
    elapsed: Duration,
    sent: u64,
    accepted: u64,
    rate: f64,
    own: String,
}

fn engine_run(dir: &CampaignDir) -> EngineRun {
    let sandbox = SandboxProcess::start(&["--rate", "0"]);
    let toml = dir.toml();
    let toml = toml.to_str().expect("utf-8 temp path");
    let (elapsed, output) = run_timed(
        &mut command(Some(&sandbox), &["run", toml]),
        Duration::from_secs(900),
    );
    let sent = StateDb::open_read_only(&dir.state())
        .expect("state")
        .counts()
        .expect("counts")
        .sent;
    let own = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find(|l| l.contains("this run:"))
        .map(|l| l.trim().to_owned())
        .unwrap_or_default();
    EngineRun {
        elapsed,
        sent,
        accepted: sandbox.stats().accepted,
        rate: per_second(sent as f64, elapsed),
        own,
    }
}

/// `oha` on PATH, or where `cargo install` puts it.
fn find_oha() -> Option<std::path::PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("oha"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let home = std::env::var_os("HOME")?;
        let p = std::path::Path::new(&home).join(".cargo/bin/oha");
        p.is_file().then_some(p)
    })
}

/// `oha -n N -c C` POSTing `body`; its requests per second, from its JSON.
fn oha_rate(oha: &std::path::Path, url: &str, body: &str, n: usize, c: usize) -> f64 {
    let (_, output) = run_timed(
        Command::new(oha)
            .args(["-n", &n.to_string(), "-c", &c.to_string()])
            .args(["-m", "POST", "-T", "application/json"])
            .args(["-H", &format!("Authorization: Bearer {KEY}")])
            .args(["-d", body])
            .args(["--no-tui", "--output-format", "json"])
            .arg(url),
        Duration::from_secs(600),
    );
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("oha prints JSON");
    let codes = &report["statusCodeDistribution"];
    let ok = codes["200"].as_u64().unwrap_or(0);
    assert_eq!(
        ok, n as u64,
        "oha: not every request was answered 200: {codes}"
    );
    report["summary"]["requestsPerSec"]
        .as_f64()
        .expect("oha's summary has requestsPerSec")
}

/// The fallback generator: `c` tasks sharing one pooled client, POSTing
/// `body` until `n` requests have been answered (or 10 minutes pass).
fn reqwest_rate(url: &str, body: &str, n: usize, c: usize) -> f64 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let issued = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs(600);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..c {
            let (client, issued) = (client.clone(), issued.clone());
            let (url, body) = (url.to_owned(), body.to_owned());
            tasks.spawn(async move {
                let mut ok = 0usize;
                while issued.fetch_add(1, Ordering::Relaxed) < n && Instant::now() < deadline {
                    let answer = client
                        .post(&url)
                        .bearer_auth(KEY)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    if let Ok(answer) = answer
                        && answer.status().is_success()
                        && answer.bytes().await.is_ok()
                    {
                        ok += 1;
                    }
                }
                ok
            });
        }
        let mut ok = 0;
        while let Some(done) = tasks.join_next().await {
            ok += done.expect("generator task");
        }
        assert_eq!(ok, n, "the reqwest loop: not every request succeeded");
        per_second(ok as f64, started.elapsed())
    })
}
