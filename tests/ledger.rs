//! The audience ledger and opt-outs, end to end: the real binary, real
//! campaign files and ledgers in temporary directories, the sandbox.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use convers8_campaign::ledger::{FileLedger, LedgerState};
use convers8_campaign::state::{RecipientRecord, RecipientState, StateDb, StateRead};

/// The binary aimed at the sandbox, with a ledger of this test's own.
fn with_ledger(sandbox: &TestSandbox, ledger: &Path) -> Command {
    let mut cmd = bin(sandbox);
    cmd.env("CONVERS8_LEDGER", ledger);
    cmd
}

/// `optout ...` on a ledger of the test's own.
fn optout(ledger: &Path, args: &[&str]) -> std::process::Output {
    bare_bin()
        .arg("optout")
        .args(args)
        .arg("--ledger")
        .arg(ledger)
        .output()
        .expect("binary runs")
}

fn suppressed_rows(state: &Path) -> Vec<RecipientRecord> {
    let db = StateDb::open_read_only(state).expect("state opens");
    let mut rows = Vec::new();
    db.for_each_recipient(&[RecipientState::Suppressed], &mut |r| {
        rows.push(r);
        Ok(())
    })
    .expect("rows");
    rows
}

/// The phone `kenyan_csv` puts on data row `row` (1-based).
fn phone_of_row(row: usize) -> String {
    format!("+2547{:08}", 10_000_000 + row - 1)
}

fn ledger_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("account").join("ledger.db");
    (dir, path)
}

#[test]
fn an_opt_out_added_while_the_campaign_runs_is_honoured_before_that_claim() {
    let sandbox = TestSandbox::unlimited();
    let (_keep, ledger) = ledger_dir();
    // 40 rows at 10 a second: four seconds in which to opt someone out.
    let dir = CampaignDir::new(
        &text_campaign("concurrency = 1\nrate_per_second = 10", "Hi {{name}}"),
        &kenyan_csv(40),
    );
    let target = phone_of_row(36);
    let mut child = with_ledger(&sandbox, &ledger)
        .arg("run")
        .arg(dir.toml())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the run starts");
    sandbox.wait_for_messages(2);
    let out = optout(&ledger, &["add", &target]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = child.wait().expect("the run ends");
    assert!(status.success(), "run exit {status:?}");

    assert_eq!(
        sandbox.per_phone().get(&target),
        None,
        "the opted-out phone was sent"
    );
    assert_eq!(sandbox.messages().len(), 39);
    let rows = suppressed_rows(&dir.state());
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].phone.as_deref(), Some(target.as_str()));
    assert_eq!(rows[0].error_code.as_deref(), Some("opted_out"));
    let c = dir.counts();
    assert_eq!((c.sent, c.suppressed, c.total()), (39, 1, 40), "{c:?}");
}

#[test]
fn opted_out_phones_are_suppressed_at_plan_time_and_every_count_says_so() {
    let sandbox = TestSandbox::unlimited();
    let (_keep, ledger) = ledger_dir();
    let dir = CampaignDir::new(&text_campaign("", "Hi {{name}}"), &kenyan_csv(6));
    // One written nationally: normalised like a recipient, it matches row 2.
    let national = format!("0{}", &phone_of_row(2)[4..]);
    let out = optout(
        &ledger,
        &[
            "add",
            &phone_of_row(1),
            &national,
            "--default-country",
            "KE",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("2 added"), "{}", stdout(&out));

    let validate = with_ledger(&sandbox, &ledger)
        .arg("validate")
        .arg(dir.toml())
        .output()
        .expect("validate runs");
    assert!(
        stdout(&validate).contains("4 valid, 0 invalid, 0 duplicate, 2 suppressed"),
        "{}",
        stdout(&validate)
    );

    let out = run_ok(with_ledger(&sandbox, &ledger).arg("run").arg(dir.toml()));
    let text = stdout(&out);
    assert!(
        text.contains("all rows: 6 = sent 4 + failed 0 + uncertain 0 + invalid 0 + duplicate 0 + suppressed 2 + pending 0"),
        "{text}"
    );
    let per_phone = sandbox.per_phone();
    assert!(!per_phone.contains_key(&phone_of_row(1)) && !per_phone.contains_key(&phone_of_row(2)));
    assert_eq!(sandbox.messages().len(), 4);
    let rows = suppressed_rows(&dir.state());
    assert_eq!(
        rows.iter().map(|r| r.row).collect::<Vec<_>>(),
        vec![1, 2],
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .all(|r| r.error_code.as_deref() == Some("opted_out"))
    );

    let status = run_ok(bare_bin().arg("status").arg(dir.toml()));
    assert!(
        stdout(&status).contains("suppressed 2"),
        "{}",
        stdout(&status)
    );
    let report = run_ok(
        bare_bin()
            .args(["report", "--format", "csv"])
            .arg(dir.toml()),
    );
    let csv = stdout(&report);
    assert_eq!(csv.matches(",suppressed,").count(), 2, "{csv}");
    assert_eq!(csv.matches("opted_out").count(), 2, "{csv}");
}

#[test]
fn an_exclude_file_suppresses_its_phones_for_this_campaign_only() {
    let sandbox = TestSandbox::unlimited();
    let (_keep, ledger) = ledger_dir();
    let toml = text_campaign("", "Hi").replace(
        "default_country = \"KE\"",
        "default_country = \"KE\"\nexclude = [\"lists/unsubscribed.csv\"]",
    );
    let dir = CampaignDir::new(&toml, &kenyan_csv(5));
    std::fs::create_dir(dir.dir.path().join("lists")).expect("mkdir");
    std::fs::write(
        dir.dir.path().join("lists/unsubscribed.csv"),
        format!("email,phone\na@x,{}\nb@x,\n", phone_of_row(3)),
    )
    .expect("write");
    run_ok(with_ledger(&sandbox, &ledger).arg("run").arg(dir.toml()));
    assert!(!sandbox.per_phone().contains_key(&phone_of_row(3)));
    let rows = suppressed_rows(&dir.state());
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].error_code.as_deref(), Some("excluded"));
    let c = dir.counts();
    assert_eq!((c.sent, c.suppressed, c.total()), (4, 1, 5));
    // The account's list is untouched: exclusions are the campaign's own.
    assert!(
        FileLedger::open(&ledger)
            .expect("ledger")
            .opt_outs()
            .expect("list")
            .is_empty()
    );
}

