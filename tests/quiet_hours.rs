//! A send window in each recipient's own hours (`timezone = "recipient"`):
//! Dakar, Nairobi, Port Louis and Honolulu numbers at fixed instants, sent
//! by the engine with a clock the test controls to a sandbox over loopback,
//! and by the real binary under `faketime`.
//!
//! The window is 09:00–20:00 local. At 08:00 UTC on 2026-11-26 it is 08:00
//! in Dakar (closed), 11:00 in Nairobi and 12:00 in Port Louis (open), 22:00
//! the evening before in Honolulu (closed), and 17:00 in Tokyo, the fallback
//! zone of a US number the CSV does not place (open).

mod common;

use convers8_campaign::state::StateLocation;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use common::*;
use convers8_campaign::api::{ApiKey, ClientConfig};
use convers8_campaign::campaign::Campaign;
use convers8_campaign::engine::clock::ManualClock;
use convers8_campaign::engine::progress::Silent;
use convers8_campaign::engine::{self, RunEnd, RunOptions, Stop, StopReason};

const DAKAR: [&str; 2] = ["+221771234567", "+221771234568"];
const NAIROBI: [&str; 2] = ["+254712345678", "+254712345679"];
const PORT_LOUIS: [&str; 2] = ["+23052512345", "+23052512346"];
const HONOLULU: &str = "+18089567000";
/// A US number with no zone in the CSV: the US has many, so it falls back.
const UNPLACED: &str = "+12025550143";
const BAD_ZONE: &str = "+254712345670";

fn csv() -> String {
    let mut csv = String::from("phone,name,tz\n");
    for phone in DAKAR.iter().chain(&NAIROBI).chain(&PORT_LOUIS) {
        csv.push_str(&format!("{phone},P,\n"));
    }
    csv.push_str(&format!("{HONOLULU},H,Pacific/Honolulu\n"));
    csv.push_str(&format!("{UNPLACED},U,\n"));
    csv.push_str(&format!("{BAD_ZONE},B,Mars/Olympus\n"));
    csv
}

