//! End-to-end: the real binary runs campaigns against a sandbox on loopback,
//! and the sandbox's record is the judge of what arrived.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use convers8_campaign::sandbox::SandboxConfig;

fn run(sandbox: &TestSandbox, dir: &CampaignDir) -> std::process::Output {
    bin(sandbox)
        .arg("run")
        .arg(dir.toml())
        .output()
        .expect("binary runs")
}

#[test]
fn every_message_type_is_sent_from_a_campaign() {
    let sandbox = TestSandbox::unlimited();
    let contents = [
        ("text", r#"text = "Hi {{name}}""#),
        (
            "media",
            r#"type = "image"
url = "https://cdn.example.com/{{code}}.jpg"
caption = "For {{name}}""#,
        ),
        (
            "interactive",
            r#"type = "button"
body = { text = "Hi {{name}}, coming?" }
footer = { text = "Reply below" }
action = { buttons = [
  { type = "reply", reply = { id = "yes-{{code}}", title = "Yes" } },
  { type = "reply", reply = { id = "no", title = "No" } },
] }"#,
        ),
        (
            "interactive",
            r#"type = "list"
header = { type = "text", text = "Menu" }
body = { text = "Pick one, {{name}}" }
action = { sections = [
  { title = "Mains", rows = [
    { id = "ugali", title = "Ugali", description = "with sukuma" },
    { id = "pilau", title = "Pilau" },
  ] },
] }"#,
        ),
        (
            "template",
            r#"template_name = "order_update"
language = { code = "en" }
components = [
  { type = "header", parameters = [ { type = "image", image = { link = "https://cdn.example.com/h.png" } } ] },
  { type = "body", parameters = [ { type = "text", text = "{{name}}" }, { type = "text", text = "{{code}}" } ] },
]"#,
        ),
        (
            "location",
            r#"latitude = "-1.2921"
longitude = "36.8219"
name = "Shop for {{name}}"
address = "Kimathi St, Nairobi""#,
        ),
    ];
    for (i, (kind, content)) in contents.iter().enumerate() {
        let toml = format!(
            "[campaign]\nname = \"t{i}\"\n[recipients]\ncsv = \"recipients.csv\"\n[message]\ntype = \"{kind}\"\n[message.content]\n{content}\n"
        );
        let phone = format!("+2547110000{i:02}");
        let dir = CampaignDir::new(&toml, &format!("phone,name,code\n{phone},Amani,C{i}\n"));
        let out = run(&sandbox, &dir);
        assert!(out.status.success(), "{kind}: {}", stderr(&out));
        let counts = dir.counts();
        assert_eq!(counts.sent, 1, "{kind}: {}", stdout(&out));
        let got: Vec<_> = sandbox
            .messages()
            .into_iter()
            .filter(|m| m.to == phone)
            .collect();
        assert_eq!(got.len(), 1, "{kind}");
        assert_eq!(got[0].kind.as_str(), *kind);
        let body = &got[0].body;
        // The recipient's name goes in `name`, or `contact` for a location.
        let name_field = if *kind == "location" {
            "contact"
        } else {
            "name"
        };
        assert_eq!(body[name_field], "Amani", "{kind}: {body}");
        let text = body["content"].to_string();
        assert!(
            text.contains("Amani") || *kind == "template" && text.contains("Amani"),
            "{kind}: {text}"
        );
    }
}

#[test]
fn text_arrives_byte_for_byte() {
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(
        &text_campaign("", "{{name}} says: {{note}}"),
        "phone,name,note\n+254711000001,Tom & Jerry <3,\"emoji 🎉, «quotes» \"\"x\"\" 'y'\"\n+254711000002,محمد,{{vars.secret}} {{#each x}}\n",
    );
    run_ok(bin(&sandbox).arg("run").arg(dir.toml()));
    let texts: HashMap<String, String> = sandbox
        .messages()
        .into_iter()
        .map(|m| {
            (
                m.to,
                m.body["content"]["text"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        texts["+254711000001"],
        "Tom & Jerry <3 says: emoji 🎉, «quotes» \"x\" 'y'"
    );
    // Recipient data is data: template syntax in a cell is sent literally.
    assert_eq!(
        texts["+254711000002"],
        "محمد says: {{vars.secret}} {{#each x}}"
    );
}

#[test]
fn invalid_and_duplicate_rows_are_counted_not_sent() {
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(
        &text_campaign("", "Hi {{name}}"),
        "phone,name\n0711000001,A\n12345,B\n+254 711 000 001,C\n,D\n+254711000002,E\n",
    );
    let out = run_ok(bin(&sandbox).arg("run").arg(dir.toml()));
    let counts = dir.counts();
    assert_eq!(
        (
            counts.sent,
            counts.invalid,
            counts.duplicate,
            counts.total()
        ),
        (2, 2, 1, 5),
        "{}",
        stdout(&out)
    );
    assert_eq!(sandbox.messages().len(), 2);
}

#[test]
fn rate_limit_storms_converge_without_giving_up() {
    // A server that takes 25 messages/s with a burst of 5, and a campaign that
    // does not know it: every row must still be sent, none failed.
    let sandbox = TestSandbox::start(SandboxConfig {
        rate: 25.0,
        burst: 5,
        ..SandboxConfig::default()
    });
    let dir = CampaignDir::new(
        &text_campaign("concurrency = 16", "Hi {{name}}"),
        &kenyan_csv(120),
    );
    let out = run_ok(bin(&sandbox).arg("run").arg(dir.toml()));
    let counts = dir.counts();
    assert_eq!((counts.sent, counts.failed), (120, 0), "{}", stdout(&out));
    assert!(sandbox.stats().rate_limited > 0, "the storm happened");
    assert!(sandbox.per_phone().values().all(|&n| n == 1));
}

#[test]
fn a_rejected_key_stops_the_run_with_rows_pending() {
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(30));
    let out = bin(&sandbox)
        .env("CONVERS8_API_KEY", "wrong-key-123")
        .arg("run")
        .arg(dir.toml())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("CONVERS8_API_KEY"), "{text}");
    assert!(
        !text.contains("wrong-key-123"),
        "the key must never be printed"
    );
    let counts = dir.counts();
    assert_eq!((counts.pending, counts.failed, counts.sent), (30, 0, 0));
    // With the right key the same command finishes the job.
    run_ok(bin(&sandbox).arg("run").arg(dir.toml()));
    assert_eq!(dir.counts().sent, 30);
}

#[test]
fn no_key_is_a_clear_error_and_changes_nothing() {
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(3));
    let out = bare_bin()
        .arg("run")
        .arg(dir.toml())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("CONVERS8_API_KEY"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_circuit_breaker_stops_an_outage_without_failing_the_list() {
    let sandbox = TestSandbox::start(SandboxConfig {
        rate: 0.0,
        fail_rate: 1.0,
        ..SandboxConfig::default()
    });
    let dir = CampaignDir::new(
        &text_campaign("concurrency = 4\nmax_attempts = 50", "Hi"),
        &kenyan_csv(200),
    );
    let out = bin(&sandbox)
        .arg("run")
        .arg(dir.toml())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("circuit breaker"), "{}", stdout(&out));
    let counts = dir.counts();
    assert_eq!(counts.failed, 0, "an outage must not fail recipients");
    assert_eq!(counts.pending, 200);
}

#[test]
fn the_same_rejection_for_every_recipient_stops_the_run_instead_of_failing_the_list() {
    // A base URL with a wrong path: every send is answered not_found.
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(&text_campaign("concurrency = 2", "Hi"), &kenyan_csv(200));
    let out = bin(&sandbox)
        .env("CONVERS8_BASE_URL", format!("{}/v2", sandbox.base_url()))
        .arg("run")
        .arg(dir.toml())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("rejected with not_found"), "{text}");
    let counts = dir.counts();
    assert!(counts.failed >= 20 && counts.failed <= 22, "{counts:?}");
    assert_eq!(counts.pending, 200 - counts.failed);
}

#[test]
fn an_answer_lost_after_sending_makes_the_row_uncertain_and_it_is_not_resent() {
    let sandbox = TestSandbox::start(SandboxConfig {
        rate: 0.0,
        slow_rate: 1.0,
        slow: Duration::from_secs(3),
        ..SandboxConfig::default()
    });
    let dir = CampaignDir::new(&text_campaign("timeout_secs = 1", "Hi"), &kenyan_csv(2));
    let out = run_ok(bin(&sandbox).arg("run").arg(dir.toml()));
    assert_eq!(dir.counts().uncertain, 2, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("retry --uncertain"),
        "{}",
        stdout(&out)
    );
    // A second run sends nothing more.
    run_ok(bin(&sandbox).arg("run").arg(dir.toml()));
    assert_eq!(sandbox.messages().len(), 2, "delivered once, never resent");
    // Regression: a dry run with --resend-uncertain used to put the rows back
    // to pending, so the next plain cron run resent them.
    run_ok(
        bin(&sandbox)
            .args(["run", "--dry-run", "--resend-uncertain"])
            .arg(dir.toml()),
    );
    assert_eq!(dir.counts().uncertain, 2);
    run_ok(bin(&sandbox).arg("run").arg(dir.toml()));
    assert_eq!(sandbox.messages().len(), 2);
}

#[test]
fn limit_sends_a_canary_and_a_rerun_continues() {
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(25));
    run_ok(bin(&sandbox).args(["run", "--limit", "5"]).arg(dir.toml()));
    assert_eq!((dir.counts().sent, dir.counts().pending), (5, 20));
    run_ok(bin(&sandbox).arg("run").arg(dir.toml()));
    assert_eq!(dir.counts().sent, 25);
    assert_eq!(sandbox.messages().len(), 25);
}

