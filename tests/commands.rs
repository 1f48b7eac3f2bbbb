//! End-to-end: the operator commands (`validate`, `preview`, `status`,
//! `report`, `retry`, `completions`) run as the real binary, against a
//! sandbox on loopback where they send, with their happy paths and the error
//! paths an operator hits first. Every error is one `error:` line naming the
//! thing at fault, a non-zero exit, and no change on disk.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::*;
use convers8_campaign::sandbox::SandboxConfig;

/// Every file under `dir` with its size: "nothing changed on disk" is this
/// listing being equal before and after.
fn listing(dir: &Path) -> BTreeMap<String, u64> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("list dir") {
            let entry = entry.expect("dir entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(entry.path());
            }
            let name = entry
                .path()
                .strip_prefix(dir)
                .expect("under dir")
                .display()
                .to_string();
            files.insert(name, if meta.is_dir() { 0 } else { meta.len() });
        }
    }
    files
}

/// Asserts a failed command printed exactly one line, `error: …`, containing `needle`.
fn assert_one_line_error(out: &Output, needle: &str) {
    assert!(
        !out.status.success(),
        "expected a failure, got exit 0\nstdout:\n{}",
        stdout(out)
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    let text = stderr(out);
    let lines: Vec<_> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line of stderr expected:\n{text}");
    assert!(lines[0].starts_with("error: "), "{text}");
    assert!(lines[0].contains(needle), "{needle:?} not in: {text}");
}

/// Runs `args` on the campaign folder and checks it fails with one line
/// naming `needle`, leaving the folder exactly as it was.
fn fails_cleanly(dir: &CampaignDir, args: &[&str], needle: &str) {
    let before = listing(dir.dir.path());
    let out = bare_bin()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("binary runs");
    assert_one_line_error(&out, needle);
    assert_eq!(
        before,
        listing(dir.dir.path()),
        "{args:?} changed files on disk"
    );
}

fn arg(p: &Path) -> String {
    p.display().to_string()
}

/// Five rows: two valid, an unparsable phone, a missing phone, a duplicate.
const MIXED_CSV: &str =
    "phone,name\n+254711000001,Amani\n12345,Bad\n0711000001,Again\n,Nobody\n+254711000002,Baraka\n";

#[test]
fn validate_counts_rows_lists_problems_and_writes_nothing() {
    let dir = CampaignDir::new(&text_campaign("", "Hi {{name}}"), MIXED_CSV);
    let before = listing(dir.dir.path());
    let out = run_ok(bare_bin().arg("validate").arg(dir.toml()));
    let text = stdout(&out);
    assert!(
        text.contains("5 rows: 2 valid, 2 invalid, 1 duplicate"),
        "{text}"
    );
    assert!(text.contains("row 2 (line 3): invalid_phone:"), "{text}");
    assert!(
        text.contains("row 3 (line 4): duplicate: same phone as row 1"),
        "{text}"
    );
    assert_eq!(before, listing(dir.dir.path()), "validate wrote a file");
}

#[test]
fn validate_strict_fails_on_bad_rows_and_json_says_so() {
    let dir = CampaignDir::new(&text_campaign("", "Hi {{name}}"), MIXED_CSV);
    let out = bare_bin()
        .args(["validate", "--strict", "--json"])
        .arg(dir.toml())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--strict"), "{}", stderr(&out));
    let verdict: serde_json::Value =
        serde_json::from_str(stdout(&out).trim()).expect("one JSON object");
    assert_eq!(verdict["valid"], 2);
    assert_eq!(verdict["invalid"], 2);
    assert_eq!(verdict["duplicate"], 1);
    assert_eq!(verdict["ok"], false);
    assert_eq!(verdict["problems"][0]["row"], 2);

    // Without --strict the same campaign can be sent.
    let out = run_ok(bare_bin().args(["validate", "--json"]).arg(dir.toml()));
    let verdict: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("json");
    assert_eq!(verdict["ok"], true);
}

#[test]
fn validate_fails_when_no_row_can_be_sent() {
    let dir = CampaignDir::new(&text_campaign("", "Hi"), "phone,name\n123,A\n,B\n");
    let out = bare_bin()
        .arg("validate")
        .arg(dir.toml())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no row"), "{}", stderr(&out));
    assert!(stdout(&out).contains("0 valid"), "{}", stdout(&out));
}

#[test]
fn a_missing_campaign_file_is_one_line_for_every_command() {
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(2));
    let missing = arg(&dir.dir.path().join("nope.toml"));
    for args in [
        vec!["validate", &missing],
        vec!["preview", &missing],
        vec!["status", &missing],
        vec!["report", &missing],
        vec!["retry", &missing, "--failed", "--yes"],
    ] {
        fails_cleanly(&dir, &args, "nope.toml");
    }
}

