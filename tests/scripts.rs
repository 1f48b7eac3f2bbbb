//! End-to-end: the tool under cron and in scripts, driven as the real binary
//! without a terminal (every stream piped). Log lines carry RFC 3339
//! timestamps and no escape codes, or are JSON objects; `run --json` and
//! `retry --json` print one summary object; `--fail-on` exits 3;
//! `preview --json` is JSON Lines; `-` is stdout for `report -o` and stdin for
//! `--api-key-file`; hints name the program as it was started; `status` and
//! `report` find a `--sandbox` rehearsal's state.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use chrono::{DateTime, Timelike, Utc};
use common::*;
use convers8_campaign::sandbox::SandboxConfig;

const BIN: &str = env!("CARGO_BIN_EXE_convers8-campaign");

/// Asserts `line` starts with an RFC 3339 timestamp and a space.
fn assert_timestamped(line: &str, all: &str) {
    let (first, _) = line
        .split_once(' ')
        .unwrap_or_else(|| panic!("no timestamp in {line:?}:\n{all}"));
    assert!(
        DateTime::parse_from_rfc3339(first).is_ok(),
        "{first:?} is not RFC 3339 in {line:?}:\n{all}"
    );
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// The one JSON object a `--json` run printed on stdout.
fn summary(out: &Output) -> serde_json::Value {
    let text = stdout(out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stdout:\n{text}");
    serde_json::from_str(lines[0]).expect("one JSON object")
}

#[test]
fn without_a_terminal_every_log_line_is_timestamped_and_plain() {
    let dir = CampaignDir::new(&text_campaign("", "Hi {{name}}"), &kenyan_csv(3));
    // --sandbox makes the CLI say things of its own during the run;
    // RUST_LOG=debug adds the library's tracing output.
    let out = run_ok(
        bare_bin()
            .args(["run", "--sandbox"])
            .arg(dir.toml())
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null()),
    );
    let err = stderr(&out);
    assert!(!err.contains('\u{1b}'), "an escape code on stderr:\n{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    for line in &lines {
        assert_timestamped(line, &err);
    }
    for needle in [
        "sending to a local sandbox at",
        "planning test",
        "sending 3 messages",
        "sending ended: 3/3 sent",
        " DEBUG ",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(needle)),
            "{needle:?}:\n{err}"
        );
    }
    // The summary stays on stdout, as it was.
    assert!(stdout(&out).contains("campaign test: completed"));

    // One message is one message.
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(1));
    let out = run_ok(bare_bin().args(["run", "--sandbox"]).arg(dir.toml()));
    assert!(
        stderr(&out).contains(" sending 1 message\n"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn log_format_json_is_one_object_per_line_and_handlebars_stays_quiet() {
    let dir = CampaignDir::new(&text_campaign("", "Hi {{name}}"), &kenyan_csv(3));
    let out = run_ok(
        bare_bin()
            .args(["run", "--sandbox", "--log-format", "json"])
            .arg(dir.toml())
            .env("RUST_LOG", "debug"),
    );
    let events = json_lines(&stderr(&out));
    for event in &events {
        let ts = event["timestamp"].as_str().expect("a timestamp");
        assert!(DateTime::parse_from_rfc3339(ts).is_ok(), "{event}");
        assert!(event["level"].is_string(), "{event}");
        assert!(event["fields"]["message"].is_string(), "{event}");
        let target = event["target"].as_str().expect("a target");
        assert!(!target.starts_with("handlebars"), "{event}");
    }
    let progress: Vec<_> = events
        .iter()
        .filter(|e| e["target"] == "convers8_campaign::progress")
        .collect();
    assert!(
        progress.iter().any(|e| e["fields"]["to_send"] == 3),
        "{events:#?}"
    );
    let last = progress.last().expect("progress events");
    assert_eq!(last["fields"]["sent"], 3, "{last}");
    assert!(
        events
            .iter()
            .any(|e| e["target"] == "convers8_campaign::cli"
                && e["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("sending to a local sandbox"))),
        "the CLI's own lines are events too"
    );
    assert!(
        events.iter().any(|e| e["level"] == "DEBUG"),
        "RUST_LOG output is JSON too"
    );

    // Named, handlebars speaks (it logs every value it renders).
    let dir = CampaignDir::new(&text_campaign("", "Hi {{name}}"), &kenyan_csv(2));
    let out = run_ok(
        bare_bin()
            .args(["run", "--dry-run", "--log-format", "json"])
            .arg(dir.toml())
            .env("RUST_LOG", "warn,handlebars=debug"),
    );
    let events = json_lines(&stderr(&out));
    assert!(
        events.iter().any(|e| e["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("handlebars"))),
        "{events:#?}"
    );

    // A failed command's last line is an ERROR event.
    let out = bare_bin()
        .args(["status", "nowhere.toml", "--log-format", "json"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let events = json_lines(&stderr(&out));
    assert_eq!(events.len(), 1, "{}", stderr(&out));
    assert_eq!(events[0]["level"], "ERROR");
    assert!(
        events[0]["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("error: no campaign file")),
        "{}",
        events[0]
    );
}

#[test]
fn run_json_prints_one_summary_and_nothing_else() {
    let sandbox = TestSandbox::unlimited();
    let csv = "phone,name\n+254711000001,Amani\n12345,Bad\n+254711000002,Baraka\n";
    let dir = CampaignDir::new(&text_campaign("", "Hi {{name}}"), csv);
    let out = run_ok(bin(&sandbox).args(["run", "--json"]).arg(dir.toml()));
    let s = summary(&out);
    assert_eq!(s["campaign"], "test");
    assert_eq!(s["end"], "completed");
    assert_eq!(s["message"], "completed");
    assert_eq!(s["exit_code"], 0);
    assert_eq!(s["counts"]["sent"], 2);
    assert_eq!(s["counts"]["invalid"], 1);
    assert_eq!(s["counts"]["total"], 3);
    assert_eq!(s["this_run"]["sent"], 2);
    assert_eq!(s["this_run"]["failed"], 0);
    assert_eq!(s["this_run"]["uncertain"], 0);
    assert_eq!(s["this_run"]["requests"], 2);
    assert_eq!(s["this_run"]["planned"], true);
    assert_eq!(s["state"], dir.state().display().to_string());
    assert_eq!(s["unfinished"], false);
    assert!(
        s["resume"]
            .as_str()
            .is_some_and(|r| r.ends_with(&format!(" run {}", dir.toml().display()))),
        "{s}"
    );
    assert!(s["window_opens_at"].is_null() && s["next_daily_slot"].is_null());
    // The text summary went to the log.
    assert!(
        stderr(&out).contains("campaign test: completed"),
        "{}",
        stderr(&out)
    );

    let out = run_ok(bin(&sandbox).args(["run", "--json"]).arg(dir.toml()));
    let s = summary(&out);
    assert_eq!(s["end"], "nothing_to_do");
    assert_eq!(s["this_run"]["sent"], 0);

    // Outside the send window: 75, and when it opens.
    let now = Utc::now();
    let (start, end) = ((now.hour() + 2) % 24, (now.hour() + 3) % 24);
    let window =
        format!(r#"window = {{ start = "{start:02}:00", end = "{end:02}:00", timezone = "UTC" }}"#);
    let closed = CampaignDir::new(&text_campaign(&window, "Hi"), &kenyan_csv(2));
    let out = bin(&sandbox)
        // Another campaign called "test": a ledger of its own, or the first
        // one's messages would make it a second state of that campaign.
        .env("CONVERS8_LEDGER", closed.dir.path().join("ledger.db"))
        .args(["run", "--json"])
        .arg(closed.toml())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["end"], "outside_window");
    assert_eq!(s["exit_code"], 75);
    assert_eq!(s["unfinished"], true);
    let opens: DateTime<Utc> = s["window_opens_at"]
        .as_str()
        .expect("when the window opens")
        .parse()
        .expect("RFC 3339");
    assert!(opens > now && opens.hour() == start, "{s}");

    // A run that cannot start still prints one object.
    let out = bare_bin()
        .args(["run", "--json", "nowhere.toml"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let s = summary(&out);
    assert_eq!(s["end"], "error");
    assert_eq!(s["exit_code"], 1);
    assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
}

/// Every row fails: a sandbox answering 500, one attempt each.
fn failing_run(dir: &CampaignDir, extra: &[&str]) -> Output {
    let broken = TestSandbox::start(SandboxConfig {
        rate: 0.0,
        fail_rate: 1.0,
        ..SandboxConfig::default()
    });
    bin(&broken)
        .arg("run")
        .arg(dir.toml())
        .args(extra)
        .output()
        .expect("runs")
}

#[test]
fn fail_on_exits_3_only_when_this_run_left_such_rows() {
    let campaign = text_campaign("max_attempts = 1", "Hi {{name}}");
    // Default: failed rows are no reason to fail the process.
    let dir = CampaignDir::new(&campaign, &kenyan_csv(2));
    let out = failing_run(&dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Only uncertain watched: still 0.
    let dir = CampaignDir::new(&campaign, &kenyan_csv(2));
    let out = failing_run(&dir, &["--fail-on", "uncertain"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Watched: 3, also in the JSON.
    let dir = CampaignDir::new(&campaign, &kenyan_csv(2));
    let out = failing_run(&dir, &["--fail-on", "failed,uncertain", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["exit_code"], 3);
    assert_eq!(s["end"], "completed");
    assert_eq!(s["this_run"]["failed"], 2);
    // A later run that produced none: 0 again.
    let out = failing_run(&dir, &["--fail-on", "failed"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // One attempt is "1 attempt".
    let out = run_ok(
        bare_bin()
            .args(["report", "--format", "json"])
            .arg(dir.toml()),
    );
    let rows = json_lines(&stdout(&out));
    assert!(
        rows.iter().all(|r| r["error_details"]
            .as_str()
            .is_some_and(|d| d.starts_with("gave up after 1 attempt: "))),
        "{rows:#?}"
    );
    // An error still wins over 3: a usage error stays 2, a bad state 1.
    let out = bare_bin()
        .args(["run", "--fail-on", "sent"])
        .arg(dir.toml())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn retry_json_summarises_the_retry() {
    let campaign = text_campaign("max_attempts = 1", "Hi {{name}}");
    let dir = CampaignDir::new(&campaign, &kenyan_csv(2));
    failing_run(&dir, &[]);
    let healthy = TestSandbox::unlimited();
    let out = run_ok(
        bin(&healthy)
            .args([
                "retry",
                "--failed",
                "--yes",
                "--json",
                "--fail-on",
                "failed",
            ])
            .arg(dir.toml())
            .stdin(Stdio::null()),
    );
    let s = summary(&out);
    assert_eq!(s["end"], "completed");
    assert_eq!(s["this_run"]["sent"], 2);
    assert_eq!(s["this_run"]["resend_selected"], 2);
    assert_eq!(s["counts"]["sent"], 2);
    assert_eq!(s["counts"]["failed"], 0);
    // Nothing left to retry: still one object.
    let out = run_ok(
        bin(&healthy)
            .args(["retry", "--failed", "--yes", "--json"])
            .arg(dir.toml()),
    );
    let s = summary(&out);
    assert_eq!(s["end"], "nothing_to_do");
    assert_eq!(s["counts"]["sent"], 2);
}

#[test]
fn preview_json_is_json_lines_and_nothing_else() {
    let csv = "phone,name\n+254711000001,Amani\n12345,Bad\n+254711000002,Baraka\n";
    let dir = CampaignDir::new(&text_campaign("", "Hi {{name}}"), csv);
    let out = run_ok(
        bare_bin()
            .args(["preview", "--json", "-n", "10"])
            .arg(dir.toml()),
    );
    let lines = json_lines(&stdout(&out));
    assert_eq!(lines.len(), 2, "{}", stdout(&out));
    assert_eq!(lines[0]["row"], 1);
    assert_eq!(lines[0]["phone"], "+254711000001");
    assert_eq!(lines[0]["state"], "pending");
    assert_eq!(lines[0]["endpoint"], "/whatsapp/message/text");
    assert_eq!(lines[0]["body"]["content"]["text"], "Hi Amani");
    assert_eq!(lines[1]["row"], 3);
    assert_eq!(lines[1]["body"]["to"], "+254711000002");
    assert!(stderr(&out).contains("fresh plan"), "{}", stderr(&out));

    // A row that will not be sent says why, with no body.
    let out = run_ok(
        bare_bin()
            .args(["preview", "--json", "--row", "2"])
            .arg(dir.toml()),
    );
    let lines = json_lines(&stdout(&out));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["state"], "invalid");
    assert_eq!(lines[0]["error_code"], "invalid_phone");
    assert!(lines[0]["body"].is_null());

    // Nothing left: stdout stays empty, the note goes to stderr.
    run_ok(
        bare_bin()
            .args(["run", "--sandbox", "--state"])
            .arg(dir.state())
            .arg(dir.toml()),
    );
    let out = run_ok(bare_bin().args(["preview", "--json"]).arg(dir.toml()));
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).contains("nothing left to send: 3 rows"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn dash_is_stdout_for_reports_and_stdin_for_the_key() {
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(3));

    // --api-key-file -: the first line of stdin.
    let mut child = bare_bin()
        .env("CONVERS8_BASE_URL", sandbox.base_url())
        .args(["run", "--api-key-file", "-"])
        .arg(dir.toml())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{KEY}\nsecond line ignored\n").as_bytes())
        .expect("write the key");
    let out = child.wait_with_output().expect("runs");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(dir.counts().sent, 3);
    assert!(!stderr(&out).contains(KEY) && !stdout(&out).contains(KEY));

    // Empty stdin: one clear line.
    let out = bare_bin()
        .env("CONVERS8_BASE_URL", sandbox.base_url())
        .args(["run", "--api-key-file", "-"])
        .arg(dir.toml())
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: --api-key-file -: stdin is empty"),
        "{err}"
    );

    // report -o -: stdout, and no file called "-".
    let out = run_ok(bare_bin().args(["report", "-o", "-"]).arg(dir.toml()));
    let text = stdout(&out);
    assert!(text.starts_with("row,phone,name,state"), "{text}");
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(!Path::new("-").exists());
    assert!(!dir.dir.path().join("-").exists());
}

/// Runs `run --limit 1` so the summary ends with "to continue:", and
/// returns that line.
fn continue_line(cmd: &mut Command) -> String {
    let out = run_ok(cmd);
    let text = stdout(&out);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("to continue: "))
        .unwrap_or_else(|| panic!("no hint:\n{text}"))
        .to_owned()
}

#[test]
fn hints_name_the_program_as_it_was_started() {
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(5));
    let toml = dir.toml().display().to_string();

    // By its path (not on PATH): the path.
    let hint = continue_line(
        bare_bin()
            .args(["run", "--sandbox", "--limit", "1"])
            .arg(dir.toml()),
    );
    assert_eq!(hint, format!("{BIN} run {toml} --sandbox"));

    // Found on PATH: its name.
    let bin_dir = Path::new(BIN).parent().expect("a folder");
    let mut on_path = Command::new("convers8-campaign");
    on_path
        .env("PATH", bin_dir)
        .env_remove("CONVERS8_API_KEY")
        .env_remove("CONVERS8_BASE_URL")
        .args(["run", "--sandbox", "--limit", "1"])
        .arg(dir.toml());
    let hint = continue_line(&mut on_path);
    assert_eq!(hint, format!("convers8-campaign run {toml} --sandbox"));

    // Started by `cargo run` (which sets $CARGO and replaces itself with
    // the program, so the parent is the shell): a `cargo run` line for the
    // profile it was built with, from the package folder.
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let profile = Path::new(BIN)
        .parent()
        .and_then(Path::file_name)
        .and_then(|p| p.to_str())
        .expect("a profile folder");
    let expected = match profile {
        "debug" => "cargo run --".to_owned(),
        "release" => "cargo run --release --".to_owned(),
        other => format!("cargo run --profile {other} --"),
    };
    let mut via_cargo = Command::new("sh");
    via_cargo
        .args(["-c", r#""$0" "$@"; exit $?"#, BIN])
        .args(["run", "--sandbox", "--limit", "1"])
        .arg(dir.toml())
        .current_dir(&manifest_dir)
        .env("CARGO", "/usr/local/bin/cargo")
        .env("CARGO_MANIFEST_DIR", &manifest_dir)
        .env_remove("CONVERS8_API_KEY");
    let hint = continue_line(&mut via_cargo);
    assert_eq!(hint, format!("{expected} run {toml} --sandbox"));

    // The same environment passed on by a test harness (this process, a
    // program of the same cargo build) is not `cargo run`.
    let hint = continue_line(
        bare_bin()
            .args(["run", "--sandbox", "--limit", "1"])
            .arg(dir.toml())
            .env("CARGO", "/usr/local/bin/cargo"),
    );
    assert_eq!(hint, format!("{BIN} run {toml} --sandbox"));

    // Other hints too: a state that does not exist says how to make it.
    // Started by a path that PATH also finds: the bare name.
    let other = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(1));
    let out = bare_bin()
        .env("PATH", bin_dir)
        .args(["status"])
        .arg(other.toml())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "`convers8-campaign run {}`",
            other.toml().display()
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn status_and_report_find_the_sandbox_state() {
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(3));
    run_ok(bare_bin().args(["run", "--sandbox"]).arg(dir.toml()));
    let sandbox_state = dir.dir.path().join("campaign.sandbox.state.db");
    assert!(sandbox_state.exists());
    assert!(!dir.state().exists(), "a rehearsal is kept apart");

    let out = run_ok(
        bare_bin()
            .args(["status", "--sandbox", "--json"])
            .arg(dir.toml()),
    );
    let status: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(status["counts"]["sent"], 3, "{status}");

    let out = run_ok(bare_bin().args(["report", "--sandbox"]).arg(dir.toml()));
    assert_eq!(stdout(&out).lines().count(), 4, "{}", stdout(&out));

    let out = run_ok(
        bare_bin()
            .args(["report", "--sandbox", "-o"])
            .arg(dir.dir.path().join("r.csv"))
            .arg(dir.toml()),
    );
    assert!(
        stderr(&out).contains("wrote 3 recipients"),
        "{}",
        stderr(&out)
    );

    // Without --sandbox the real state is looked for, and is not there;
    // the hint says how a rehearsal's state is made.
    let out = bare_bin()
        .args(["status", "--sandbox"])
        .arg(dir.dir.path().join("elsewhere.toml"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let out = bare_bin()
        .arg("status")
        .arg(dir.toml())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&dir.state().display().to_string()));
}

#[test]
fn counts_are_grammatical() {
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(1));
    let out = run_ok(bare_bin().arg("validate").arg(dir.toml()));
    let text = stdout(&out);
    assert!(
        text.contains("  1 row: 1 valid, 0 invalid, 0 duplicate"),
        "{text}"
    );
    assert!(text.contains("ok: 1 message would be sent"), "{text}");
    let out = run_ok(bare_bin().args(["run", "--sandbox"]).arg(dir.toml()));
    assert!(
        stdout(&out).contains("1 request, 0 rate-limited"),
        "{}",
        stdout(&out)
    );
}