#[test]
fn a_second_run_on_a_locked_state_exits_75_naming_the_holder() {
    let sandbox = TestSandbox::slow(200);
    let dir = CampaignDir::new(&text_campaign("concurrency = 1", "Hi"), &kenyan_csv(40));
    let mut first = spawn_run(&sandbox, &dir);
    sandbox.wait_for_messages(1);
    let out = bin(&sandbox)
        .arg("run")
        .arg(dir.toml())
        .output()
        .expect("second run");
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains(&format!("pid {}", first.id())), "{text}");
    assert!(text.contains("try later"), "{text}");
}

#[test]
fn a_changed_csv_is_refused_until_new_recipients_are_added() {
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(&text_campaign("", "Hi {{name}}"), &kenyan_csv(3));
    run_ok(bin(&sandbox).arg("run").arg(dir.toml()));
    std::fs::write(dir.csv(), kenyan_csv(5)).expect("grow the csv");
    let out = bin(&sandbox)
        .arg("run")
        .arg(dir.toml())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(text.contains("recipients.csv changed"), "{text}");
    assert!(text.contains("--add-new-recipients"), "{text}");
    assert_eq!(sandbox.messages().len(), 3, "nothing sent on refusal");

    run_ok(
        bin(&sandbox)
            .args(["run", "--add-new-recipients"])
            .arg(dir.toml()),
    );
    assert_eq!(dir.counts().sent, 5);
    assert!(sandbox.per_phone().values().all(|&n| n == 1));
    // The same CSV again is not a change.
    run_ok(bin(&sandbox).arg("run").arg(dir.toml()));

    // A changed message is refused even with --add-new-recipients.
    std::fs::write(dir.toml(), text_campaign("", "Bye {{name}}")).expect("edit");
    let out = bin(&sandbox)
        .args(["run", "--add-new-recipients"])
        .arg(dir.toml())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("changed since it was planned"),
        "{}",
        stderr(&out)
    );
    assert_eq!(sandbox.messages().len(), 5);
}

#[test]
fn pacing_knobs_can_change_between_runs() {
    // Only what decides the messages is fingerprinted: raising concurrency
    // after a canary must not be refused as a changed campaign.
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(&text_campaign("concurrency = 2", "Hi"), &kenyan_csv(6));
    run_ok(bin(&sandbox).args(["run", "--limit", "2"]).arg(dir.toml()));
    std::fs::write(dir.toml(), text_campaign("concurrency = 16", "Hi")).expect("edit");
    run_ok(bin(&sandbox).arg("run").arg(dir.toml()));
    assert_eq!(dir.counts().sent, 6);
}

#[test]
fn dry_run_plans_without_sending() {
    let dir = CampaignDir::new(&text_campaign("", "Hi {{name}}"), &kenyan_csv(4));
    let out = run_ok(bare_bin().args(["run", "--dry-run"]).arg(dir.toml()));
    assert!(stdout(&out).contains("dry run"), "{}", stdout(&out));
    assert_eq!(dir.counts().pending, 4);
}
