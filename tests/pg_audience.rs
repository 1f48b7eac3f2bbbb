//! The account's audience ledger in PostgreSQL, end to end: a run with
//! `--state postgres://…` and no ledger named keeps its opt-outs, frequency
//! caps and daily limit in the same database (`convers8.ledger_messages`,
//! `convers8.opt_outs`), so runners on several machines share them exactly.
//!
//! A "machine" here is a runner process with `CONVERS8_LEDGER` removed and
//! `HOME` and `XDG_STATE_HOME` of its own (a temporary directory): the only
//! thing two machines share is the database. The sandbox's own record of
//! the messages it accepted, and the database read with psql, judge.
//!
//! Each test needs a server (`CONVERS8_TEST_PG_URL`, see tests/common/pg.rs)
//! and is skipped with a notice without one. Every process a test starts is
//! killed (by its own pid) and reaped by a guard if it is still running when
//! the test ends, whatever happens.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::pg::{Psql, TestDatabase, test_pg_url};
use common::process::Proc;
use common::*;

// ---------------------------------------------------------------------------
// the database, read with psql

/// One recipient row of a campaign in the database.
#[derive(Debug, Clone)]
struct Row {
    csv_row: u64,
    phone: String,
    state: String,
    error_code: String,
    message_id: String,
    runner: Option<i64>,
}

fn recipients_of(sql: &Psql, campaign: &str) -> Vec<Row> {
    sql.rows(&format!(
        "SELECT r.csv_row, coalesce(r.phone, ''), r.state, coalesce(r.error_code, ''),
                    coalesce(r.message_id, ''), coalesce(r.runner_id::text, '')
               FROM convers8.recipients r JOIN convers8.campaigns c ON c.id = r.campaign_id
              WHERE c.name = '{campaign}'
              ORDER BY r.csv_row"
    ))
    .into_iter()
    .map(|r| Row {
        csv_row: r[0].parse().expect("csv_row"),
        phone: r[1].clone(),
        state: r[2].clone(),
        error_code: r[3].clone(),
        message_id: r[4].clone(),
        runner: r[5].parse().ok(),
    })
    .collect()
}

fn ledger_messages_in(sql: &Psql, state: &str) -> u64 {
    sql.count(&format!(
        "SELECT count(*) FROM convers8.ledger_messages WHERE state = '{state}'"
    ))
}

/// The database's ledger holds `n` messages, all sent.
fn assert_ledger_holds_only_sent(sql: &Psql, n: u64) {
    assert_eq!(ledger_messages_in(sql, "sent"), n);
    assert_eq!(
        sql.count("SELECT count(*) FROM convers8.ledger_messages"),
        n
    );
}

/// How many times the database's opt-out list holds `phone`.
fn opt_outs_of(sql: &Psql, phone: &str) -> u64 {
    sql.count(&format!(
        "SELECT count(*) FROM convers8.opt_outs WHERE phone = '{phone}'"
    ))
}

// ---------------------------------------------------------------------------
// machines and processes

/// A machine of its own: a `HOME` and an `XDG_STATE_HOME` nobody else uses,
/// and no `CONVERS8_LEDGER`, so its per-user ledger file is its own.
struct Machine {
    name: &'static str,
    root: tempfile::TempDir,
}

impl Machine {
    fn new(name: &'static str) -> Machine {
        let root = tempfile::tempdir().expect("machine tempdir");
        std::fs::create_dir_all(root.path().join("home")).expect("home");
        std::fs::create_dir_all(root.path().join("state")).expect("xdg state home");
        Machine { name, root }
    }

    fn home(&self) -> PathBuf {
        self.root.path().join("home")
    }

    fn xdg_state_home(&self) -> PathBuf {
        self.root.path().join("state")
    }

    /// This machine's per-user ledger file (it may not exist).
    fn ledger_file(&self) -> PathBuf {
        self.xdg_state_home()
            .join("convers8-campaign")
            .join("ledger.db")
    }

