//! `send-test`: the real binary against a sandbox on 127.0.0.1. A test send
//! reaches only the `--to` phone, carries the row's rendered message, and
//! leaves no state file behind.

mod common;

use std::process::Output;

use common::{CampaignDir, TestSandbox, bare_bin, bin, run_ok, stderr, stdout, text_campaign};

const TEXT: &str = "Hi {{name}}, row {{recipient.row}} of {{recipient.phone}}";

fn send_test(sandbox: &TestSandbox, dir: &CampaignDir, args: &[&str]) -> Output {
    bin(sandbox)
        .arg("send-test")
        .arg(dir.toml())
        .args(args)
        .output()
        .expect("binary runs")
}

/// The files in the campaign folder, to show a test leaves nothing behind.
fn files(dir: &CampaignDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn assert_one_line_error(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(out));
    let err = stderr(out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn sends_row_ones_message_to_the_given_phone_only() {
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(
        &text_campaign("concurrency = 2", TEXT),
        "phone,name\n+254710000001,Ann\n+254710000002,Bob\n",
    );
    let out = run_ok(
        bin(&sandbox)
            .arg("send-test")
            .arg(dir.toml())
            .args(["--to", "0799 000 111"]),
    );
    assert!(
        stdout(&out).starts_with("sent a test of row 1 to +254799000111: message_id wamid."),
        "{}",
        stdout(&out)
    );
    let messages = sandbox.messages();
    assert_eq!(messages.len(), 1, "exactly one message: {messages:?}");
    let m = &messages[0];
    assert_eq!(m.to, "+254799000111");
    assert_eq!(m.body["name"], "Ann");
    // The content is the row's, as planned: even its own phone stays in the text.
    assert_eq!(m.body["content"]["text"], "Hi Ann, row 1 of +254710000001");
    assert!(stdout(&out).contains(&m.message_id));
    assert!(!dir.state().exists(), "a test is not recorded in the state");
    assert_eq!(files(&dir), ["campaign.toml", "recipients.csv"]);
}

#[test]
fn the_default_is_the_first_row_that_can_be_sent_and_row_picks_one() {
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(
        &text_campaign("concurrency = 2", TEXT),
        "phone,name\n12345,Nobody\n+254710000002,Bob\n+254710000003,Chao 张伟\n",
    );
    let out = run_ok(
        bin(&sandbox)
            .arg("send-test")
            .arg(dir.toml())
            .args(["--to", "+254799000111"]),
    );
    assert!(
        stdout(&out).starts_with("sent a test of row 2 "),
        "{}",
        stdout(&out)
    );
    let out = run_ok(bin(&sandbox).arg("send-test").arg(dir.toml()).args([
        "--to",
        "+254799000111",
        "--row",
        "3",
    ]));
    assert!(
        stdout(&out).starts_with("sent a test of row 3 "),
        "{}",
        stdout(&out)
    );
    let texts: Vec<String> = sandbox
        .messages()
        .iter()
        .map(|m| {
            m.body["content"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        texts,
        [
            "Hi Bob, row 2 of +254710000002",
            "Hi Chao 张伟, row 3 of +254710000003"
        ]
    );

    // A row the planner would not send, and a row past the end: nothing sent.
    let err = assert_one_line_error(&send_test(
        &sandbox,
        &dir,
        &["--to", "+254799000111", "--row", "1"],
    ));
    assert!(
        err.contains("row 1 of") && err.contains("invalid_phone"),
        "{err}"
    );
    let err = assert_one_line_error(&send_test(
        &sandbox,
        &dir,
        &["--to", "+254799000111", "--row", "9"],
    ));
    assert!(
        err.contains("--row 9") && err.contains("3 data rows"),
        "{err}"
    );
    assert_eq!(sandbox.messages().len(), 2);
    assert!(!dir.state().exists());
}

#[test]
fn a_bad_to_phone_is_one_line_and_sends_nothing() {
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(
        &text_campaign("concurrency = 2", TEXT),
        "phone,name\n+254710000001,Ann\n",
    );
    let out = send_test(&sandbox, &dir, &["--to", "12"]);
    let err = assert_one_line_error(&out);
    assert!(err.contains("--to") && err.contains("'12'"), "{err}");
    assert!(out.stdout.is_empty());
    assert!(sandbox.messages().is_empty());
    assert_eq!(files(&dir), ["campaign.toml", "recipients.csv"]);
}

#[test]
fn a_rejected_key_is_one_line_and_sends_nothing() {
    const WRONG: &str = "sk_live_WRONG_5ecret";
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(
        &text_campaign("concurrency = 2", TEXT),
        "phone,name\n+254710000001,Ann\n",
    );
    let out = bare_bin()
        .env("CONVERS8_API_KEY", WRONG)
        .env("CONVERS8_BASE_URL", sandbox.base_url())
        .arg("send-test")
        .arg(dir.toml())
        .args(["--to", "+254799000111"])
        .output()
        .expect("binary runs");
    let err = assert_one_line_error(&out);
    assert!(
        err.contains("CONVERS8_API_KEY") && !err.contains(WRONG),
        "{err}"
    );
    assert!(sandbox.messages().is_empty());
    assert!(!dir.state().exists());
}

#[test]
fn help_shows_an_example() {
    let out = run_ok(bare_bin().args(["send-test", "--help"]));
    let help = stdout(&out);
    assert!(
        help.contains("Examples:") && help.contains("send-test campaigns/"),
        "{help}"
    );
}

#[test]
fn a_rate_limited_test_waits_out_retry_after_and_is_sent_once() {
    // One message per 4 s: the second test, a moment after the first, is refused
    // with a Retry-After and must wait it out.
    let sandbox = TestSandbox::start(convers8_campaign::sandbox::SandboxConfig {
        rate: 0.25,
        burst: 1,
        ..Default::default()
    });
    let dir = CampaignDir::new(
        &text_campaign("concurrency = 2", TEXT),
        "phone,name\n+254710000001,Ann\n",
    );
    for _ in 0..2 {
        let out = run_ok(
            bin(&sandbox)
                .arg("send-test")
                .arg(dir.toml())
                .args(["--to", "+254799000111"]),
        );
        assert!(
            stdout(&out).starts_with("sent a test of row 1 to +254799000111"),
            "{}",
            stdout(&out)
        );
        if sandbox.stats().rate_limited > 0 {
            let err = stderr(&out);
            assert!(
                err.contains("rate limited by the API") && err.contains("trying again in"),
                "the wait is explained: {err}"
            );
        }
    }
    assert!(sandbox.stats().rate_limited >= 1, "{:?}", sandbox.stats());
    assert_eq!(sandbox.messages().len(), 2, "each test sent exactly once");
    assert!(!dir.state().exists());
}

#[test]
fn a_test_to_an_opted_out_phone_is_refused_and_nothing_is_sent() {
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(&text_campaign("", TEXT), "phone,name\n+254710000001,Ann\n");
    let ledger = dir.dir.path().join("ledger.db");
    let added = bare_bin()
        .args(["optout", "add", "+254799000111", "--ledger"])
        .arg(&ledger)
        .output()
        .expect("optout runs");
    assert!(added.status.success(), "{}", stderr(&added));
    let out = bin(&sandbox)
        .env("CONVERS8_LEDGER", &ledger)
        .arg("send-test")
        .arg(dir.toml())
        .args(["--to", "0799000111"])
        .output()
        .expect("send-test runs");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--to +254799000111: on the opt-out list of the ledger"),
        "{err}"
    );
    assert!(sandbox.messages().is_empty());
}