#[test]
fn a_bad_row_in_an_exclude_file_stops_the_run_before_anything_is_sent() {
    let sandbox = TestSandbox::unlimited();
    let (_keep, ledger) = ledger_dir();
    let toml = text_campaign("", "Hi").replace(
        "default_country = \"KE\"",
        "default_country = \"KE\"\nexclude = [\"out.csv\"]",
    );
    let dir = CampaignDir::new(&toml, &kenyan_csv(3));
    std::fs::write(
        dir.dir.path().join("out.csv"),
        "phone\n+254712000001\nnot-a-phone\n",
    )
    .expect("write");
    let out = with_ledger(&sandbox, &ledger)
        .arg("run")
        .arg(dir.toml())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("out.csv row 2 (line 3): phone 'not-a-phone'"),
        "{err}"
    );
    assert!(sandbox.messages().is_empty());
}

#[test]
fn optout_add_import_remove_and_list() {
    let (dir, ledger) = ledger_dir();
    // A bad phone: one line naming it, and nothing added.
    let out = optout(&ledger, &["add", "+254712000001", "12ab"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("'12ab' is not a phone number"), "{err}");
    assert!(err.contains("nothing was added"), "{err}");

    // A national number without a country says which flag to pass.
    let out = optout(&ledger, &["add", "0712000001"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--default-country"),
        "{}",
        stderr(&out)
    );

    let out = optout(&ledger, &["add", "+254712000001"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Import: a bad row names the file, row and line; nothing is imported.
    let csv = dir.path().join("unsub.csv");
    std::fs::write(&csv, "name,phone\nA,0712000002\nB,0712x\n").expect("write");
    let out = bare_bin()
        .args(["optout", "import"])
        .arg(&csv)
        .args(["--default-country", "KE", "--ledger"])
        .arg(&ledger)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("unsub.csv row 2 (line 3): phone '0712x'"),
        "{err}"
    );
    assert!(err.contains("nothing was imported"), "{err}");

    std::fs::write(&csv, "name,phone\nA,0712000002\nB,+254712000001\n").expect("write");
    let out = bare_bin()
        .args(["optout", "import"])
        .arg(&csv)
        .args(["--default-country", "KE", "--ledger"])
        .arg(&ledger)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("1 added, 1 already on the list"),
        "{}",
        stdout(&out)
    );

    let out = optout(&ledger, &["list", "--json"]);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let phones: Vec<&str> = lines
        .iter()
        .map(|l| l["phone"].as_str().expect("phone"))
        .collect();
    assert_eq!(phones, vec!["+254712000001", "+254712000002"]);
    assert_eq!(lines[0]["source"], "cli");
    assert!(
        lines[1]["source"]
            .as_str()
            .expect("source")
            .ends_with("unsub.csv")
    );

    let out = optout(&ledger, &["remove", "+254712000001"]);
    assert!(
        stdout(&out).contains("is off the opt-out list"),
        "{}",
        stdout(&out)
    );
    let out = optout(&ledger, &["remove", "+254712000001"]);
    assert!(
        stdout(&out).contains("was not on the opt-out list"),
        "{}",
        stdout(&out)
    );
    let out = optout(&ledger, &["list"]);
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));
}