fn campaign_toml(column: bool) -> String {
    let column = if column {
        "timezone_column = \"tz\"\n"
    } else {
        ""
    };
    format!(
        r#"[campaign]
name = "quiet"

[recipients]
csv = "recipients.csv"
{column}fallback_timezone = "Asia/Tokyo"

[send]
concurrency = 2
window = {{ start = "09:00", end = "20:00", timezone = "recipient" }}

[message]
type = "text"
[message.content]
text = "Hi"
"#
    )
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("instant")
        .with_timezone(&Utc)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn sent_to(sandbox: &TestSandbox) -> Vec<String> {
    let mut to: Vec<String> = sandbox.messages().into_iter().map(|m| m.to).collect();
    to.sort();
    to
}

fn sorted(phones: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = phones.iter().map(|p| p.to_string()).collect();
    v.sort();
    v
}

#[test]
fn each_recipient_gets_the_message_inside_their_own_hours() {
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(&campaign_toml(true), &csv());
    let campaign = Campaign::load(&dir.toml()).expect("campaign");
    let api = ClientConfig::new(sandbox.base_url(), ApiKey::new(KEY, "test").expect("key"));
    let clock = Arc::new(ManualClock::new(utc("2026-11-26T08:00:00Z")));
    let mut options =
        RunOptions::from_campaign(&campaign, StateLocation::File(dir.state()), Some(api));
    options.clock = clock.clone();
    let rt = runtime();
    let run = || {
        rt.block_on(engine::run(&campaign, &options, &Silent, Stop::new()))
            .expect("run")
    };

    // 08:00 UTC: Nairobi, Port Louis and the Tokyo fallback are open.
    let report = run();
    let plan = report.plan.as_ref().expect("planned");
    assert_eq!((plan.pending, plan.invalid, plan.zone_fallback), (8, 1, 1));
    assert_eq!(report.end, RunEnd::Stopped(StopReason::WindowClosed));
    let mut first = vec![
        NAIROBI[0],
        NAIROBI[1],
        PORT_LOUIS[0],
        PORT_LOUIS[1],
        UNPLACED,
    ];
    assert_eq!(sent_to(&sandbox), sorted(&first));
    let counts = dir.counts();
    assert_eq!(
        (counts.sent, counts.pending, counts.invalid, counts.sending),
        (5, 3, 1, 0),
        "{counts:?}"
    );

    // 09:30 UTC: Dakar opens; Honolulu (23:30) is still asleep.
    clock.set(utc("2026-11-26T09:30:00Z"));
    let report = run();
    assert_eq!(report.end, RunEnd::Stopped(StopReason::WindowClosed));
    first.extend(DAKAR);
    assert_eq!(sent_to(&sandbox), sorted(&first));

    // 20:30 UTC: 10:30 in Honolulu, the last row; everyone else's night.
    clock.set(utc("2026-11-26T20:30:00Z"));
    let report = run();
    assert_eq!(report.end, RunEnd::Completed);
    first.push(HONOLULU);
    assert_eq!(sent_to(&sandbox), sorted(&first));
    let counts = dir.counts();
    assert_eq!(
        (counts.sent, counts.pending, counts.invalid),
        (8, 0, 1),
        "{counts:?}"
    );
}

#[test]
fn at_the_hour_dakar_closes_only_honolulu_is_sent() {
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(&campaign_toml(true), &csv());
    let campaign = Campaign::load(&dir.toml()).expect("campaign");
    let api = ClientConfig::new(sandbox.base_url(), ApiKey::new(KEY, "test").expect("key"));
    let mut options =
        RunOptions::from_campaign(&campaign, StateLocation::File(dir.state()), Some(api));
    // 20:00 UTC: Dakar's window has just closed (its end is exclusive),
    // Nairobi, Port Louis and Tokyo are at night; Honolulu is at 10:00.
    options.clock = Arc::new(ManualClock::new(utc("2026-11-26T20:00:00Z")));
    let report = runtime()
        .block_on(engine::run(&campaign, &options, &Silent, Stop::new()))
        .expect("run");
    assert_eq!(report.end, RunEnd::Stopped(StopReason::WindowClosed));
    assert_eq!(sent_to(&sandbox), sorted(&[HONOLULU]));
}

/// Under `faketime`, or `None` (with a notice) where it is not installed.
fn faketime(at: &str, sandbox: &TestSandbox) -> Option<std::process::Command> {
    let probe = std::process::Command::new("faketime")
        .args(["-f", "@2026-11-26 08:00:00", "date", "-u", "+%H:%M"])
        .env("TZ", "UTC")
        .output();
    if probe.is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "faketime must be installed in CI"
        );
        eprintln!("skipped: faketime is not installed (apt-get install faketime)");
        return None;
    }
    let mut cmd = std::process::Command::new("faketime");
    cmd.args(["-f", &format!("@{at}")])
        .arg(env!("CARGO_BIN_EXE_convers8-campaign"))
        .env("TZ", "UTC")
        // Only the wall clock moves; timers keep real time.
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        // Never the user's own ledger.
        .env("CONVERS8_LEDGER", test_ledger())
        .env("CONVERS8_API_KEY", KEY)
        .env("CONVERS8_BASE_URL", sandbox.base_url());
    Some(cmd)
}

#[test]
fn under_faketime_the_binary_sends_only_to_zones_that_are_open() {
    let sandbox = TestSandbox::unlimited();
    // No Honolulu and no fallback row: at 21:00 UTC every zone is closed.
    let csv: String = csv()
        .lines()
        .filter(|l| !l.contains(HONOLULU) && !l.contains(UNPLACED))
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = CampaignDir::new(&campaign_toml(true), &csv);
    let Some(mut night) = faketime("2026-11-26 21:00:00", &sandbox) else {
        return;
    };
    let out = night.arg("run").arg(dir.toml()).output().expect("runs");
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    // Tokyo is the fallback, but no row fell back: Port Louis opens first.
    assert!(
        stdout(&out).contains("outside the send window; it opens at 2026-11-27 05:00 UTC"),
        "{}",
        stdout(&out)
    );
    assert!(sandbox.messages().is_empty());

    let Some(mut morning) = faketime("2026-11-26 08:00:00", &sandbox) else {
        return;
    };
    let out = morning.arg("run").arg(dir.toml()).output().expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        sent_to(&sandbox),
        sorted(&[NAIROBI[0], NAIROBI[1], PORT_LOUIS[0], PORT_LOUIS[1]])
    );
    let counts = dir.counts();
    assert_eq!((counts.sent, counts.pending, counts.invalid), (4, 2, 1));

    // `status` says when the rest may go: Dakar's (zone1970.tab names
    // Senegal's zone Africa/Abidjan) at 09:00 UTC.
    let Some(mut status) = faketime("2026-11-26 08:00:00", &sandbox) else {
        return;
    };
    let out = status.arg("status").arg(dir.toml()).output().expect("runs");
    assert!(
        stdout(&out)
            .contains("pending    0 open now, 2 open at 2026-11-26 09:00 UTC (Africa/Abidjan)"),
        "{}",
        stdout(&out)
    );
    let Some(mut json) = faketime("2026-11-26 08:00:00", &sandbox) else {
        return;
    };
    let out = json
        .args(["status", "--json"])
        .arg(dir.toml())
        .output()
        .expect("runs");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        status["pending_by_zone"],
        serde_json::json!([{
            "timezone": "Africa/Abidjan",
            "pending": 2,
            "open_now": false,
            "opens_at": "2026-11-26T09:00:00Z"
        }])
    );
}

