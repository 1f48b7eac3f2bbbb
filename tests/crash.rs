//! The crash drill: SIGKILL the runner at random moments while it sends,
//! restart it each time, and let the sandbox's own record judge. Nobody may
//! be messaged twice, nobody may be lost, and every row must end in exactly
//! one state.
//!
//! The campaign is planned first (`run --dry-run`): planning 20,000 rows
//! takes about two seconds in a debug build, so kills 100–600 ms after a
//! start that still had to plan all landed before the first message. Each
//! kill is scheduled once that run's first messages have arrived, a random
//! 0–500 ms later; the test also checks that the recorded `sent` count grew
//! between kills. The delays are seeded; the seed is printed, and
//! `CRASH_SEED=…` replays them.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use convers8_campaign::sandbox::{RecordedMessage, SandboxConfig};
use convers8_campaign::state::{RecipientState, StateDb, StateRead, StateStore};
use rand::{Rng, SeedableRng};

const RECIPIENTS: usize = 20_000;
const KILLS: usize = 10;
const CONCURRENCY: usize = 16;
/// Messages a run must have delivered before its kill is scheduled.
const FIRST_MESSAGES: usize = 50;

#[test]
fn sigkill_at_random_moments_loses_nobody_and_messages_nobody_twice() {
    let log_dir = tempfile::tempdir().expect("tempdir");
    let sandbox = TestSandbox::start(SandboxConfig {
        rate: 0.0,
        // Slow enough that ten kills land before the list is done.
        latency: Duration::from_millis(8),
        log: Some(log_dir.path().join("messages.jsonl")),
        ..SandboxConfig::default()
    });
    // Two rows that never send, so the counts must add up across all states.
    let mut csv = kenyan_csv(RECIPIENTS);
    csv.push_str("12345,Invalid\n+254710000000,Duplicate of row 1\n");
    let dir = CampaignDir::new(
        &text_campaign(&format!("concurrency = {CONCURRENCY}"), "Hi {{name}}"),
        &csv,
    );
    let claim_batch = convers8_campaign::engine::default_claim_batch(CONCURRENCY) as u64;
    run_ok(bin(&sandbox).args(["run", "--dry-run"]).arg(dir.toml()));

    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("crash drill seed: {seed} (replay with CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut uncertain_before = 0;
    let mut sent_before = 0;
    let mut kills_while_sending = 0;
    let mut kills_done = 0;
    for _ in 0..KILLS {
        let mut child = bin(&sandbox)
            .arg("run")
            .arg(dir.toml())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("runner starts");
        // The kill lands at a random moment *while sending*: once this run's
        // first messages have arrived (on a loaded machine, starting up can
        // take longer than any fixed delay), then 0–500 ms later.
        let accepted_at_start = sandbox.messages().len();
        let started = Instant::now();
        while sandbox.messages().len() < accepted_at_start + FIRST_MESSAGES {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "run {} sent nothing in 60 s",
                kills_done + 1
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let wait = Duration::from_millis(rng.random_range(0..500));
        let sending_since = Instant::now();
        while sending_since.elapsed() < wait {
            assert!(
                child.try_wait().expect("poll").is_none(),
                "the runner finished before kill {}: the drill needs a longer list or a slower sandbox",
                kills_done + 1
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        kills_done += 1;
        // The next start turns rows left `sending` into `uncertain`: at most
        // one claim batch plus the requests in flight per crash.
        let (recovered, sent) = {
            let mut db = StateDb::open_existing(&dir.state()).expect("state");
            db.mark_interrupted_uncertain().expect("recover");
            let counts = db.counts().expect("counts");
            (counts.uncertain, counts.sent)
        };
        assert!(
            recovered - uncertain_before <= claim_batch + CONCURRENCY as u64,
            "a crash left {} rows uncertain (seed {seed})",
            recovered - uncertain_before
        );
        // Rows sent and recorded since the last kill: this run was sending.
        if sent > sent_before {
            kills_while_sending += 1;
        }
        uncertain_before = recovered;
        sent_before = sent;
    }
    assert_eq!(kills_done, KILLS);
    eprintln!(
        "{kills_while_sending} of {KILLS} kills landed while sending; {sent_before} rows sent before the last"
    );
    assert!(
        kills_while_sending >= 8,
        "only {kills_while_sending} of {KILLS} kills landed while the run was sending (seed {seed})"
    );

    // Finish without interference.
    run_ok(bin(&sandbox).arg("run").arg(dir.toml()));
    let counts = dir.counts();
    assert_eq!(
        counts.total(),
        RECIPIENTS as u64 + 2,
        "every CSV row has a state"
    );
    assert_eq!((counts.invalid, counts.duplicate), (1, 1));
    assert_eq!(
        counts.pending + counts.sending + counts.failed,
        0,
        "{counts:?}"
    );
    assert_eq!(counts.sent + counts.uncertain, RECIPIENTS as u64);

    // The sandbox's own log is the judge of who received what.
    let per_phone = logged_per_phone(&sandbox, &log_dir.path().join("messages.jsonl"));
    let twice: Vec<_> = per_phone.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "messaged twice: {twice:?}");

    // Every `sent` row is in the sandbox's record with its message id.
    let db = StateDb::open_read_only(&dir.state()).expect("state");
    let ids: HashSet<String> = sandbox
        .messages()
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    let mut uncertain_phones = Vec::new();
    db.for_each_recipient(&[], &mut |r| {
        match r.state {
            RecipientState::Sent => {
                let id = r.message_id.clone().unwrap_or_default();
                assert!(
                    ids.contains(&id),
                    "row {} sent as {id} but unknown to the server",
                    r.row
                );
            }
            RecipientState::Uncertain => uncertain_phones.push(r.phone.clone().unwrap_or_default()),
            _ => {}
        }
        Ok(())
    })
    .expect("walk");
    // The JSON-lines log agrees with the in-memory record.
    let logged = std::fs::read_to_string(log_dir.path().join("messages.jsonl")).expect("log");
    assert_eq!(logged.lines().count(), sandbox.messages().len());

    // The operator resends the uncertain rows; now everyone has the message.
    run_ok(
        bin(&sandbox)
            .args(["run", "--resend-uncertain"])
            .arg(dir.toml()),
    );
    let counts = dir.counts();
    assert_eq!(counts.sent, RECIPIENTS as u64, "{counts:?}");
    let per_phone = sandbox.per_phone();
    assert_eq!(per_phone.len(), RECIPIENTS, "nobody lost");
    for (phone, n) in per_phone {
        assert!(
            n == 1 || uncertain_phones.contains(&phone),
            "{phone} got {n}"
        );
    }
}

/// Every message in the sandbox's JSON-lines log.
fn logged(sandbox: &TestSandbox, log: &std::path::Path) -> Vec<RecordedMessage> {
    sandbox.flush_log();
    let text = std::fs::read_to_string(log).expect("the sandbox log");
    text.lines()
        .map(|line| serde_json::from_str(line).expect("one JSON message per line"))
        .collect()
}

/// How many messages each phone received, according to the log.
fn logged_per_phone(sandbox: &TestSandbox, log: &std::path::Path) -> HashMap<String, usize> {
    let mut map = HashMap::new();
    for m in logged(sandbox, log) {
        *map.entry(m.to).or_insert(0) += 1;
    }
    map
}