    fn on(&self, mut cmd: Command) -> Command {
        // common::bin names a ledger of the test's own: a machine has none.
        // Its working directory is its own too: nothing a command writes
        // relative to it lands in the repository.
        cmd.current_dir(self.root.path())
            .env_remove("CONVERS8_LEDGER")
            .env_remove("CONVERS8_STATE_URL")
            .env("HOME", self.home())
            .env("XDG_STATE_HOME", self.xdg_state_home());
        cmd
    }

    /// The binary on this machine, aimed at the sandbox.
    fn bin(&self, sandbox: &TestSandbox) -> Command {
        self.on(bin(sandbox))
    }

    /// The binary on this machine, with no key or base URL.
    fn bare(&self) -> Command {
        self.on(bare_bin())
    }

    /// `run CAMPAIGN --state URL` on this machine, aimed at the sandbox.
    fn run(&self, sandbox: &TestSandbox, dir: &CampaignDir, state_url: &str) -> Command {
        let mut cmd = self.bin(sandbox);
        cmd.arg("run").arg(dir.toml()).args(["--state", state_url]);
        cmd
    }

    /// `run CAMPAIGN --state URL --json` started in the background.
    fn spawn_run(&self, sandbox: &TestSandbox, dir: &CampaignDir, state_url: &str) -> Proc {
        Proc::spawn(
            format!("runner on {}", self.name),
            self.run(sandbox, dir, state_url).arg("--json"),
            &self.root.path().join("run"),
        )
    }

    /// `optout list` on this machine, of the ledger `CONVERS8_LEDGER` names
    /// (its own per-user file when `None`): its stdout.
    fn opt_out_list(&self, ledger: Option<&str>) -> String {
        let mut cmd = self.bare();
        if let Some(ledger) = ledger {
            cmd.env("CONVERS8_LEDGER", ledger);
        }
        stdout(&run_ok(cmd.args(["optout", "list"])))
    }
}

fn output_of(cmd: &mut Command) -> Output {
    cmd.output().expect("the binary runs")
}

/// What every test here starts from: a database of its own, psql on it, and
/// an unlimited sandbox; `None` (the test is skipped) without a server.
fn setup() -> Option<(TestDatabase, Psql, TestSandbox)> {
    let db = TestDatabase::create(&test_pg_url()?);
    let sql = Psql::new(&db.url);
    Some((db, sql, TestSandbox::unlimited()))
}

/// Generous: a run here sends at most a few dozen messages.
const RUN_WITHIN: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------
// campaigns

/// The `i`-th Kenyan test number (as `phones_csv` writes it, in E.164).
fn phone(i: usize) -> String {
    format!("+2547{:08}", 10_000_000 + i)
}

/// `n` Kenyan numbers starting at the `first`-th, so two lists can overlap.
fn phones_csv(first: usize, n: usize) -> String {
    let mut csv = String::from("phone,name\n");
    for i in first..first + n {
        csv.push_str(&format!("{},Person {i}\n", phone(i)));
    }
    csv
}

/// A text campaign called `name`, with `[send]` lines and extra TOML after.
fn campaign(name: &str, send: &str, extra: &str) -> String {
    format!(
        "{}\n{extra}\n",
        text_campaign(send, "Hi {{name}}")
            .replace("name = \"test\"", &format!("name = \"{name}\""))
    )
}

const CAP_ONE_PER_WEEK: &str = "[audience]\nmax_messages = 1\nper = \"7d\"";

/// The sandbox messaged `n` phones, each once: how many each got.
fn assert_messaged_once_each(sandbox: &TestSandbox, n: usize) -> HashMap<String, usize> {
    let per_phone = sandbox.per_phone();
    assert_eq!(per_phone.len(), n, "{per_phone:?}");
    assert!(per_phone.values().all(|&n| n == 1), "{per_phone:?}");
    per_phone
}