#[test]
fn validate_names_a_bad_zone_and_counts_the_rows_that_fell_back() {
    let dir = CampaignDir::new(&campaign_toml(true), &csv());
    let out = bare_bin()
        .arg("validate")
        .arg(dir.toml())
        .output()
        .expect("runs");
    let text = stdout(&out);
    assert!(
        text.contains(
            "row 9 (line 10): invalid_timezone: unknown timezone 'Mars/Olympus' in column 'tz': use an IANA name such as Africa/Nairobi"
        ),
        "{text}"
    );
    assert!(
        text.contains("warning: 1 row will be sent in Asia/Tokyo hours"),
        "{text}"
    );
    // Without the column, Honolulu falls back too (the US has many zones),
    // and the bad cell is not read at all.
    let dir = CampaignDir::new(&campaign_toml(false), &csv());
    let out = bare_bin()
        .arg("validate")
        .arg(dir.toml())
        .output()
        .expect("runs");
    let text = stdout(&out);
    assert!(
        text.contains("warning: 2 rows will be sent in Asia/Tokyo hours"),
        "{text}"
    );
    assert!(text.contains("9 valid, 0 invalid"), "{text}");
}

#[test]
fn rows_claimed_before_their_zone_closes_are_not_sent_after_it() {
    // One request at a time, 50 ms each: a claimed batch takes a while.
    let sandbox = TestSandbox::slow(50);
    let toml = campaign_toml(false).replace("concurrency = 2", "concurrency = 1");
    let dir = CampaignDir::new(&toml, &kenyan_csv(200));
    let campaign = Campaign::load(&dir.toml()).expect("campaign");
    let api = ClientConfig::new(sandbox.base_url(), ApiKey::new(KEY, "test").expect("key"));
    // 19:59 in Nairobi: open for one more minute.
    let clock = Arc::new(ManualClock::new(utc("2026-11-26T16:59:00Z")));
    let mut options =
        RunOptions::from_campaign(&campaign, StateLocation::File(dir.state()), Some(api));
    options.clock = clock.clone();
    let rt = runtime();
    let run = rt.spawn(async move { engine::run(&campaign, &options, &Silent, Stop::new()).await });
    sandbox.wait_for_messages(3);
    // Nairobi's window closes with rows claimed and not yet sent.
    clock.set(utc("2026-11-26T17:00:00Z"));
    let at_close = sandbox.messages().len();
    let report = rt
        .block_on(async { tokio::time::timeout(std::time::Duration::from_secs(60), run).await })
        .expect("the run stops within a minute")
        .expect("join")
        .expect("run");
    assert_eq!(report.end, RunEnd::Stopped(StopReason::WindowClosed));
    // At most the one request already on the wire goes after the close.
    let sent = sandbox.messages().len();
    assert!(
        sent <= at_close + 1,
        "{at_close} at the close, {sent} in all"
    );
    let counts = dir.counts();
    assert_eq!(counts.sent, sent as u64, "{counts:?}");
    assert_eq!(counts.sending + counts.uncertain, 0, "{counts:?}");
    assert_eq!(counts.pending, 200 - counts.sent, "{counts:?}");
}
