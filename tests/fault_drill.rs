//! The fault drill: a campaign against a sandbox that fails on purpose —
//! seeded 5 % server errors, 2 % dropped connections, 1 % answers slower than
//! the client's timeout, and a 429 storm every few seconds — must complete,
//! message nobody twice, and leave every row in the state the sandbox's own
//! log says it is in: `sent` exactly when the log has the message under that
//! row's `message_id`; `uncertain` exactly for the drops (not in the log) and
//! the slow answers (in the log, but the answer never reached the runner);
//! `failed` only with a server-side code after the attempts ran out.
//!
//! Why the run may be repeated: the circuit breaker stops a run after 20
//! systemic failures in a row. At these fault rates (8 % of requests
//! systemic) that is practically impossible, but a starved machine can time
//! out a burst of requests at the 1 s timeout; the breaker then leaves the
//! rest `pending` — which is its job — and the operator reruns. The drill
//! does the same, up to three runs, and every invariant must hold at the end.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use convers8_campaign::sandbox::{RecordedMessage, SandboxConfig};
use convers8_campaign::state::{RecipientState, StateDb, StateRead};

const RECIPIENTS: usize = 3_000;
const STORM_EVERY: Duration = Duration::from_secs(2);
const STORM_FOR: Duration = Duration::from_millis(200);
const MAX_RUNS: usize = 3;

#[test]
fn faults_never_double_send_and_states_match_the_sandbox_log() {
    let log_dir = tempfile::tempdir().expect("tempdir");
    let log_path = log_dir.path().join("messages.jsonl");
    let started = Instant::now();
    let sandbox = TestSandbox::start(SandboxConfig {
        rate: 0.0,
        fail_rate: 0.05,
        drop_rate: 0.02,
        slow_rate: 0.01,
        // Past the campaign's 1 s timeout: the message is recorded, the
        // runner gives up on the answer.
        slow: Duration::from_secs(2),
        throttle_every: Some(STORM_EVERY),
        throttle_for: STORM_FOR,
        seed: Some(20_260_601),
        log: Some(log_path.clone()),
        ..SandboxConfig::default()
    });
    let dir = CampaignDir::new(
        &text_campaign(
            "concurrency = 16\ntimeout_secs = 1\nmax_attempts = 5",
            "Hi {{name}}",
        ),
        &kenyan_csv(RECIPIENTS),
    );
    // Plan first, so the sending run starts within milliseconds of its launch.
    run_ok(bare_bin().args(["run", "--dry-run"]).arg(dir.toml()));
    // The storms run on the sandbox's clock. A 429 before the run has had
    // any message accepted leaves the pace nothing to measure, so it falls to
    // a cautious 10/s and climbs back slowly (a separate finding, not this
    // drill's subject): launch just after a storm, so the run meets its first
    // storm with its goodput known.
    let into_period =
        Duration::from_nanos((started.elapsed().as_nanos() % STORM_EVERY.as_nanos()) as u64);
    let after_storm = if into_period < STORM_FOR + Duration::from_millis(50) {
        STORM_FOR + Duration::from_millis(50) - into_period
    } else {
        STORM_EVERY - into_period + STORM_FOR + Duration::from_millis(50)
    };
    std::thread::sleep(after_storm);

    let mut runs = 0;
    loop {
        runs += 1;
        // Bounded: a run that cannot finish in time stops itself, and fails below.
        let out = bin(&sandbox)
            .args(["run", "--max-runtime", "120s"])
            .arg(dir.toml())
            .output()
            .expect("binary runs");
        let counts = dir.counts();
        if out.status.success() && counts.pending == 0 {
            break;
        }
        let breaker = stdout(&out).contains("circuit breaker");
        assert!(
            breaker && runs < MAX_RUNS,
            "run {runs} ended with {:?} and {} rows pending (only a breaker trip earns a rerun)\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            counts.pending,
            stdout(&out),
            stderr(&out)
        );
    }

    let stats = sandbox.stats();
    let in_memory = sandbox.messages().len();
    // Shutting the sandbox down flushes its log, which is the judge below.
    drop(sandbox);
    let logged: Vec<RecordedMessage> = std::fs::read_to_string(&log_path)
        .expect("the sandbox log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a log line is a recorded message"))
        .collect();
    assert_eq!(
        logged.len(),
        in_memory,
        "the log has every accepted message"
    );
    assert!(
        stats.server_errors > 0 && stats.dropped > 0 && stats.slow > 0 && stats.rate_limited > 0,
        "every fault happened at least once: {stats:?}"
    );

    // Nobody messaged twice.
    let mut by_phone: HashMap<&str, &RecordedMessage> = HashMap::new();
    for m in &logged {
        if let Some(earlier) = by_phone.insert(&m.to, m) {
            panic!(
                "{} was messaged twice: seq {} and {}",
                m.to, earlier.seq, m.seq
            );
        }
    }

    let counts = dir.counts();
    assert_eq!(counts.total(), RECIPIENTS as u64, "one state per row");
    assert_eq!(counts.pending + counts.sending, 0, "{counts:?}");

    let db = StateDb::open_read_only(&dir.state()).expect("state");
    let mut seen_rows = 0;
    let (mut uncertain_in_log, mut uncertain_not_in_log) = (0u64, 0u64);
    db.for_each_recipient(&[], &mut |r| {
        seen_rows += 1;
        let phone = r.phone.clone().unwrap_or_default();
        let logged = by_phone.get(phone.as_str());
        match r.state {
            RecipientState::Sent => {
                let m = logged.unwrap_or_else(|| {
                    panic!("row {} ({phone}) is sent but not in the log", r.row)
                });
                assert_eq!(
                    r.message_id.as_deref(),
                    Some(m.message_id.as_str()),
                    "row {} is sent under another message id than the log's",
                    r.row
                );
            }
            RecipientState::Uncertain => {
                assert_eq!(r.error_code.as_deref(), Some("no_answer"), "row {}", r.row);
                assert!(r.message_id.is_none(), "row {}", r.row);
                if logged.is_some() {
                    uncertain_in_log += 1;
                } else {
                    uncertain_not_in_log += 1;
                }
            }
            RecipientState::Failed => {
                // Only the server's own refusals can spend a row's attempts.
                let code = r.error_code.as_deref().unwrap_or_default();
                assert!(
                    ["internal_error", "rate_limit_exceeded"].contains(&code),
                    "row {} failed with {code:?}: {:?}",
                    r.row,
                    r.error_details
                );
                assert!(logged.is_none(), "row {} failed yet was delivered", r.row);
            }
            other => panic!("row {} ended {other}", r.row),
        }
        Ok(())
    })
    .expect("walk the state");
    assert_eq!(seen_rows, RECIPIENTS);

    // Each slow answer is one delivered message whose row never heard back,
    // and each dropped connection one undelivered message whose row never
    // heard back: neither is retried, so the counts match one for one.
    assert_eq!(
        uncertain_in_log, stats.slow,
        "uncertain rows the sandbox delivered vs its slow answers ({stats:?})"
    );
    assert_eq!(
        uncertain_not_in_log, stats.dropped,
        "uncertain rows the sandbox never delivered vs its dropped connections ({stats:?})"
    );
    assert_eq!(
        counts.sent + uncertain_in_log,
        logged.len() as u64,
        "every logged message is a sent row or a slow uncertain one"
    );
    eprintln!(
        "fault drill: {runs} run(s), {:.1} s; {counts:?}; sandbox {stats:?}",
        started.elapsed().as_secs_f64()
    );
}
