//! Rate-limit convergence: a server that accepts 80 messages a second and
//! answers the rest `rate_limit_exceeded`. For 60 s each:
//!
//! 1. the campaign sets no rate (concurrency 32) and must find the limit from
//!    the 429s alone: goodput ≥ 90 % of 80/s with at most 5 % of requests
//!    answered 429;
//! 2. the campaign sets `rate_per_second = 80`: goodput ≥ 97 % of 80/s and
//!    429s under 0.5 %.
//!
//! Goodput is what the sandbox itself counted (`/_sandbox/stats` accepted)
//! divided by the wall time of the `run` process, which stops itself with
//! `--max-runtime`. Each phase gets a fresh sandbox process (`--rate 80`, its
//! bucket starts full at 80) and a fresh, already planned campaign with more
//! recipients than 60 s can send. `BENCH_SECONDS` (default 60) overrides.

mod common;

use std::time::Duration;

use common::*;

const LIMIT: f64 = 80.0;
const CONCURRENCY: usize = 32;

struct Phase {
    accepted: u64,
    rate_limited: u64,
    elapsed: Duration,
    own: String,
}

impl Phase {
    fn goodput(&self) -> f64 {
        per_second(self.accepted as f64, self.elapsed)
    }

    fn share_429(&self) -> f64 {
        let requests = self.accepted + self.rate_limited;
        if requests == 0 {
            return 1.0;
        }
        self.rate_limited as f64 / requests as f64
    }
}

fn phase(send: &str, seconds: usize) -> Phase {
    // 3× what the limit allows, so the list never runs out before the clock.
    let rows = (LIMIT as usize) * seconds * 3;
    let dir = CampaignDir::new(rows, send);
    plan(&dir);
    let sandbox = SandboxProcess::start(&["--rate", &LIMIT.to_string()]);
    let toml = dir.toml();
    let toml = toml.to_str().expect("utf-8 temp path");
    let runtime = format!("{seconds}s");
    let (elapsed, output) = run_timed(
        &mut command(Some(&sandbox), &["run", toml, "--max-runtime", &runtime]),
        Duration::from_secs(seconds as u64 + 120),
    );
    let stats = sandbox.stats();
    let own = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find(|l| l.contains("this run:"))
        .map(|l| l.trim().to_owned())
        .unwrap_or_default();
    Phase {
        accepted: stats.accepted,
        rate_limited: stats.rate_limited,
        elapsed,
        own,
    }
}

fn main() {
    if skip_unless_bench("rate_convergence") {
        return;
    }
    let seconds = env_count("BENCH_SECONDS", 60);
    let free = phase(&format!("concurrency = {CONCURRENCY}"), seconds);
    let paced = phase(
        &format!("concurrency = {CONCURRENCY}\nrate_per_second = {LIMIT}"),
        seconds,
    );

    let mut table = Table::new(format!(
        "rate_convergence: sandbox --rate {LIMIT} (burst {LIMIT}), concurrency {CONCURRENCY}, {seconds} s per phase ({})",
        machine()
    ));
    for (label, p, goodput_target, max_429) in [
        ("no rate set", &free, 0.90, 0.05),
        ("rate_per_second = 80", &paced, 0.97, 0.005),
    ] {
        table.info(
            &format!("{label}: accepted / 429 answers / wall time"),
            format!(
                "{} / {} / {:.1} s",
                p.accepted,
                p.rate_limited,
                p.elapsed.as_secs_f64()
            ),
        );
        table.info(&format!("{label}: engine's own summary"), p.own.clone());
        let goodput = p.goodput();
        table.check(
            &format!("{label}: goodput"),
            format!(
                "{goodput:.1}/s ({:.1} % of {LIMIT})",
                goodput / LIMIT * 100.0
            ),
            &format!(">= {:.0} %", goodput_target * 100.0),
            goodput >= goodput_target * LIMIT,
        );
        let share = p.share_429();
        table.check(
            &format!("{label}: requests answered 429"),
            format!("{:.2} %", share * 100.0),
            &if max_429 < 0.01 {
                format!("< {:.1} %", max_429 * 100.0)
            } else {
                format!("<= {:.0} %", max_429 * 100.0)
            },
            if max_429 < 0.01 {
                share < max_429
            } else {
                share <= max_429
            },
        );
    }
    table.print();
}