#[test]
fn the_ledger_records_what_two_campaigns_sent_and_is_owner_only() {
    let sandbox = TestSandbox::unlimited();
    let (_keep, ledger) = ledger_dir();
    let a = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(3));
    let b = CampaignDir::new(
        &text_campaign("", "Hello").replace("name = \"test\"", "name = \"second\""),
        &kenyan_csv(2),
    );
    run_ok(with_ledger(&sandbox, &ledger).arg("run").arg(a.toml()));
    run_ok(with_ledger(&sandbox, &ledger).arg("run").arg(b.toml()));

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ledger)
            .expect("ledger")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(ledger.parent().expect("dir"))
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }
    let l = FileLedger::open(&ledger).expect("ledger");
    let messages = l.messages().expect("messages");
    assert_eq!(messages.len(), 5);
    assert!(
        messages
            .iter()
            .all(|m| m.state == LedgerState::Sent && m.message_id.is_some())
    );
    let by = |name: &str| messages.iter().filter(|m| m.campaign == name).count();
    assert_eq!((by("test"), by("second")), (3, 2));
    let a_state = std::fs::canonicalize(a.state()).expect("state");
    assert!(
        messages
            .iter()
            .filter(|m| m.campaign == "test")
            .all(|m| Path::new(&m.state_file) == a_state)
    );
    // What the follow-ups read: phone 1 got two messages, from two campaigns.
    let day = chrono::Utc::now() - chrono::Duration::hours(24);
    assert_eq!(
        l.messages_to_since(&phone_of_row(1), day).expect("count"),
        2
    );
    assert_eq!(l.unique_recipients_since(day).expect("unique"), 3);
}

#[test]
fn a_campaign_with_ledger_false_writes_no_ledger_but_honours_its_opt_outs() {
    let sandbox = TestSandbox::unlimited();
    let (_keep, ledger) = ledger_dir();
    let toml = format!("{}\nledger = false\n", text_campaign("", "Hi"));
    // `ledger = false` is a root key: it must come before the first table.
    let toml = format!("ledger = false\n{}", toml.replace("\nledger = false\n", ""));
    let dir = CampaignDir::new(&toml, &kenyan_csv(3));
    run_ok(with_ledger(&sandbox, &ledger).arg("run").arg(dir.toml()));
    assert!(!ledger.exists(), "a ledger was written");
    assert_eq!(dir.counts().sent, 3);

    // With an account ledger that exists, its opt-outs still apply.
    let out = optout(&ledger, &["add", &phone_of_row(1)]);
    assert!(out.status.success());
    let again = CampaignDir::new(&toml, &kenyan_csv(3));
    run_ok(with_ledger(&sandbox, &ledger).arg("run").arg(again.toml()));
    assert_eq!(again.counts().suppressed, 1);
    assert!(
        FileLedger::open(&ledger)
            .expect("ledger")
            .messages()
            .expect("read")
            .is_empty()
    );
}

#[test]
fn a_rehearsal_uses_its_own_ledger_beside_the_sandbox_state() {
    let (_keep, ledger) = ledger_dir();
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(2));
    run_ok(
        bare_bin()
            .args(["run", "--sandbox"])
            .arg(dir.toml())
            .env("CONVERS8_LEDGER", &ledger),
    );
    assert!(!ledger.exists(), "a rehearsal wrote the account's ledger");
    let own = dir.dir.path().join("campaign.sandbox.ledger.db");
    let messages = FileLedger::open(&own)
        .expect("sandbox ledger")
        .messages()
        .expect("read");
    assert_eq!(messages.len(), 2);
}

#[test]
fn a_ledger_path_in_the_campaign_is_relative_to_it() {
    let sandbox = TestSandbox::unlimited();
    let toml = format!(
        "{}\n[ledger]\npath = \"shared/ledger.db\"\n",
        text_campaign("", "Hi")
    );
    let dir = CampaignDir::new(&toml, &kenyan_csv(2));
    run_ok(bin(&sandbox).arg("run").arg(dir.toml()));
    let own = dir.dir.path().join("shared/ledger.db");
    assert_eq!(
        FileLedger::open(&own)
            .expect("ledger")
            .messages()
            .expect("read")
            .len(),
        2
    );
}

#[test]
fn two_campaigns_running_at_once_share_one_ledger() {
    let sandbox = TestSandbox::unlimited();
    let (_keep, ledger) = ledger_dir();
    let a = CampaignDir::new(&text_campaign("concurrency = 4", "Hi"), &kenyan_csv(300));
    let b = CampaignDir::new(
        &text_campaign("concurrency = 4", "Hello").replace("name = \"test\"", "name = \"second\""),
        &kenyan_csv(300),
    );
    let start = |dir: &CampaignDir| {
        with_ledger(&sandbox, &ledger)
            .arg("run")
            .arg(dir.toml())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starts")
    };
    let (first, second) = (start(&a), start(&b));
    for child in [first, second] {
        let out = child.wait_with_output().expect("ends");
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let messages = FileLedger::open(&ledger)
        .expect("ledger")
        .messages()
        .expect("read");
    assert_eq!(messages.len(), 600);
    assert_eq!(sandbox.messages().len(), 600);
}
