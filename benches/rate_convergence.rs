//! Rate-limit convergence: a server that accepts 80 messages a second and
//! answers the rest `rate_limit_exceeded`. For 60 s each:
//!
//! 1. the campaign sets no rate (concurrency 32) and must find the limit from
//!    the 429s alone: goodput ≥ 90 % of 80/s with at most 5 % of requests
//!    answered 429;
//! 2. the campaign sets `rate_per_second = 80`: goodput ≥ 97 % of 80/s and
//!    429s under 0.5 %;
//!
//! and for 40 s:
//!
//! 3. as 1, but the run starts into an exhausted limit: right after a first
//!    `run` of the same campaign has used the server's budget for 5 s, the
//!    measured `run` resumes it against the same sandbox process. Goodput
//!    over the 40 s ≥ 90 % of 80/s, and so over seconds 10 to 40 of the run
//!    (the pace must recover within 10 s); the accepted count of each of the
//!    first ten seconds shows the climb.
//!
//! Goodput is what the sandbox itself counted (`/_sandbox/stats` accepted,
//! less what a first run took) divided by the wall time of the `run` process,
//! which stops itself with `--max-runtime`; the seconds of a run are counted
//! from the `received_at` of each accepted message (`/_sandbox/messages`),
//! from the moment `run` was spawned. Each phase gets a fresh sandbox process
//! (`--rate 80`, its bucket starts full at 80) and a fresh, already planned
//! campaign with more recipients than the phase can send. `BENCH_SECONDS`
//! (default 60) overrides the length of phases 1 and 2, and shortens phase 3
//! when it is under 40.

mod common;

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use common::*;

const LIMIT: f64 = 80.0;
const CONCURRENCY: usize = 32;
/// The length of the drained phase: the measurement was a 40 s run.
const DRAINED_SECONDS: usize = 40;
/// From this second of a drained run on, goodput must be within 10 % of the limit.
const RECOVERED_BY: usize = 10;
/// How long the first run that exhausts the budget sends.
const FIRST_RUN_SECONDS: u64 = 5;

struct Phase {
    /// Started right after a first run had used the budget.
    drained: bool,
    /// The first run's accepted and 429 answers (0 if there was none).
    first_run: (u64, u64),
    accepted: u64,
    rate_limited: u64,
    elapsed: Duration,
    own: String,
    /// Accepted in each whole second since `run` was spawned (drained phase only).
    per_second: Vec<u64>,
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

    /// Goodput over seconds `from..to` of the run.
    fn goodput_between(&self, from: usize, to: usize) -> f64 {
        let to = to.min(self.per_second.len());
        if to <= from {
            return 0.0;
        }
        self.per_second[from..to].iter().sum::<u64>() as f64 / (to - from) as f64
    }
}

fn phase(send: &str, seconds: usize, drained: bool) -> Phase {
    // 3× what the limit allows, so the list never runs out before the clock.
    let rows = (LIMIT as usize) * seconds * 3;
    let dir = CampaignDir::new(rows, send);
    plan(&dir);
    let sandbox = SandboxProcess::start(&["--rate", &LIMIT.to_string()]);
    let toml = dir.toml();
    let toml = toml.to_str().expect("utf-8 temp path");
    let runtime = format!("{seconds}s");
    if drained {
        run_timed(
            &mut command(
                Some(&sandbox),
                &[
                    "run",
                    toml,
                    "--max-runtime",
                    &format!("{FIRST_RUN_SECONDS}s"),
                ],
            ),
            Duration::from_secs(FIRST_RUN_SECONDS + 120),
        );
    }
    // The measured run starts the moment the first one has exited.
    let before = sandbox.stats();
    let spawned_at = SystemTime::now();
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
    let per_second = if drained {
        seconds_of_run(&sandbox, before.accepted, spawned_at, seconds)
    } else {
        Vec::new()
    };
    Phase {
        drained,
        first_run: (before.accepted, before.rate_limited),
        accepted: stats.accepted - before.accepted,
        rate_limited: stats.rate_limited - before.rate_limited,
        elapsed,
        own,
        per_second,
    }
}

/// How many of the messages after the first `skip` the sandbox accepted in
/// each whole second since `start`.
fn seconds_of_run(
    sandbox: &SandboxProcess,
    skip: u64,
    start: SystemTime,
    seconds: usize,
) -> Vec<u64> {
    let start = DateTime::<Utc>::from(start);
    let mut counts = vec![0u64; seconds];
    for m in sandbox.messages().iter().filter(|m| m.seq > skip) {
        let at = DateTime::parse_from_rfc3339(&m.received_at)
            .expect("received_at is RFC 3339")
            .with_timezone(&Utc);
        let offset = at.signed_duration_since(start).num_milliseconds();
        if let Ok(second) = usize::try_from(offset / 1000)
            && offset >= 0
            && second < seconds
        {
            counts[second] += 1;
        }
    }
    counts
}

fn main() {
    if skip_unless_bench("rate_convergence") {
        return;
    }
    let seconds = env_count("BENCH_SECONDS", 60);
    let drained_seconds = seconds.min(DRAINED_SECONDS);
    let free_send = format!("concurrency = {CONCURRENCY}");
    let free = phase(&free_send, seconds, false);
    let paced = phase(
        &format!("concurrency = {CONCURRENCY}\nrate_per_second = {LIMIT}"),
        seconds,
        false,
    );
    let drained = phase(&free_send, drained_seconds, true);

    let mut table = Table::new(format!(
        "rate_convergence: sandbox --rate {LIMIT} (burst {LIMIT}), concurrency {CONCURRENCY}, {seconds} s per phase, {drained_seconds} s drained ({})",
        machine()
    ));
    for (label, p, goodput_target, max_429) in [
        ("no rate set", &free, 0.90, Some(0.05)),
        ("rate_per_second = 80", &paced, 0.97, Some(0.005)),
        ("drained bucket, no rate set", &drained, 0.90, None),
    ] {
        if p.drained {
            table.info(
                &format!("{label}: first run ({FIRST_RUN_SECONDS} s): accepted / 429 answers"),
                format!("{} / {}", p.first_run.0, p.first_run.1),
            );
        }
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
        if !p.per_second.is_empty() {
            let first: Vec<String> = p
                .per_second
                .iter()
                .take(RECOVERED_BY)
                .map(u64::to_string)
                .collect();
            table.info(
                &format!("{label}: accepted in each of seconds 1-{RECOVERED_BY}"),
                first.join(", "),
            );
        }
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
        if p.per_second.len() > RECOVERED_BY {
            let end = p.per_second.len();
            let late = p.goodput_between(RECOVERED_BY, end);
            table.check(
                &format!("{label}: goodput over seconds {RECOVERED_BY}-{end}"),
                format!("{late:.1}/s ({:.1} % of {LIMIT})", late / LIMIT * 100.0),
                &format!(">= {:.0} %", goodput_target * 100.0),
                late >= goodput_target * LIMIT,
            );
        }
        let share = p.share_429();
        let value = format!("{:.2} %", share * 100.0);
        match max_429 {
            None => table.info(&format!("{label}: requests answered 429"), value),
            Some(max_429) => table.check(
                &format!("{label}: requests answered 429"),
                value,
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
            ),
        }
    }
    table.print();
}
