//! The library's `contacts::import` against the in-process sandbox over real
//! HTTP on loopback: every row read gets exactly one report, the counts add
//! up to the rows of the file, and a stop or a rejected key drains the
//! requests in flight so every contact the server created is reported as
//! created. (tests/contacts.rs drives the same import through the binary.)

use std::path::Path;
use std::time::Duration;

use convers8_campaign::api::{ApiKey, Client, ClientConfig};
use convers8_campaign::campaign::RecipientsSpec;
use convers8_campaign::contacts::import::{
    self, ImportEnd, ImportError, ImportOptions, ImportSummary, RowReport, RowStatus,
};
use convers8_campaign::engine::{Stop, StopReason};
use convers8_campaign::sandbox::{Sandbox, SandboxConfig};

const KEY: &str = "sk_test_import_7c1e";

async fn sandbox(latency: Duration) -> Sandbox {
    let config = SandboxConfig {
        api_key: KEY.into(),
        rate: 0.0,
        latency,
        ..SandboxConfig::default()
    };
    Sandbox::start(config, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("sandbox starts")
}

fn client(sandbox: &Sandbox, key: &str) -> Client {
    let config = ClientConfig::new(sandbox.base_url(), ApiKey::new(key, "test").expect("key"));
    Client::new(config).expect("client")
}

fn options(csv: &Path, concurrency: usize) -> ImportOptions {
    ImportOptions {
        concurrency,
        ..ImportOptions::new(RecipientsSpec {
            csv: csv.to_owned(),
            phone_column: "phone".into(),
            name_column: "name".into(),
            default_country: Some(phonenumber::country::Id::KE),
            delimiter: b',',
            timezone_column: None,
            fallback_timezone: None,
            exclude: Vec::new(),
        })
    }
}

/// `n` distinct valid Kenyan numbers with names.
fn kenyan_csv(n: usize) -> String {
    let mut csv = String::from("phone,name\n");
    for i in 0..n {
        csv.push_str(&format!("+2547{:08},Person {i}\n", 10_000_000 + i));
    }
    csv
}

/// Each outcome counted once, adding up to every row of the file.
fn assert_counts_add_up(summary: &ImportSummary, reports: &[RowReport]) {
    let mut rows: Vec<u64> = reports.iter().map(|r| r.row).collect();
    rows.sort_unstable();
    let expected: Vec<u64> = (1..=summary.rows_read()).collect();
    assert_eq!(rows, expected, "every row read is reported exactly once");
    let count = |status| reports.iter().filter(|r| r.outcome == status).count() as u64;
    assert_eq!(summary.created, count(RowStatus::Created));
    assert_eq!(summary.invalid, count(RowStatus::Invalid));
    assert_eq!(summary.duplicate, count(RowStatus::Duplicate));
    assert_eq!(summary.failed, count(RowStatus::Failed));
    assert_eq!(summary.uncertain, count(RowStatus::Uncertain));
    assert_eq!(summary.stopped, count(RowStatus::NotImported));
    assert_eq!(
        summary.created
            + summary.invalid
            + summary.duplicate
            + summary.failed
            + summary.uncertain
            + summary.not_imported(),
        summary.rows,
        "{summary:?}"
    );
}

/// The ids of the contacts the sandbox holds beyond the guide's two.
async fn created_on_the_server(client: &Client) -> Vec<String> {
    let all = client.list_contacts().await.expect("list contacts");
    let mut ids: Vec<String> = all.into_iter().skip(2).map(|c| c.id).collect();
    ids.sort();
    ids
}

fn reported_ids(reports: &[RowReport]) -> Vec<String> {
    let mut ids: Vec<String> = reports
        .iter()
        .filter(|r| r.outcome == RowStatus::Created)
        .filter_map(|r| r.id.clone())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_is_judged_once_and_valid_ones_are_created() {
    let server = sandbox(Duration::ZERO).await;
    let client = client(&server, KEY);
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("people.csv");
    std::fs::write(
        &csv,
        "phone,name\n\
         +254711000001,Amina\n\
         0711000002,Baraka\n\
         12345,Bad Number\n\
         +254711000003,\n\
         0711000001,Amina again\n\
         +254711000004,Chao,extra\n\
         +254711000005,Dede\n",
    )
    .expect("write csv");
    let mut reports = Vec::new();
    let mut events = |r: &RowReport| reports.push(r.clone());
    let summary = import::run(&client, &options(&csv, 2), &mut events, Stop::new())
        .await
        .expect("import runs");
    assert!(matches!(summary.end, ImportEnd::Completed), "{summary:?}");
    assert_eq!(
        (
            summary.rows,
            summary.created,
            summary.invalid,
            summary.duplicate
        ),
        (7, 3, 3, 1),
        "{summary:?}"
    );
    assert_eq!(summary.not_imported(), 0);
    assert_counts_add_up(&summary, &reports);
    reports.sort_by_key(|r| r.row);
    let codes: Vec<Option<&str>> = reports.iter().map(|r| r.code.as_deref()).collect();
    assert_eq!(
        codes,
        [
            None,
            None,
            Some("invalid_phone"),
            Some("no_name"),
            Some("duplicate"),
            Some("bad_row"),
            None
        ]
    );
    assert_eq!(reports[1].phone.as_deref(), Some("+254711000002"), "E.164");
    assert_eq!(
        reports[4].details.as_deref(),
        Some("duplicate of row 1 (+254711000001)")
    );
    assert!(
        reports
            .iter()
            .all(|r| r.outcome != RowStatus::Created || r.attempts == 1)
    );
    assert_eq!(created_on_the_server(&client).await, reported_ids(&reports));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_drains_the_requests_in_flight_and_counts_the_rest() {
    // Slow answers: when the first one arrives, the next rows are on the wire.
    let server = sandbox(Duration::from_millis(200)).await;
    let client = client(&server, KEY);
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("people.csv");
    std::fs::write(&csv, kenyan_csv(30)).expect("write csv");
    let stop = Stop::new();
    let stopper = stop.clone();
    let mut reports = Vec::new();
    let mut events = |r: &RowReport| {
        if r.outcome == RowStatus::Created {
            stopper.trigger(StopReason::Interrupted);
        }
        reports.push(r.clone());
    };
    let summary = import::run(&client, &options(&csv, 3), &mut events, stop)
        .await
        .expect("import runs");
    assert!(
        matches!(summary.end, ImportEnd::Stopped(StopReason::Interrupted)),
        "{summary:?}"
    );
    assert_eq!(summary.rows, 30, "the unread rows are counted");
    assert!(summary.created >= 1, "{summary:?}");
    assert!(summary.unread > 0, "the stop came early: {summary:?}");
    assert_eq!(summary.first_unread(), Some(summary.rows_read() + 1));
    assert_counts_add_up(&summary, &reports);
    // Nobody lost: what the server created is exactly what was reported created.
    assert_eq!(created_on_the_server(&client).await, reported_ids(&reports));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_key_stops_the_import_and_creates_nothing() {
    let server = sandbox(Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("people.csv");
    std::fs::write(&csv, kenyan_csv(12)).expect("write csv");
    let stop = Stop::new();
    let mut reports = Vec::new();
    let mut events = |r: &RowReport| reports.push(r.clone());
    let wrong = client(&server, "sk_test_WRONG");
    let summary = import::run(&wrong, &options(&csv, 2), &mut events, stop.clone())
        .await
        .expect("import runs");
    let ImportEnd::Refused { row, error } = &summary.end else {
        panic!("{summary:?}")
    };
    assert!(*row <= 2, "the first answers end it: {row}");
    assert_eq!(error.code(), "unauthorized");
    assert!(matches!(stop.reason(), Some(StopReason::Unauthorized(_))));
    assert_eq!(summary.created, 0);
    assert!(summary.stopped <= 2, "at most the rows in flight were sent");
    assert_eq!(summary.not_imported(), 12);
    assert_counts_add_up(&summary, &reports);
    assert!(
        created_on_the_server(&client(&server, KEY))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_missing_name_column_is_refused_before_any_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("people.csv");
    std::fs::write(&csv, "phone,full name\n+254711000001,A\n").expect("write csv");
    // Nothing listens here: a request would fail, not hang.
    let config = ClientConfig::new("http://127.0.0.1:9", ApiKey::new(KEY, "test").expect("key"));
    let client = Client::new(config).expect("client");
    let mut events = |_: &RowReport| panic!("no row is read");
    let err = import::run(&client, &options(&csv, 2), &mut events, Stop::new())
        .await
        .expect_err("no name column");
    assert!(matches!(err, ImportError::NoNameColumn { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(
        shown.contains("no column 'name'") && shown.contains("phone, full name"),
        "{shown}"
    );
}

#[test]
fn an_import_can_run_on_its_own_task() {
    fn spawnable<F: std::future::Future + Send + 'static>(_: F) {}
    let config = ClientConfig::new("http://127.0.0.1:9", ApiKey::new(KEY, "test").expect("key"));
    let client = Client::new(config).expect("client");
    let options = options(Path::new("people.csv"), 2);
    // Built, never polled: this only has to compile.
    spawnable(async move {
        let mut events = |_: &RowReport| {};
        import::run(&client, &options, &mut events, Stop::new()).await
    });
}