#[test]
fn a_template_column_missing_from_the_csv_is_one_line() {
    let dir = CampaignDir::new(
        &text_campaign("", "Hi {{name}} in {{city}}"),
        &kenyan_csv(2),
    );
    let toml = arg(&dir.toml());
    for command in ["validate", "preview"] {
        fails_cleanly(&dir, &[command, &toml], "city");
    }
    // `run --dry-run` refuses the same way before creating a state file.
    let out = bare_bin()
        .args(["run", "--dry-run", &toml])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("city"), "{}", stderr(&out));
}

#[test]
fn a_bad_timezone_is_one_line() {
    let dir = CampaignDir::new(
        &text_campaign(
            r#"window = { start = "08:00", end = "20:00", timezone = "Mars/Olympus_Mons" }"#,
            "Hi",
        ),
        &kenyan_csv(2),
    );
    let toml = arg(&dir.toml());
    for command in ["validate", "preview"] {
        fails_cleanly(&dir, &[command, &toml], "Mars/Olympus_Mons");
    }
}

#[test]
fn status_and_report_on_a_state_that_does_not_exist_create_nothing() {
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(2));
    let toml = arg(&dir.toml());
    let state = arg(&dir.state());
    fails_cleanly(&dir, &["status", &toml], &state);
    fails_cleanly(&dir, &["status", &toml, "--json"], &state);
    fails_cleanly(&dir, &["report", &toml], &state);
    let other = arg(&dir.dir.path().join("other.state.db"));
    fails_cleanly(&dir, &["status", &toml, "--state", &other], &other);
    fails_cleanly(&dir, &["retry", &toml, "--uncertain", "--yes"], &state);
}

