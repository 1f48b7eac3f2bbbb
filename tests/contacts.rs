//! `contacts list|get|create|import`: the real binary against a sandbox on
//! 127.0.0.1 (and, for rate limits, a tiny server that answers 429 first,
//! since the sandbox does not rate-limit contacts). Each test checks the exit
//! code and a piece of the output.

mod common;

use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{KEY, TestSandbox, bare_bin, bin, run_ok, stderr, stdout};
use serde_json::{Value, json};

fn contacts(sandbox: &TestSandbox, args: &[&str]) -> Output {
    bin(sandbox)
        .arg("contacts")
        .args(args)
        .output()
        .expect("binary runs")
}

/// Every contact the sandbox holds, read through the binary's own `--json`.
fn all_contacts(sandbox: &TestSandbox) -> Vec<Value> {
    let out = run_ok(bin(sandbox).args(["contacts", "list", "--all", "--json"]));
    let list: Value = serde_json::from_slice(&out.stdout).expect("list --json is JSON");
    list["contacts"].as_array().expect("contacts array").clone()
}

fn assert_one_line_error(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(out));
    let err = stderr(out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

/// 25 distinct Kenyan numbers, written half international and half national,
/// with an invalid phone at row 13 and row 1's number again (national) at row 27.
fn import_csv() -> String {
    let mut csv = String::from("phone,name,city\n");
    for i in 0..25u32 {
        let row = csv.lines().count();
        if row == 13 {
            csv.push_str("12345,Bad Number,Nowhere\n");
        }
        let local = 10_000_000 + i;
        if i % 2 == 0 {
            csv.push_str(&format!("+2547{local:08},Person {i},Nairobi\n"));
        } else {
            csv.push_str(&format!("07{local:08},Mtu {i} 张伟,Mombasa\n"));
        }
    }
    csv.push_str("0710000000,Person 0 again,Nairobi\n");
    csv
}

#[test]
fn list_shows_the_guides_contacts_as_a_table_and_as_json() {
    let sandbox = TestSandbox::unlimited();
    let out = run_ok(bin(&sandbox).args(["contacts", "list"]));
    let table = stdout(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID"), "{table}");
    assert!(
        table.contains("John Doe") && table.contains("Jane Smith"),
        "{table}"
    );
    assert!(table.contains("contact_20250411ABC"), "{table}");
    assert_eq!(lines.last(), Some(&"page 1 of 1 (2 contacts)"), "{table}");
    // Aligned: the NAME column starts at the same place on every row.
    let name_at = lines[0].find("NAME").expect("NAME header");
    assert_eq!(lines[1].find("John Doe"), Some(name_at), "{table}");
    assert_eq!(lines[2].find("Jane Smith"), Some(name_at), "{table}");

    let out = run_ok(bin(&sandbox).args(["contacts", "list", "--json"]));
    let list: Value = serde_json::from_slice(&out.stdout).expect("--json is JSON");
    assert_eq!(list["contacts"][1]["name"], "Jane Smith");
    assert_eq!(list["pagination"]["total"], 2);
}

#[test]
fn import_reports_every_row_and_list_pages_through_the_result() {
    let sandbox = TestSandbox::unlimited();
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("people.csv");
    std::fs::write(&csv, import_csv()).expect("write csv");

    let out = run_ok(bin(&sandbox).args(["contacts", "import"]).arg(&csv).args([
        "--default-country",
        "KE",
        "--concurrency",
        "3",
    ]));
    let report = stdout(&out);
    assert!(
        report.contains("created 25, invalid 1, duplicate 1, failed 0 (27 rows)"),
        "{report}"
    );
    assert!(
        report.contains("row 13: invalid phone: '12345'"),
        "{report}"
    );
    assert!(report.contains("row 27: duplicate of row 1"), "{report}");
    assert_eq!(
        report.lines().count(),
        3,
        "two problem rows and the summary: {report}"
    );

    let all = all_contacts(&sandbox);
    assert_eq!(all.len(), 2 + 25, "the guide's two and the 25 imported");
    let imported: Vec<&str> = all[2..]
        .iter()
        .map(|c| c["phone_number"].as_str().unwrap_or_default())
        .collect();
    assert!(
        imported.iter().all(|p| p.starts_with("+2547")),
        "sent in E.164: {imported:?}"
    );
    assert!(
        imported.contains(&"+254710000001"),
        "national numbers normalised"
    );

    let out = run_ok(bin(&sandbox).args(["contacts", "list", "--per-page", "10", "--page", "2"]));
    let page = stdout(&out);
    assert_eq!(
        page.lines().count(),
        1 + 10 + 1,
        "header, 10 rows, footer: {page}"
    );
    assert!(page.ends_with("page 2 of 3 (27 contacts)\n"), "{page}");
    let out = run_ok(bin(&sandbox).args(["contacts", "list", "--per-page", "10", "--page", "3"]));
    let page = stdout(&out);
    assert_eq!(page.lines().count(), 1 + 7 + 1, "{page}");
    assert!(page.ends_with("page 3 of 3 (27 contacts)\n"), "{page}");
}

#[test]
fn import_json_prints_one_object_per_row() {
    let sandbox = TestSandbox::unlimited();
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("people.csv");
    std::fs::write(
        &csv,
        "Mobile;Full name\n+254711000001;Amina\n0711000001;Amina again\n+254711000002;\n",
    )
    .expect("write csv");
    let out = run_ok(
        bin(&sandbox)
            .args(["contacts", "import"])
            .arg(&csv)
            .args(["--phone-column", "mobile", "--name-column", "Full name"])
            .args(["--delimiter", ";", "--default-country", "KE", "--json"]),
    );
    let mut rows: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    rows.sort_by_key(|r| r["row"].as_u64());
    let outcomes: Vec<&str> = rows
        .iter()
        .map(|r| r["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(outcomes, ["created", "duplicate", "invalid"]);
    assert!(
        rows[0]["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("contact_"))
    );
    assert_eq!(rows[2]["code"], "no_name");
    assert!(
        stderr(&out).contains("created 1, invalid 1, duplicate 1, failed 0"),
        "the summary goes to stderr: {}",
        stderr(&out)
    );
}

#[test]
fn get_by_id_and_an_unknown_id() {
    let sandbox = TestSandbox::unlimited();
    let out = run_ok(bin(&sandbox).args(["contacts", "get", "contact_20250411ABC"]));
    assert!(stdout(&out).contains("John Doe"), "{}", stdout(&out));
    let out = run_ok(bin(&sandbox).args(["contacts", "get", "contact_20250411XYZ", "--json"]));
    let contact: Value = serde_json::from_slice(&out.stdout).expect("--json is JSON");
    assert_eq!(contact["name"], "Jane Smith");

    let out = contacts(&sandbox, &["get", "contact_nobody"]);
    let err = assert_one_line_error(&out);
    assert!(err.contains("contact 'contact_nobody' not found"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn create_normalises_a_national_number_with_the_default_country() {
    let sandbox = TestSandbox::unlimited();
    let out = run_ok(bin(&sandbox).args([
        "contacts",
        "create",
        "--name",
        "Wanjiru Kamau",
        "--phone",
        "0712 345 678",
        "--default-country",
        "ke",
        "--json",
    ]));
    let created: Value = serde_json::from_slice(&out.stdout).expect("--json is JSON");
    assert_eq!(created["phone_number"], "+254712345678");
    let all = all_contacts(&sandbox);
    assert_eq!(all.len(), 3);
    assert_eq!(all[2]["name"], "Wanjiru Kamau");

    // Without a country the national number is refused before any request.
    let out = contacts(
        &sandbox,
        &["create", "--name", "X", "--phone", "0712345678"],
    );
    let err = assert_one_line_error(&out);
    assert!(err.contains("--default-country"), "{err}");
    let out = contacts(
        &sandbox,
        &[
            "create",
            "--name",
            "X",
            "--phone",
            "12",
            "--default-country",
            "KE",
        ],
    );
    assert!(assert_one_line_error(&out).contains("--phone: '12'"));
    assert_eq!(all_contacts(&sandbox).len(), 3, "nothing was created");
}

#[test]
fn a_wrong_key_is_one_line_naming_the_variable_and_never_the_key() {
    const WRONG: &str = "sk_live_WRONG_5ecret";
    let sandbox = TestSandbox::unlimited();
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("people.csv");
    std::fs::write(&csv, import_csv()).expect("write csv");
    let csv = csv.display().to_string();
    for args in [
        vec!["list"],
        vec!["get", "contact_20250411ABC"],
        vec!["create", "--name", "A", "--phone", "+254712345678"],
        vec![
            "import",
            &csv,
            "--default-country",
            "KE",
            "--concurrency",
            "2",
        ],
    ] {
        let out = bare_bin()
            .env("CONVERS8_API_KEY", WRONG)
            .env("CONVERS8_BASE_URL", sandbox.base_url())
            .arg("contacts")
            .args(&args)
            .output()
            .expect("binary runs");
        let err = assert_one_line_error(&out);
        assert!(err.contains("CONVERS8_API_KEY"), "{args:?}: {err}");
        let all = format!("{err}{}", stdout(&out));
        assert!(
            !all.contains(WRONG) && !all.contains(KEY),
            "{args:?}: {all}"
        );
    }
    // The import stopped at the first rejection: at most the two in flight were sent.
    assert!(
        sandbox.stats().unauthorized <= 3 + 2,
        "{:?}",
        sandbox.stats()
    );
    assert_eq!(all_contacts(&sandbox).len(), 2, "nothing was created");
}

#[test]
fn no_key_is_the_one_line_no_api_key_error() {
    let sandbox = TestSandbox::unlimited();
    let out = bare_bin()
        .env("CONVERS8_BASE_URL", sandbox.base_url())
        .args(["contacts", "list"])
        .output()
        .expect("binary runs");
    let err = assert_one_line_error(&out);
    assert!(
        err.contains("no API key") && err.contains("CONVERS8_API_KEY"),
        "{err}"
    );
    assert_eq!(sandbox.stats().unauthorized, 0, "no request was made");
}

#[test]
fn a_missing_phone_column_names_the_flag() {
    let sandbox = TestSandbox::unlimited();
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("people.csv");
    std::fs::write(&csv, "tel,name\n+254711000001,A\n").expect("write csv");
    let out = bin(&sandbox)
        .args(["contacts", "import"])
        .arg(&csv)
        .output()
        .expect("binary runs");
    let err = assert_one_line_error(&out);
    assert!(
        err.contains("no column 'phone'") && err.contains("--phone-column"),
        "{err}"
    );
    assert_eq!(all_contacts(&sandbox).len(), 2);
}

#[test]
fn every_contacts_command_shows_an_example_in_help() {
    for sub in ["list", "get", "create", "import"] {
        let out = run_ok(bare_bin().args(["contacts", sub, "--help"]));
        let help = stdout(&out);
        assert!(
            help.contains("Examples:") && help.contains(&format!("contacts {sub}")),
            "{sub}: {help}"
        );
    }
}

/// A contacts server that answers the first `limited` POSTs with the API's
/// `rate_limit_exceeded` (and `Retry-After: 0`), then creates contacts,
/// except that it rejects any phone ending in 99 with a `validation_error`.
struct RateLimitedServer {
    runtime: tokio::runtime::Runtime,
    url: String,
    posts: Arc<AtomicU64>,
}

impl RateLimitedServer {
    fn start(limited: u64) -> RateLimitedServer {
        use axum::http::StatusCode;
        use axum::response::IntoResponse;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let posts = Arc::new(AtomicU64::new(0));
        let counter = posts.clone();
        let app = axum::Router::new().route(
            "/contacts",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < limited {
                        let error = json!({"success": false, "message": "Too many requests",
                            "error": {"code": "rate_limit_exceeded", "details": "slow down"}});
                        return (
                            StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after", "0")],
                            axum::Json(error),
                        )
                            .into_response();
                    }
                    if body["phone_number"].as_str().is_some_and(|p| p.ends_with("99")) {
                        let error = json!({"success": false, "message": "Validation failed",
                            "error": {"code": "validation_error", "details": "phone_number: blocked"}});
                        return (StatusCode::BAD_REQUEST, axum::Json(error)).into_response();
                    }
                    let contact = json!({"id": format!("contact_{n}"), "name": body["name"],
                        "phone_number": body["phone_number"]});
                    (
                        StatusCode::CREATED,
                        axum::Json(json!({"success": true, "data": {"contact": contact}})),
                    )
                        .into_response()
                }
            }),
        );
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        runtime.spawn(async move { axum::serve(listener, app).await });
        RateLimitedServer {
            runtime,
            url,
            posts,
        }
    }
}

#[test]
fn import_waits_out_rate_limits_and_retries_the_row() {
    let server = RateLimitedServer::start(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("people.csv");
    std::fs::write(&csv, common::kenyan_csv(4)).expect("write csv");
    let out = run_ok(
        bare_bin()
            .env("CONVERS8_API_KEY", KEY)
            .env("CONVERS8_BASE_URL", &server.url)
            .args(["contacts", "import"])
            .arg(&csv),
    );
    assert!(
        stdout(&out).contains("created 4, invalid 0, duplicate 0, failed 0"),
        "{}",
        stdout(&out)
    );
    assert_eq!(server.posts.load(Ordering::SeqCst), 4 + 3, "three retries");
    drop(server.runtime);
}

#[test]
fn a_row_the_api_rejects_is_reported_and_fails_the_import() {
    let server = RateLimitedServer::start(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("people.csv");
    std::fs::write(&csv, "phone,name\n+254711000001,A\n+254711000099,B\n").expect("write csv");
    let out = bare_bin()
        .env("CONVERS8_API_KEY", KEY)
        .env("CONVERS8_BASE_URL", &server.url)
        .args(["contacts", "import"])
        .arg(&csv)
        .output()
        .expect("binary runs");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = stdout(&out);
    assert!(
        report.contains("row 2: rejected: phone_number: blocked"),
        "{report}"
    );
    assert!(
        report.contains("created 1, invalid 0, duplicate 0, failed 1"),
        "{report}"
    );
    assert!(
        stderr(&out).contains("1 of 2 rows could not be created"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        server.posts.load(Ordering::SeqCst),
        2,
        "a rejection is not retried"
    );
    drop(server.runtime);
}

/// The number after `label` in `text` ("not imported 12" → 12).
fn count_after(text: &str, label: &str) -> Option<u64> {
    let at = text.find(label)? + label.len();
    let digits: String = text[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(unix)]
#[test]
fn import_drains_on_sigterm_and_reports_every_contact_it_created() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    const ROWS: u64 = 40;
    // Each answer takes 300 ms: when the first arrives, the next rows are on the wire.
    let sandbox = TestSandbox::slow(300);
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("people.csv");
    std::fs::write(&csv, common::kenyan_csv(ROWS as usize)).expect("write csv");
    let mut child = bin(&sandbox)
        .args(["contacts", "import"])
        .arg(&csv)
        .args(["--concurrency", "4", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the import starts");

    // Rows arrive on stdout as they finish; a thread hands them over.
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let row: Value = serde_json::from_str(&line).expect("each line is JSON");
            if tx.send(row).is_err() {
                break;
            }
        }
    });
    let mut rows = Vec::new();
    loop {
        let row = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a row is reported within 20 s");
        let created = row["outcome"] == "created";
        rows.push(row);
        if created {
            break;
        }
    }
    let pid = child.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the import") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the import did not exit within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    reader.join().expect("stdout reader");
    rows.extend(rx.try_iter());
    let err = stderr(&child.wait_with_output().expect("stderr"));

    // A graceful stop, not a death by signal (which has no exit code).
    assert_eq!(status.code(), Some(130), "exit {status:?}; stderr:\n{err}");
    let created: Vec<&Value> = rows.iter().filter(|r| r["outcome"] == "created").collect();
    let summary = err
        .lines()
        .find(|l| l.contains("created ") && l.ends_with(&format!("({ROWS} rows)")))
        .unwrap_or_else(|| panic!("a summary of all {ROWS} rows on stderr:\n{err}"));
    assert_eq!(
        count_after(summary, "created "),
        Some(created.len() as u64),
        "{summary}"
    );
    let not_imported = count_after(summary, "not imported ")
        .unwrap_or_else(|| panic!("the summary says how many were not imported: {summary}"));
    assert!(not_imported > 0, "stopped early: {summary}");
    assert_eq!(
        created.len() as u64 + not_imported,
        ROWS,
        "every row was created or not imported: {summary}"
    );
    assert!(
        err.contains(&format!(
            "interrupted: {not_imported} of {ROWS} rows were not imported"
        )),
        "{err}"
    );
    assert!(
        rows.iter()
            .all(|r| r["outcome"] == "created" || r["outcome"] == "not_imported"),
        "{rows:?}"
    );

    // Nobody lost: every contact the sandbox created was reported as created.
    let mut on_server: Vec<String> = all_contacts(&sandbox)[2..]
        .iter()
        .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let mut reported: Vec<String> = created
        .iter()
        .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    on_server.sort();
    reported.sort();
    assert_eq!(on_server, reported);
}
