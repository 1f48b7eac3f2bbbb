//! Rules across campaigns, end to end (the real binary, real campaign files,
//! one ledger shared by campaigns, the sandbox): a frequency cap per phone,
//! the account's daily limit of unique recipients, and no second state of a
//! campaign messaging its audience again.

mod common;

use convers8_campaign::state::StateLocation;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use chrono::{DateTime, Utc};
use common::*;
use convers8_campaign::api::{ApiKey, ClientConfig};
use convers8_campaign::campaign::Campaign;
use convers8_campaign::engine::clock::ManualClock;
use convers8_campaign::engine::progress::Silent;
use convers8_campaign::engine::{self, LedgerUse, RunEnd, RunOptions, Stop};
use convers8_campaign::ledger::{FileLedger, LedgerState};
use convers8_campaign::state::{RecipientRecord, RecipientState, StateDb, StateRead};

/// The binary aimed at the sandbox, with the ledger `ledger`.
fn with_ledger(sandbox: &TestSandbox, ledger: &Path) -> Command {
    let mut cmd = bin(sandbox);
    cmd.env("CONVERS8_LEDGER", ledger);
    cmd
}

fn ledger_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.db");
    (dir, path)
}

/// A text campaign called `name`, with `[send]` lines and extra TOML after.
fn campaign(name: &str, send: &str, extra: &str) -> String {
    format!(
        "{}\n{extra}\n",
        text_campaign(send, "Hi {{name}}")
            .replace("name = \"test\"", &format!("name = \"{name}\""))
    )
}

/// `n` Kenyan numbers starting at the `first`-th (0-based), so two lists
/// can overlap or not.
fn phones_csv(first: usize, n: usize) -> String {
    let mut csv = String::from("phone,name\n");
    for i in first..first + n {
        csv.push_str(&format!("+2547{:08},Person {i}\n", 10_000_000 + i));
    }
    csv
}

fn rows_in(state: &Path, wanted: RecipientState) -> Vec<RecipientRecord> {
    let db = StateDb::open_read_only(state).expect("state opens");
    let mut rows = Vec::new();
    db.for_each_recipient(&[wanted], &mut |r| {
        rows.push(r);
        Ok(())
    })
    .expect("rows");
    rows
}

fn output_of(cmd: &mut Command) -> Output {
    cmd.output().expect("the binary runs")
}