#[test]
fn preview_shows_the_exact_bodies_and_why_a_row_is_skipped() {
    let dir = CampaignDir::new(&text_campaign("", "Hi {{name}}"), MIXED_CSV);
    let before = listing(dir.dir.path());
    let out = run_ok(bare_bin().arg("preview").arg(dir.toml()));
    let text = stdout(&out);
    assert!(
        text.contains("row 1 → +254711000001 (POST /whatsapp/message/text)"),
        "{text}"
    );
    assert!(
        text.contains("row 5 → +254711000002 (POST /whatsapp/message/text)"),
        "{text}"
    );
    assert!(text.contains(r#""text": "Hi Amani""#), "{text}");
    assert!(stderr(&out).contains("fresh plan"), "{}", stderr(&out));
    assert_eq!(before, listing(dir.dir.path()), "preview wrote a file");

    let out = run_ok(bare_bin().args(["preview", "-n", "1"]).arg(dir.toml()));
    assert_eq!(stdout(&out).matches("POST /whatsapp").count(), 1);

    let out = run_ok(bare_bin().args(["preview", "--row", "3"]).arg(dir.toml()));
    assert!(
        stdout(&out).contains("row 3 will not be sent: duplicate"),
        "{}",
        stdout(&out)
    );
    let out = run_ok(bare_bin().args(["preview", "--row", "2"]).arg(dir.toml()));
    assert!(
        stdout(&out).contains("row 2 will not be sent: invalid_phone"),
        "{}",
        stdout(&out)
    );
    fails_cleanly(
        &dir,
        &["preview", "--row", "99", &arg(&dir.toml())],
        "row 99",
    );
}

#[test]
fn preview_reads_the_state_file_once_there_is_one() {
    let dir = CampaignDir::new(&text_campaign("", "Hi {{name}}"), &kenyan_csv(4));
    run_ok(bare_bin().args(["run", "--dry-run"]).arg(dir.toml()));
    let out = run_ok(bare_bin().args(["preview", "--row", "4"]).arg(dir.toml()));
    assert!(stderr(&out).contains("state file"), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("row 4 → +254710000003"), "{text}");
    // The body printed is the one stored in the state, byte for byte once compacted.
    let json_start = text.find('{').expect("a body");
    let body: serde_json::Value = serde_json::from_str(&text[json_start..]).expect("json");
    assert_eq!(body["content"]["text"], "Hi Person 3");
    assert_eq!(body["to"], "+254710000003");
}

#[test]
fn status_on_a_finished_campaign_adds_up() {
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(&text_campaign("", "Hi {{name}}"), MIXED_CSV);
    run_ok(bin(&sandbox).arg("run").arg(dir.toml()));
    let out = run_ok(bare_bin().arg("status").arg(dir.toml()));
    let text = stdout(&out);
    assert!(text.contains("rows       5 = 5 CSV rows"), "{text}");
    assert!(text.contains("sent       2"), "{text}");
    assert!(text.contains("running    no"), "{text}");
    assert!(text.contains(": completed (sent 2"), "{text}");
    assert!(text.contains("invalid_phone 2"), "{text}");

    let out = run_ok(bare_bin().args(["status", "--json"]).arg(dir.toml()));
    let status: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    let counts = status["counts"].as_object().expect("counts");
    let sum: u64 = counts.values().map(|v| v.as_u64().expect("count")).sum();
    assert_eq!(sum, 5);
    assert_eq!(status["total"], 5);
    assert_eq!(status["csv_rows"], 5);
    assert!(status["running"].is_null());
    assert_eq!(status["last_run"]["outcome"], "completed");
}

#[test]
fn status_sees_a_run_in_progress_without_disturbing_it() {
    let sandbox = TestSandbox::slow(100);
    let dir = CampaignDir::new(&text_campaign("concurrency = 1", "Hi"), &kenyan_csv(60));
    let mut running = spawn_run(&sandbox, &dir);
    sandbox.wait_for_messages(3);
    let out = bare_bin()
        .arg("status")
        .arg(dir.toml())
        .output()
        .expect("status runs");
    let text = stdout(&out);
    let finished = running.try_wait().expect("poll").is_some();
    let _ = running.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!finished, "the run ended before status looked");
    assert!(
        text.contains(&format!("running    yes: run #1 (pid {})", running.id())),
        "{text}"
    );
    // Over the time the run has lasted, or the last minute: see report's unit tests.
    assert!(text.contains("msg/s over the last "), "{text}");
    // status took no lock: the run finished every row.
    assert_eq!(dir.counts().sent, 60);
}

#[test]
fn report_neutralises_formulas_and_keeps_e164_phones() {
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(
        &text_campaign("", "Hi {{name}}"),
        "phone,name\n+254711000001,=cmd()\n+254711000002,@SUM(A1)\n=1+2,-bad\n",
    );
    run_ok(bin(&sandbox).arg("run").arg(dir.toml()));
    let out = run_ok(bare_bin().arg("report").arg(dir.toml()));
    let text = stdout(&out);
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().expect("headers").clone();
    assert_eq!(
        headers.iter().collect::<Vec<_>>(),
        [
            "row",
            "phone",
            "name",
            "state",
            "attempts",
            "message_id",
            "error_code",
            "error_details",
            "updated_at",
            "sent_at"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(&rows[0][1], "+254711000001");
    assert_eq!(&rows[0][2], "'=cmd()");
    assert_eq!(&rows[0][3], "sent");
    assert!(!rows[0][5].is_empty(), "message id kept");
    assert_eq!(&rows[1][2], "'@SUM(A1)");
    assert_eq!(&rows[2][1], "'=1+2");
    assert_eq!(&rows[2][2], "'-bad");
    assert_eq!(&rows[2][3], "invalid");
}

#[test]
fn report_to_a_file_is_owner_only_and_filters_states() {
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(&text_campaign("", "Hi {{name}}"), MIXED_CSV);
    run_ok(bin(&sandbox).arg("run").arg(dir.toml()));
    let file = dir.dir.path().join("out.jsonl");
    let out = run_ok(
        bare_bin()
            .args([
                "report",
                "--format",
                "json",
                "--state-filter",
                "invalid,duplicate",
                "-o",
            ])
            .arg(&file)
            .arg(dir.toml()),
    );
    assert!(
        stderr(&out).contains("wrote 3 recipients"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
    let text = std::fs::read_to_string(&file).expect("report file");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(
        lines
            .iter()
            .all(|l| l["state"] == "invalid" || l["state"] == "duplicate")
    );
    assert_eq!(lines[0]["row"], 2);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "a report holds personal data");
    }
}

#[test]
fn report_errors_are_one_line_and_write_nothing() {
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(2));
    run_ok(bin(&sandbox).arg("run").arg(dir.toml()));
    let toml = arg(&dir.toml());
    let unwritable = arg(&dir.dir.path().join("no-such-dir").join("out.csv"));
    fails_cleanly(&dir, &["report", &toml, "-o", &unwritable], &unwritable);
    // A directory in place of the file is refused, and no temporary file stays.
    let folder = arg(dir.dir.path());
    fails_cleanly(&dir, &["report", &toml, "-o", &folder], &folder);
    let out = bare_bin()
        .args(["report", &toml, "--state-filter", "failed,lost"])
        .output()
        .expect("runs");
    assert_one_line_error(&out, "'lost'");
    assert!(stderr(&out).contains("pending, sending, sent, failed, uncertain, invalid, duplicate"));
}

/// A campaign whose every row failed: a sandbox that answers 500 to
/// everything, one attempt per row (too few rows to trip the breaker).
fn campaign_with_failed_rows(rows: usize) -> CampaignDir {
    let broken = TestSandbox::start(SandboxConfig {
        rate: 0.0,
        fail_rate: 1.0,
        ..SandboxConfig::default()
    });
    let dir = CampaignDir::new(
        &text_campaign("max_attempts = 1", "Hi {{name}}"),
        &kenyan_csv(rows),
    );
    run_ok(bin(&broken).arg("run").arg(dir.toml()));
    assert_eq!(dir.counts().failed, rows as u64);
    dir
}

#[test]
fn retry_failed_sends_them_against_a_healthy_server() {
    let dir = campaign_with_failed_rows(3);
    let healthy = TestSandbox::unlimited();
    // Other codes: nothing to do, nothing changed.
    let out = run_ok(
        bin(&healthy)
            .args(["retry", "--failed", "--codes", "validation_error", "--yes"])
            .arg(dir.toml()),
    );
    assert!(
        stdout(&out).contains("no failed (validation_error) rows"),
        "{}",
        stdout(&out)
    );
    assert_eq!(dir.counts().failed, 3);

    let out = run_ok(
        bin(&healthy)
            .args([
                "retry",
                "--failed",
                "--codes",
                "internal_error,validation_error",
                "--yes",
            ])
            .arg(dir.toml()),
    );
    assert!(stderr(&out).contains("3 failed"), "{}", stderr(&out));
    let counts = dir.counts();
    assert_eq!((counts.sent, counts.failed, counts.pending), (3, 0, 0));
    assert_eq!(healthy.messages().len(), 3);
    assert!(healthy.per_phone().values().all(|&n| n == 1));
}

#[test]
fn retry_without_a_terminal_needs_yes_and_changes_nothing() {
    let dir = campaign_with_failed_rows(2);
    let healthy = TestSandbox::unlimited();
    let before = listing(dir.dir.path());
    let out = bin(&healthy)
        .args(["retry", "--failed"])
        .arg(dir.toml())
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let last = stderr(&out).lines().last().unwrap_or("").to_owned();
    assert!(
        last.starts_with("error: ") && last.contains("--yes"),
        "{}",
        stderr(&out)
    );
    assert_eq!(dir.counts().failed, 2);
    assert!(healthy.messages().is_empty());
    assert_eq!(before, listing(dir.dir.path()));
}

#[test]
fn retry_without_a_key_changes_nothing() {
    let dir = campaign_with_failed_rows(2);
    let out = bare_bin()
        .args(["retry", "--failed", "--yes"])
        .arg(dir.toml())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("CONVERS8_API_KEY"),
        "{}",
        stderr(&out)
    );
    assert_eq!(dir.counts().failed, 2);
}

#[test]
fn retry_uncertain_warns_and_resends() {
    let slow = TestSandbox::start(SandboxConfig {
        rate: 0.0,
        slow_rate: 1.0,
        slow: Duration::from_secs(3),
        ..SandboxConfig::default()
    });
    let dir = CampaignDir::new(&text_campaign("timeout_secs = 1", "Hi"), &kenyan_csv(2));
    run_ok(bin(&slow).arg("run").arg(dir.toml()));
    assert_eq!(dir.counts().uncertain, 2);

    let healthy = TestSandbox::unlimited();
    let out = run_ok(
        bin(&healthy)
            .args(["retry", "--uncertain", "--yes"])
            .arg(dir.toml()),
    );
    assert!(stderr(&out).contains("twice"), "{}", stderr(&out));
    let counts = dir.counts();
    assert_eq!((counts.sent, counts.uncertain), (2, 0));
    assert_eq!(healthy.messages().len(), 2);
}

#[test]
fn completions_are_generated_for_bash() {
    let out = run_ok(bare_bin().args(["completions", "bash"]));
    let text = stdout(&out);
    assert!(text.contains("convers8-campaign"), "{text}");
    assert!(text.contains("retry"), "subcommands are completed");
    let out = bare_bin()
        .args(["completions", "tcsh"])
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

/// `--help` of `command` on a terminal `columns` wide (clap reads
/// `COLUMNS` when stdout is not a terminal).
fn help_at(command: &[&str], columns: u32) -> String {
    let out = run_ok(
        bare_bin()
            .args(command)
            .arg("--help")
            .env("COLUMNS", columns.to_string()),
    );
    stdout(&out)
}

/// The help's text from its "Examples:" line to the end.
fn examples_section(help: &str) -> &str {
    let at = help.find("\nExamples:\n").map_or(0, |i| i + 1);
    &help[at..]
}

#[test]
fn every_command_help_shows_an_example() {
    for command in [
        &[][..],
        &["validate"],
        &["preview"],
        &["run"],
        &["send-test"],
        &["status"],
        &["report"],
        &["retry"],
        &["contacts"],
        &["contacts", "list"],
        &["contacts", "get"],
        &["contacts", "create"],
        &["contacts", "import"],
        &["sandbox"],
        &["completions"],
    ] {
        let name = command.join(" ");
        let text = help_at(command, 80);
        assert!(text.contains("\nExamples:\n"), "{name}: {text}");
        let invocation = format!("convers8-campaign {name}").trim_end().to_owned();
        let examples = examples_section(&text);
        assert!(
            examples
                .lines()
                .any(|l| l.trim_start().starts_with(&invocation)),
            "{name}: no example of {invocation:?}: {text}"
        );
        assert!(text.contains("Exit codes:"), "{name}: {text}");
        // No example line is broken: the section is the same on a terminal
        // 40, 80 or 200 columns wide (clap wraps nothing in it), and every
        // line fits 80 columns, so a terminal of 80 does not wrap it either.
        for columns in [40, 200] {
            assert_eq!(
                examples_section(&help_at(command, columns)),
                examples,
                "{name}: the examples change at {columns} columns"
            );
        }
        for line in examples.lines() {
            assert!(
                line.chars().count() <= 80,
                "{name}: wider than 80 columns: {line:?}"
            );
        }
        // A command line is whole: it ends, or continues with a backslash.
        let mut continued = false;
        for line in examples.lines() {
            let starts_command = line.trim_start().starts_with("convers8-campaign ");
            if continued {
                assert!(
                    line.starts_with("      "),
                    "{name}: a continuation is indented: {line:?}"
                );
            }
            if starts_command || continued {
                continued = line.ends_with('\\');
            }
        }
        assert!(!continued, "{name}: the last example ends in a backslash");
    }
    // The jq example reads a field validate --json really has.
    let help = help_at(&["validate"], 80);
    assert!(help.contains("| jq -e .ok"), "{help}");
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(1));
    let out = run_ok(bare_bin().args(["validate", "--json"]).arg(dir.toml()));
    let verdict: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("json");
    assert_eq!(verdict["ok"], true);
}

#[test]
fn retry_needs_exactly_one_selection_and_codes_only_with_failed() {
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(1));
    let toml = arg(&dir.toml());
    for args in [
        vec!["retry", &toml],
        vec!["retry", &toml, "--failed", "--uncertain"],
        vec!["retry", &toml, "--uncertain", "--codes", "internal_error"],
    ] {
        let out = bare_bin().args(&args).output().expect("runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}
