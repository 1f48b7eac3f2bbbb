//! Latency-bound efficiency: against a server that takes 100 ms to answer,
//! `concurrency` requests in flight can at best achieve concurrency ÷ latency
//! messages a second. The engine should keep every slot busy: target ≥ 95 %
//! of 50 ÷ 0.1 s = 500 msg/s.
//!
//! The sandbox runs as its own process (`--rate 0 --latency-ms 100`); the
//! campaign is planned with `run --dry-run` first (not timed), then `run` is
//! timed from process start to exit. `BENCH_N` (default 10,000) overrides
//! the recipient count.

mod common;

use std::time::Duration;

use common::*;
use convers8_campaign::state::{StateDb, StateRead};

const CONCURRENCY: usize = 50;
const LATENCY_MS: u64 = 100;

fn main() {
    if skip_unless_bench("latency_bound") {
        return;
    }
    let n = env_count("BENCH_N", 10_000);
    let dir = CampaignDir::new(n, &format!("concurrency = {CONCURRENCY}"));
    plan(&dir);
    let sandbox = SandboxProcess::start(&["--rate", "0", "--latency-ms", &LATENCY_MS.to_string()]);
    let toml = dir.toml();
    let toml = toml.to_str().expect("utf-8 temp path");
    let (elapsed, output) = run_timed(
        &mut command(Some(&sandbox), &["run", toml]),
        Duration::from_secs(600),
    );
    let sent = StateDb::open_read_only(&dir.state())
        .expect("state")
        .counts()
        .expect("counts")
        .sent;
    let bound = CONCURRENCY as f64 / (LATENCY_MS as f64 / 1000.0);
    let achieved = per_second(sent as f64, elapsed);
    let share = achieved / bound;
    let own = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find(|l| l.contains("this run:"))
        .map(|l| l.trim().to_owned())
        .unwrap_or_default();

    let mut table = Table::new(format!(
        "latency_bound: N = {n}, concurrency {CONCURRENCY}, sandbox --latency-ms {LATENCY_MS} --rate 0 ({})",
        machine()
    ));
    table.info("bound: concurrency / latency", format!("{bound:.0} msg/s"));
    table.info(
        "sent / sandbox accepted",
        format!("{sent} / {}", sandbox.stats().accepted),
    );
    table.info(
        "wall time of `run` (process start to exit)",
        format!("{:.2} s", elapsed.as_secs_f64()),
    );
    table.info("engine's own summary", own);
    table.info(
        "achieved (sent / wall time)",
        format!("{achieved:.1} msg/s"),
    );
    table.check(
        "achieved / bound",
        format!("{:.1} %", share * 100.0),
        ">= 95 %",
        share >= 0.95 && sent == n as u64,
    );
    table.print();
}