/// After a run of `campaign` (of `n` rows) on the database: every phone but
/// `out_of_it` was messaged once, and its row is sent; the row of
/// `out_of_it` is suppressed as opted out; the database's ledger holds the
/// `n - 1` sent.
fn assert_all_sent_but_the_opted_out(
    sandbox: &TestSandbox,
    sql: &Psql,
    campaign: &str,
    n: usize,
    out_of_it: &str,
) {
    let per_phone = assert_messaged_once_each(sandbox, n - 1);
    assert!(!per_phone.contains_key(out_of_it), "{per_phone:?}");
    let rows = recipients_of(sql, campaign);
    assert_eq!(rows.len(), n);
    for r in &rows {
        if r.phone == out_of_it {
            assert_eq!(
                (r.state.as_str(), r.error_code.as_str()),
                ("suppressed", "opted_out"),
                "{r:?}"
            );
        } else {
            assert_eq!(r.state, "sent", "{r:?}");
        }
    }
    assert_eq!(ledger_messages_in(sql, "sent"), n as u64 - 1);
}

/// None of `machines` has a per-user ledger file: each used the database's.
fn assert_no_ledger_file(machines: &[&Machine]) {
    for m in machines {
        assert!(
            !m.ledger_file().exists(),
            "{} created its per-user ledger file {}",
            m.name,
            m.ledger_file().display()
        );
    }
}

fn state_counts(rows: &[Row]) -> HashMap<String, usize> {
    let mut map = HashMap::new();
    for r in rows {
        *map.entry(r.state.clone()).or_insert(0) += 1;
    }
    map
}

// ---------------------------------------------------------------------------
// 1. the daily limit, shared exactly by two machines

#[test]
fn two_machines_share_the_daily_limit_exactly() {
    let Some((db, sql, sandbox)) = setup() else {
        return;
    };
    // 2 a second for the whole campaign (one pace in the database): the 20
    // messages the limit allows take about 10 s, long enough for both
    // runners to be sending at once even when the second starts slowly on
    // a loaded machine.
    let dir = CampaignDir::new(
        &campaign(
            "shared-limit",
            "concurrency = 2\nrate_per_second = 2\ndaily_limit = 20",
            "",
        ),
        &phones_csv(0, 60),
    );
    let (one, two) = (Machine::new("machine 1"), Machine::new("machine 2"));

    let mut first = one.spawn_run(&sandbox, &dir, &db.url);
    let mut second = two.spawn_run(&sandbox, &dir, &db.url);
    let first_status = first.wait(RUN_WITHIN);
    let second_status = second.wait(RUN_WITHIN);

    let messages = sandbox.messages();
    let phones: BTreeSet<&str> = messages.iter().map(|m| m.to.as_str()).collect();
    assert_eq!(
        messages.len(),
        20,
        "the account's daily limit was not held exactly\n{}\n{}",
        first.output(),
        second.output()
    );
    assert_eq!(phones.len(), 20, "{phones:?}");
    for (status, runner) in [(first_status, &first), (second_status, &second)] {
        assert_eq!(status.code(), Some(75), "{}", runner.output());
        assert_eq!(
            runner.end().as_deref(),
            Some("daily_limit_reached"),
            "{}",
            runner.output()
        );
    }

    // The ledger in the database holds exactly those 20, all settled.
    assert_ledger_holds_only_sent(&sql, 20);
    let rows = recipients_of(&sql, "shared-limit");
    let by_state = state_counts(&rows);
    assert_eq!(by_state.get("sent"), Some(&20), "{by_state:?}");
    assert_eq!(by_state.get("pending"), Some(&40), "{by_state:?}");
    // Neither machine used a ledger file of its own.
    assert_no_ledger_file(&[&one, &two]);

    // Evidence the two runners really overlapped: each sent some of the 20,
    // and each sent one before the other's last (both were past planning
    // while the other was still sending).
    // Both have ended: a runner either registered or never will.
    let runner_of_pid = |pid: u32| sql.runner_of(pid, Duration::ZERO);
    let (id1, id2) = (runner_of_pid(first.pid()), runner_of_pid(second.pid()));
    let runner_by_message: HashMap<&str, i64> = rows
        .iter()
        .filter(|r| r.state == "sent")
        .map(|r| {
            (
                r.message_id.as_str(),
                r.runner.expect("a sent row has a runner"),
            )
        })
        .collect();
    let mut spans: HashMap<i64, (String, String, usize)> = HashMap::new();
    for m in &messages {
        let runner = *runner_by_message
            .get(m.message_id.as_str())
            .unwrap_or_else(|| panic!("{} ({}) is in no sent row", m.message_id, m.to));
        let span = spans
            .entry(runner)
            .or_insert_with(|| (m.received_at.clone(), m.received_at.clone(), 0));
        span.0 = span.0.clone().min(m.received_at.clone());
        span.1 = span.1.clone().max(m.received_at.clone());
        span.2 += 1;
    }
    let runners = rows_of_runners(&sql);
    eprintln!("{}\n{}", first.output(), second.output());
    eprintln!("runners (id, pid, started_at, ended_at, state): {runners:?}");
    eprintln!(
        "machine 1: pid {} runner {id1} sent {:?}",
        first.pid(),
        spans.get(&id1)
    );
    eprintln!(
        "machine 2: pid {} runner {id2} sent {:?}",
        second.pid(),
        spans.get(&id2)
    );
    let (a, b) = match (spans.get(&id1), spans.get(&id2)) {
        (Some(a), Some(b)) => (a, b),
        _ => panic!(
            "only one runner sent: {spans:?} (runners {id1}, {id2})\n{}\n{}",
            first.output(),
            second.output()
        ),
    };
    assert_eq!(a.2 + b.2, 20, "{spans:?}");
    // received_at is fixed-width RFC 3339 UTC: text order is time order.
    assert!(
        a.0 <= b.1 && b.0 <= a.1,
        "the runners did not send at the same time: {spans:?}"
    );
}

