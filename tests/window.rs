//! The send window on the nights that test it: the engine, with a wall clock
//! the test controls, sends to a sandbox over loopback into a real state
//! file; and the real binary under `faketime` on the DST fall-back night.
//!
//! 2026-11-01 in New York: 02:00 EDT (06:00 UTC) becomes 01:00 EST, so the
//! hour 01:00–02:00 happens twice. A window 22:00–01:30 ends at the *first*
//! 01:30 (05:30 UTC); the second 01:10 (06:10 UTC) is outside it.

mod common;

use convers8_campaign::state::StateLocation;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use convers8_campaign::api::{ApiKey, ClientConfig};
use convers8_campaign::campaign::Campaign;
use convers8_campaign::engine::clock::ManualClock;
use convers8_campaign::engine::progress::Silent;
use convers8_campaign::engine::{self, RunEnd, RunOptions, Stop, StopReason};

const FALL_BACK_WINDOW: &str =
    r#"window = { start = "22:00", end = "01:30", timezone = "America/New_York" }"#;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("instant")
        .with_timezone(&Utc)
}

/// The engine's options for `dir`, sending to `sandbox`, judged by `clock`.
fn options(
    sandbox: &TestSandbox,
    dir: &CampaignDir,
    clock: Arc<ManualClock>,
) -> (Campaign, RunOptions) {
    let campaign = Campaign::load(&dir.toml()).expect("campaign");
    let api = ClientConfig::new(sandbox.base_url(), ApiKey::new(KEY, "test").expect("key"));
    let mut options =
        RunOptions::from_campaign(&campaign, StateLocation::File(dir.state()), Some(api));
    options.clock = clock;
    (campaign, options)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_wall_clock_jump_past_the_window_end_stops_the_run() {
    let sandbox = TestSandbox::slow(50);
    let send = format!("concurrency = 1\n{FALL_BACK_WINDOW}");
    let dir = CampaignDir::new(&text_campaign(&send, "Hi"), &kenyan_csv(300));
    // 01:20 EDT, the first pass: the window is open.
    let clock = Arc::new(ManualClock::new(utc("2026-11-01T05:20:00Z")));
    let (campaign, options) = options(&sandbox, &dir, clock.clone());
    let rt = runtime();
    let run = rt.spawn(async move { engine::run(&campaign, &options, &Silent, Stop::new()).await });
    sandbox.wait_for_messages(3);
    // The clock jumps past the first 01:30 (a VM resumed, an NTP step): no
    // timer would notice; the run must.
    clock.set(utc("2026-11-01T05:31:00Z"));
    let report = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), run).await })
        .expect("the run stops within a minute")
        .expect("join")
        .expect("run");
    assert_eq!(report.end, RunEnd::Stopped(StopReason::WindowClosed));
    let counts = dir.counts();
    assert!(counts.sent >= 3 && counts.pending > 0, "{counts:?}");
    assert_eq!(counts.sending + counts.uncertain, 0, "{counts:?}");
    assert_eq!(counts.sent, sandbox.messages().len() as u64);
}

#[test]
fn the_repeated_hour_after_the_window_end_is_outside_it() {
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(&text_campaign(FALL_BACK_WINDOW, "Hi"), &kenyan_csv(5));
    // 01:10 EST, the second pass: the window closed at the first 01:30.
    let clock = Arc::new(ManualClock::new(utc("2026-11-01T06:10:00Z")));
    let (campaign, options) = options(&sandbox, &dir, clock);
    let report = runtime()
        .block_on(engine::run(&campaign, &options, &Silent, Stop::new()))
        .expect("run");
    assert_eq!(
        report.end,
        RunEnd::OutsideWindow {
            opens_at: utc("2026-11-02T03:00:00Z")
        }
    );
    assert!(sandbox.messages().is_empty());
    assert_eq!(dir.counts().pending, 5);
}

#[test]
fn under_faketime_the_binary_keeps_the_window_on_the_fall_back_night() {
    // The real binary with its wall clock set to the second 01:10 by
    // libfaketime (Debian package `faketime`; `.ci/run` installs it).
    let Ok(probe) = std::process::Command::new("faketime")
        .args(["-f", "@2026-11-01 06:10:00", "date", "-u", "+%H:%M"])
        .env("TZ", "UTC")
        .output()
    else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "faketime must be installed in CI"
        );
        eprintln!("skipped: faketime is not installed (apt-get install faketime)");
        return;
    };
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "06:10");

    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(&text_campaign(FALL_BACK_WINDOW, "Hi"), &kenyan_csv(5));
    let out = std::process::Command::new("faketime")
        .args(["-f", "@2026-11-01 06:10:00"])
        .arg(env!("CARGO_BIN_EXE_convers8-campaign"))
        .arg("run")
        .arg(dir.toml())
        .env("TZ", "UTC")
        // Only the wall clock moves; timers keep real time.
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        // Never the user's own ledger.
        .env("CONVERS8_LEDGER", test_ledger())
        .env("CONVERS8_API_KEY", KEY)
        .env("CONVERS8_BASE_URL", sandbox.base_url())
        .output()
        .expect("faketime runs the binary");
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("outside the send window; it opens at 2026-11-02 03:00 UTC"),
        "{}",
        stdout(&out)
    );
    assert!(sandbox.messages().is_empty());
}