#[test]
fn two_campaigns_sharing_a_ledger_and_a_cap_of_one_per_week_message_a_shared_phone_once() {
    let sandbox = TestSandbox::unlimited();
    let (_keep, ledger) = ledger_dir();
    let cap = "[audience]\nmax_messages = 1\nper = \"7d\"";
    // Phones 0..6 and 3..9: 3, 4 and 5 are on both lists.
    let spring = CampaignDir::new(&campaign("spring", "", cap), &phones_csv(0, 6));
    let summer = CampaignDir::new(&campaign("summer", "", cap), &phones_csv(3, 6));
    run_ok(with_ledger(&sandbox, &ledger).arg("run").arg(spring.toml()));
    let out = run_ok(with_ledger(&sandbox, &ledger).arg("run").arg(summer.toml()));
    let text = stdout(&out);
    assert!(
        text.contains("all rows: 6 = sent 3 + failed 0 + uncertain 0 + invalid 0 + duplicate 0 + suppressed 3 + pending 0"),
        "{text}"
    );
    let per_phone = sandbox.per_phone();
    assert_eq!(per_phone.len(), 9);
    assert!(per_phone.values().all(|&n| n == 1), "{per_phone:?}");
    let capped = rows_in(&summer.state(), RecipientState::Suppressed);
    assert_eq!(
        capped.iter().map(|r| r.row).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(
        capped
            .iter()
            .all(|r| r.error_code.as_deref() == Some("frequency_cap")),
        "{capped:?}"
    );
    assert!(
        capped[0]
            .error_details
            .as_deref()
            .is_some_and(|d| d.contains("1 messages in the last 7 days")),
        "{capped:?}"
    );

    // `status` says why they were not sent.
    let status = run_ok(bare_bin().arg("status").arg(summer.toml()));
    assert!(
        stdout(&status).contains("suppressed 3 (frequency_cap 3)"),
        "{}",
        stdout(&status)
    );

    // Reconsidered while still over the cap: they stay suppressed.
    let out = run_ok(
        with_ledger(&sandbox, &ledger)
            .args(["retry", "--suppressed", "--codes", "frequency_cap", "--yes"])
            .arg(summer.toml()),
    );
    assert!(stdout(&out).contains("suppressed 3"), "{}", stdout(&out));
    assert_eq!(sandbox.messages().len(), 9);

    // With room under the cap (the operator raised it), the retry sends them.
    std::fs::write(
        summer.toml(),
        campaign("summer", "", "[audience]\nmax_messages = 2\nper = \"7d\""),
    )
    .expect("rewrite");
    run_ok(
        with_ledger(&sandbox, &ledger)
            .args(["retry", "--suppressed", "--codes", "frequency_cap", "--yes"])
            .arg(summer.toml()),
    );
    assert_eq!(sandbox.messages().len(), 12);
    let c = summer.counts();
    assert_eq!((c.sent, c.suppressed), (6, 0), "{c:?}");
}

#[test]
fn two_concurrent_campaigns_respect_one_daily_limit() {
    let sandbox = TestSandbox::unlimited();
    let (_keep, ledger) = ledger_dir();
    // 5 a second each: reaching 20 alone would take one campaign 4 s, so the
    // second starts while the first is sending.
    let send = "concurrency = 1\nrate_per_second = 5\ndaily_limit = 20";
    let a = CampaignDir::new(&campaign("a", send, ""), &phones_csv(0, 30));
    let b = CampaignDir::new(&campaign("b", send, ""), &phones_csv(100, 30));
    let start = |dir: &CampaignDir| {
        with_ledger(&sandbox, &ledger)
            .arg("run")
            .arg(dir.toml())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the run starts")
    };
    let first = start(&a);
    sandbox.wait_for_messages(2);
    let second = start(&b);
    let first = first.wait_with_output().expect("first ends");
    let second = second.wait_with_output().expect("second ends");

    assert_eq!(
        sandbox.messages().len(),
        20,
        "the account's limit was exceeded"
    );
    let (sent_a, sent_b) = (a.counts().sent, b.counts().sent);
    assert_eq!(sent_a + sent_b, 20);
    assert!(sent_a > 0 && sent_b > 0, "both sent: {sent_a} + {sent_b}");
    for out in [&first, &second] {
        assert_eq!(out.status.code(), Some(75), "{}", stderr(out));
        assert!(
            stdout(out).contains("daily limit reached; the next message may go at"),
            "{}",
            stdout(out)
        );
    }
    // Nothing is left reserved: every message is settled in the ledger.
    let l = FileLedger::open(&ledger).expect("ledger");
    let messages = l.messages().expect("read");
    assert_eq!(messages.len(), 20);
    assert!(messages.iter().all(|m| m.state == LedgerState::Sent));
}

#[test]
fn deleting_the_state_and_running_again_sends_nobody_twice() {
    let sandbox = TestSandbox::unlimited();
    let (_keep, ledger) = ledger_dir();
    let dir = CampaignDir::new(&campaign("launch", "", ""), &phones_csv(0, 12));
    run_ok(
        with_ledger(&sandbox, &ledger)
            .args(["run", "--limit", "5"])
            .arg(dir.toml()),
    );
    assert_eq!(sandbox.messages().len(), 5);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = dir.state().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    let out = run_ok(with_ledger(&sandbox, &ledger).arg("run").arg(dir.toml()));
    let err = stderr(&out);
    assert!(err.contains("5 already messaged by this campaign"), "{err}");
    let per_phone = sandbox.per_phone();
    assert_eq!(per_phone.len(), 12);
    assert!(per_phone.values().all(|&n| n == 1), "{per_phone:?}");
    let c = dir.counts();
    assert_eq!((c.sent, c.pending, c.total()), (12, 0, 12), "{c:?}");
    // The rows the ledger accounted for carry its message ids.
    let sent = rows_in(&dir.state(), RecipientState::Sent);
    assert!(sent.iter().all(|r| r.message_id.is_some()), "{sent:?}");
}

#[test]
fn a_second_state_file_is_refused_unless_asked_for_and_then_sends_only_the_rest() {
    let sandbox = TestSandbox::unlimited();
    let (_keep, ledger) = ledger_dir();
    let dir = CampaignDir::new(&campaign("launch", "", ""), &phones_csv(0, 8));
    run_ok(
        with_ledger(&sandbox, &ledger)
            .args(["run", "--limit", "3"])
            .arg(dir.toml()),
    );
    let other = dir.dir.path().join("other.db");
    let out = output_of(
        with_ledger(&sandbox, &ledger)
            .arg("run")
            .arg(dir.toml())
            .arg("--state")
            .arg(&other),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    let first_state = std::fs::canonicalize(dir.state()).expect("state");
    assert!(
        err.contains(&format!(
            "holds 3 messages of campaign \"launch\" sent from another state, {}",
            first_state.display()
        )),
        "{err}"
    );
    assert!(err.contains("--new-state-ok"), "{err}");
    assert_eq!(sandbox.messages().len(), 3, "the refused run sent");

    // `validate` says so first, for a campaign whose default state is new.
    let moved = CampaignDir::new(&campaign("launch", "", ""), &phones_csv(0, 8));
    let check = output_of(
        with_ledger(&sandbox, &ledger)
            .args(["validate", "--json"])
            .arg(moved.toml()),
    );
    assert!(check.status.success(), "{}", stderr(&check));
    let verdict: serde_json::Value =
        serde_json::from_str(stdout(&check).trim()).expect("one JSON verdict");
    let warning = verdict["other_state_warning"].as_str().unwrap_or_default();
    assert!(
        warning.contains(&format!(
            "holds 3 messages of campaign \"launch\" sent from another state, {}",
            first_state.display()
        )) && warning.contains("--new-state-ok"),
        "{verdict}"
    );
    // The campaign's own state, planned already, is not warned about.
    let own = output_of(
        with_ledger(&sandbox, &ledger)
            .args(["validate", "--json"])
            .arg(dir.toml()),
    );
    assert!(
        !stdout(&own).contains("other_state_warning"),
        "{}",
        stdout(&own)
    );

    let out = run_ok(
        with_ledger(&sandbox, &ledger)
            .arg("run")
            .arg(dir.toml())
            .arg("--state")
            .arg(&other)
            .arg("--new-state-ok"),
    );
    assert!(
        stderr(&out).contains("3 already messaged by this campaign"),
        "{}",
        stderr(&out)
    );
    let per_phone = sandbox.per_phone();
    assert_eq!(per_phone.len(), 8);
    assert!(per_phone.values().all(|&n| n == 1), "{per_phone:?}");
}

#[test]
fn a_run_killed_while_sending_leaves_reservations_that_the_next_run_settles() {
    // Slow answers: rows stay in flight long enough to be killed there.
    let slow = TestSandbox::slow(3_000);
    let (_keep, ledger) = ledger_dir();
    let dir = CampaignDir::new(
        &campaign("launch", "concurrency = 4", ""),
        &phones_csv(0, 10),
    );
    let mut child = with_ledger(&slow, &ledger)
        .arg("run")
        .arg(dir.toml())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the run starts");
    // The sandbox records a message when it arrives and answers 3 s later:
    // once one is recorded, requests are in flight.
    slow.wait_for_messages(1);
    child.kill().expect("kill");
    child.wait().expect("reaped");
    let reserved = FileLedger::open(&ledger)
        .expect("ledger")
        .messages()
        .expect("read")
        .iter()
        .filter(|m| m.state == LedgerState::Sending)
        .count();
    assert!(reserved > 0, "the kill did not land while sending");

    let fast = TestSandbox::unlimited();
    let out = with_ledger(&fast, &ledger)
        .arg("run")
        .arg(dir.toml())
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", stderr(&out));
    let c = dir.counts();
    let messages = FileLedger::open(&ledger)
        .expect("ledger")
        .messages()
        .expect("read");
    let count = |s: LedgerState| messages.iter().filter(|m| m.state == s).count() as u64;
    assert_eq!(count(LedgerState::Sending), 0, "{messages:?}");
    assert_eq!(count(LedgerState::Uncertain), c.uncertain, "{c:?}");
    assert_eq!(count(LedgerState::Sent), c.sent, "{c:?}");
    assert!(c.uncertain > 0, "{c:?}");
    assert_eq!(c.sent + c.uncertain, 10, "{c:?}");
}

#[test]
fn the_account_daily_limit_follows_the_runs_clock() {
    // The engine with a wall clock the test moves: the limit's 24 hours and
    // the slot it names are the clock's, not the machine's.
    let sandbox = TestSandbox::unlimited();
    let (_keep, ledger) = ledger_dir();
    let dir = CampaignDir::new(
        &campaign("clocked", "daily_limit = 3", ""),
        &phones_csv(0, 5),
    );
    let campaign = Campaign::load(&dir.toml()).expect("campaign");
    let api = ClientConfig::new(sandbox.base_url(), ApiKey::new(KEY, "test").expect("key"));
    let start: DateTime<Utc> = "2026-03-01T10:00:00Z".parse().expect("instant");
    let clock = std::sync::Arc::new(ManualClock::new(start));
    let mut options =
        RunOptions::from_campaign(&campaign, StateLocation::File(dir.state()), Some(api));
    options.clock = clock.clone();
    options.ledger = LedgerUse::Record(convers8_campaign::ledger::LedgerLocation::File(
        ledger.clone(),
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let run = || {
        rt.block_on(engine::run(&campaign, &options, &Silent, Stop::new()))
            .expect("the run")
    };

    let first = run();
    let next = start + chrono::Duration::hours(24);
    assert_eq!(
        first.end,
        RunEnd::DailyLimitReached {
            next_at: Some(next)
        }
    );
    assert_eq!(sandbox.messages().len(), 3);

    // A second before the slot: still nothing.
    clock.set(next - chrono::Duration::seconds(1));
    let early = run();
    assert!(
        matches!(early.end, RunEnd::DailyLimitReached { .. }),
        "{:?}",
        early.end
    );
    assert_eq!(sandbox.messages().len(), 3);

    // The slot opened by the run's clock (the machine's is months away).
    clock.set(next + chrono::Duration::seconds(1));
    let later = run();
    assert_eq!(later.end, RunEnd::Completed);
    assert_eq!(sandbox.messages().len(), 5);
}

#[test]
fn a_copied_state_does_not_message_anyone_the_original_already_did() {
    let sandbox = TestSandbox::unlimited();
    let (_keep, ledger) = ledger_dir();
    let dir = CampaignDir::new(&campaign("launch", "", ""), &phones_csv(0, 8));
    run_ok(
        with_ledger(&sandbox, &ledger)
            .args(["run", "--limit", "3"])
            .arg(dir.toml()),
    );
    // The folder is copied with its state (3 sent, 5 pending), and the
    // original then finishes: the copy's 5 pending rows are messaged already.
    let copy = tempfile::tempdir().expect("tempdir");
    for file in ["campaign.toml", "recipients.csv", "campaign.state.db"] {
        std::fs::copy(dir.dir.path().join(file), copy.path().join(file)).expect("copy");
    }
    run_ok(with_ledger(&sandbox, &ledger).arg("run").arg(dir.toml()));
    assert_eq!(sandbox.messages().len(), 8);

    let out = run_ok(
        with_ledger(&sandbox, &ledger)
            .arg("run")
            .arg(copy.path().join("campaign.toml")),
    );
    let text = stdout(&out);
    assert!(
        text.contains("all rows: 8 = sent 3 + failed 0 + uncertain 0 + invalid 0 + duplicate 0 + suppressed 5 + pending 0"),
        "{text}"
    );
    let per_phone = sandbox.per_phone();
    assert_eq!(per_phone.len(), 8);
    assert!(per_phone.values().all(|&n| n == 1), "{per_phone:?}");
    let rows = rows_in(
        &copy.path().join("campaign.state.db"),
        RecipientState::Suppressed,
    );
    assert!(
        rows.iter()
            .all(|r| r.error_code.as_deref() == Some("already_messaged")),
        "{rows:?}"
    );
}