/// (id, pid, started_at, ended_at, state) of every runner.
fn rows_of_runners(sql: &Psql) -> Vec<Vec<String>> {
    sql.rows(
        "SELECT id, pid, started_at, coalesce(ended_at::text, ''), state
           FROM convers8.runners ORDER BY id",
    )
}

// ---------------------------------------------------------------------------
// 2. a frequency cap, across machines and campaigns

#[test]
fn a_cap_holds_across_machines_and_campaigns() {
    let Some((db, sql, sandbox)) = setup() else {
        return;
    };
    // Phones 0..15 and 5..20: the ten 5..15 are on both lists.
    let a = CampaignDir::new(&campaign("cap-a", "", CAP_ONE_PER_WEEK), &phones_csv(0, 15));
    let b = CampaignDir::new(&campaign("cap-b", "", CAP_ONE_PER_WEEK), &phones_csv(5, 15));
    let (one, two) = (Machine::new("machine 1"), Machine::new("machine 2"));

    let out = run_ok(&mut one.run(&sandbox, &a, &db.url));
    eprintln!("campaign A on machine 1:\n{}", stdout(&out));
    assert_eq!(sandbox.messages().len(), 15);
    assert_eq!(ledger_messages_in(&sql, "sent"), 15);

    let out = run_ok(&mut two.run(&sandbox, &b, &db.url));
    eprintln!("campaign B on machine 2:\n{}", stdout(&out));

    assert_messaged_once_each(&sandbox, 20);

    let rows_a = recipients_of(&sql, "cap-a");
    assert_eq!(rows_a.len(), 15);
    assert!(rows_a.iter().all(|r| r.state == "sent"), "{rows_a:?}");

    let rows_b = recipients_of(&sql, "cap-b");
    assert_eq!(rows_b.len(), 15);
    for r in &rows_b {
        let shared = (5..15).map(phone).any(|p| p == r.phone);
        if shared {
            assert_eq!(
                (r.state.as_str(), r.error_code.as_str()),
                ("suppressed", "frequency_cap"),
                "row {} ({})",
                r.csv_row,
                r.phone
            );
        } else {
            assert_eq!(r.state, "sent", "row {} ({})", r.csv_row, r.phone);
        }
    }

    // `status` says why, from the database.
    let status = run_ok(
        two.bare()
            .arg("status")
            .arg(b.toml())
            .args(["--state", &db.url]),
    );
    assert!(
        stdout(&status).contains("frequency_cap 10"),
        "{}",
        stdout(&status)
    );

    // The database's ledger holds every message of both campaigns, and
    // neither machine has a ledger file.
    assert_ledger_holds_only_sent(&sql, 20);
    assert_no_ledger_file(&[&one, &two]);
}

// ---------------------------------------------------------------------------
// 3. an opt-out in the database, honoured by every machine

#[test]
fn an_opt_out_in_the_database_is_honoured_by_every_machine() {
    let Some((db, sql, sandbox)) = setup() else {
        return;
    };
    let dir = CampaignDir::new(&campaign("optout-db", "", ""), &phones_csv(0, 8));
    let (one, two) = (Machine::new("machine 1"), Machine::new("machine 2"));
    let out_of_it = phone(3);

    // Machine 1 opts the phone out, in the database.
    let out = run_ok(
        one.bare()
            .args(["optout", "add", &out_of_it, "--ledger", &db.url]),
    );
    eprintln!("optout add: {}", stdout(&out));
    assert_eq!(opt_outs_of(&sql, &out_of_it), 1);
    assert!(!one.ledger_file().exists(), "optout add wrote a file");

    // Machine 2 sees it through CONVERS8_LEDGER, not in its own file.
    let listed = two.opt_out_list(Some(&db.url));
    assert!(listed.contains(&out_of_it), "{listed}");
    let own = two.opt_out_list(None);
    assert!(!own.contains(&out_of_it), "{own}");

    // Machine 2 runs the campaign on the database: the phone is never sent.
    let out = run_ok(&mut two.run(&sandbox, &dir, &db.url));
    eprintln!("run on machine 2:\n{}", stdout(&out));
    assert_all_sent_but_the_opted_out(&sandbox, &sql, "optout-db", 8, &out_of_it);
    assert!(!two.ledger_file().exists(), "the run wrote a ledger file");

    // Taken off the list with the URL too.
    let out = run_ok(
        one.bare()
            .args(["optout", "remove", &out_of_it, "--ledger", &db.url]),
    );
    assert!(
        stdout(&out).contains("is off the opt-out list"),
        "{}",
        stdout(&out)
    );
    assert_eq!(sql.count("SELECT count(*) FROM convers8.opt_outs"), 0);
    let listed = two.opt_out_list(Some(&db.url));
    assert!(listed.trim().is_empty(), "{listed}");
}

// ---------------------------------------------------------------------------
// 4. a machine's ledger file with opt-outs the database lacks

#[test]
fn a_machines_ledger_file_with_opt_outs_the_database_lacks_stops_the_run() {
    let Some((db, sql, sandbox)) = setup() else {
        return;
    };
    let dir = CampaignDir::new(&campaign("file-vs-db", "", ""), &phones_csv(0, 6));
    let one = Machine::new("machine 1");
    let out_of_it = phone(2);
    let file = one.ledger_file();

    // The opt-out lives only in machine 1's per-user ledger file.
    run_ok(
        one.bare()
            .args(["optout", "add", &out_of_it, "--ledger"])
            .arg(&file),
    );
    assert!(file.exists(), "{}", file.display());

    // A run defaulting to the database's ledger refuses, naming the file.
    let out = output_of(&mut one.run(&sandbox, &dir, &db.url));
    let err = stderr(&out);
    eprintln!("refused run: exit {:?}\n{err}", out.status.code());
    assert_eq!(out.status.code(), Some(1), "{}\n{err}", stdout(&out));
    assert!(sandbox.messages().is_empty(), "the refused run sent");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("optout import --from-ledger"), "{err}");
    assert!(names(&err, &file), "{err}");

    // Imported, the run proceeds and honours it.
    let out = run_ok(
        one.bare()
            .args(["optout", "import", "--from-ledger"])
            .arg(&file)
            .args(["--ledger", &db.url]),
    );
    eprintln!("import: {}", stdout(&out));
    assert_eq!(opt_outs_of(&sql, &out_of_it), 1);
    let out = run_ok(&mut one.run(&sandbox, &dir, &db.url));
    eprintln!("run after the import:\n{}", stdout(&out));
    assert_all_sent_but_the_opted_out(&sandbox, &sql, "file-vs-db", 6, &out_of_it);
}

/// Whether `text` names `path` (as given, or canonical).
fn names(text: &str, path: &Path) -> bool {
    text.contains(&path.display().to_string())
        || std::fs::canonicalize(path).is_ok_and(|p| text.contains(&p.display().to_string()))
}
