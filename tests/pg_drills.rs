//! Drills for the PostgreSQL state (`--state postgres://…`): several `run`
//! processes drain one campaign while the test breaks things under them, and
//! the sandbox's own record and the database judge.
//!
//! 1. Three runners at a shared 300/s; one is SIGKILLed twice (each time
//!    while the database shows rows it holds `sending`) and restarted.
//! 2. A runner is SIGSTOPped past its lease; the others finish its share; on
//!    SIGCONT it sends nothing more, exits 1 with `lease_lost`, and its late
//!    outcomes only upgrade its own rows.
//! 3. The server is restarted with `pg_ctl restart -m immediate` mid-run, on
//!    a throw-away cluster of the drill's own.
//!
//! Each drill needs a server (`CONVERS8_TEST_PG_URL`, see tests/common/pg.rs)
//! and is skipped with a notice without one. The drills run one at a time
//! (a lock in this file): each measures time and rate on a 2-core machine,
//! and two at once would starve each other's runners. Every process a drill
//! starts is killed and reaped by a guard, whatever happens; processes are
//! only ever signalled by their own pid. The random moments are seeded; the
//! seed is printed, and `PG_DRILL_SEED=…` replays them.
//!
//! Drill 3 runs on the cluster exactly as `scripts/pg-throwaway` makes it,
//! `synchronous_commit = off` included: a server configured so is what the
//! store must survive (a claim whose commit the crash loses puts rows that
//! were sent back to `pending`). `PG_DRILL_SYNC=1` turns it on server-wide
//! first, to tell that cause from any other.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::pg::{Psql, TestDatabase, test_pg_url};
use common::process::Proc;
use common::*;
use convers8_campaign::sandbox::{RecordedMessage, SandboxConfig};
use rand::{Rng, SeedableRng};

/// One drill at a time (see the module's notes).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn seeded_rng(drill: &str) -> rand::rngs::StdRng {
    let seed = std::env::var("PG_DRILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{drill}: seed {seed} (replay with PG_DRILL_SEED={seed})");
    rand::rngs::StdRng::seed_from_u64(seed)
}

// ---------------------------------------------------------------------------
// psql

/// The drills' questions to the database (psql: the test crate has no
/// PostgreSQL driver).
trait DrillQueries {
    fn sending_of(&self, runner: i64) -> u64;
    fn stranded_by(&self, runner: i64) -> u64;
    fn states(&self) -> BTreeMap<String, u64>;
    fn wait_leases_expired(&self, within: Duration);
}

impl DrillQueries for Psql {
    fn sending_of(&self, runner: i64) -> u64 {
        self.count(&format!(
            "SELECT count(*) FROM convers8.recipients WHERE runner_id = {runner} AND state = 'sending'"
        ))
    }

    /// Rows a killed runner left: still `sending`, or already rescued
    /// (another runner of this machine sees its process gone at once).
    fn stranded_by(&self, runner: i64) -> u64 {
        self.count(&format!(
            "SELECT count(*) FROM convers8.recipients WHERE runner_id = {runner}
               AND (state = 'sending' OR (state = 'uncertain' AND error_code = 'runner_lost'))"
        ))
    }

    /// Counts per state.
    fn states(&self) -> BTreeMap<String, u64> {
        self.rows("SELECT state, count(*) FROM convers8.recipients GROUP BY state")
            .into_iter()
            .map(|r| (r[0].clone(), r[1].parse().expect("count")))
            .collect()
    }

    /// Waits until no runner of the database holds an unexpired live lease
    /// (a rerun then rescues every row a dead one left `sending`).
    fn wait_leases_expired(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.count(
            "SELECT count(*) FROM convers8.runners WHERE state = 'live' AND lease_until >= now()",
        ) > 0
        {
            assert!(
                Instant::now() < deadline,
                "a live lease was still held after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One recipient row as the drills compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    id: i64,
    phone: String,
    state: String,
    runner: Option<i64>,
    token: Option<i64>,
    message_id: String,
    error_code: String,
    updated_at: String,
    attempts: u32,
}

fn recipients(sql: &Psql) -> Vec<Row> {
    sql.rows(
        "SELECT id, coalesce(phone, ''), state, coalesce(runner_id::text, ''),
                coalesce(claim_token::text, ''), coalesce(message_id, ''),
                coalesce(error_code, ''), coalesce(updated_at, ''), attempts::text
         FROM convers8.recipients ORDER BY id",
    )
    .into_iter()
    .map(|r| Row {
        id: r[0].parse().expect("id"),
        phone: r[1].clone(),
        state: r[2].clone(),
        runner: r[3].parse().ok(),
        token: r[4].parse().ok(),
        message_id: r[5].clone(),
        error_code: r[6].clone(),
        updated_at: r[7].clone(),
        attempts: r[8].parse().expect("attempts"),
    })
    .collect()
}

// ---------------------------------------------------------------------------
// processes

/// How a drill starts `run` processes: on one campaign and database, with
/// one lease, each in the background (its output in files in the campaign's
/// folder).
struct Runners<'a> {
    sandbox: &'a TestSandbox,
    dir: &'a CampaignDir,
    state_url: &'a str,
    lease: &'a str,
}

impl<'a> Runners<'a> {
    fn new(
        sandbox: &'a TestSandbox,
        dir: &'a CampaignDir,
        state_url: &'a str,
        lease: &'a str,
    ) -> Runners<'a> {
        Runners {
            sandbox,
            dir,
            state_url,
            lease,
        }
    }

    /// `run CAMPAIGN --state URL --lease LEASE --json`, as `name`.
    fn spawn(&self, name: &str) -> Proc {
        self.spawn_from(name, bin(self.sandbox))
    }

    /// [`Runners::spawn`] with a ledger of its own (a runner on a machine of
    /// its own) instead of the test's.
    fn spawn_with_ledger(&self, name: &str, ledger: &Path) -> Proc {
        let mut cmd = bin(self.sandbox);
        cmd.env("CONVERS8_LEDGER", ledger);
        self.spawn_from(name, cmd)
    }

    fn spawn_from(&self, name: &str, mut cmd: Command) -> Proc {
        cmd.env_remove("CONVERS8_STATE_URL")
            .arg("run")
            .arg(self.dir.toml())
            .args(["--state", self.state_url, "--lease", self.lease, "--json"]);
        Proc::spawn(name, &mut cmd, &self.dir.dir.path().join(name)).stderr_tail(4000)
    }
}

/// `kill -SIG PID`: a signal to the runner's own pid.
fn signal(runner: &Proc, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &runner.pid().to_string()])
        .status()
        .expect("kill(1) runs")
        .success();
    assert!(
        ok,
        "kill -{sig} {} ({}) failed",
        runner.pid(),
        runner.name()
    );
}

/// A text campaign to `recipients` Kenyan numbers, at `concurrency` and
/// `rate` a second.
fn drill_campaign(concurrency: usize, rate: f64, recipients: usize) -> CampaignDir {
    CampaignDir::new(
        &text_campaign(
            &format!("concurrency = {concurrency}\nrate_per_second = {rate}"),
            "Hi {{name}}",
        ),
        &kenyan_csv(recipients),
    )
}

/// Plans the campaign into the database (`run --dry-run`), so the sending
/// runners all start within milliseconds of their launch.
fn plan(sandbox: &TestSandbox, dir: &CampaignDir, state_url: &str) -> Duration {
    let started = Instant::now();
    run_ok(
        bin(sandbox)
            .env_remove("CONVERS8_STATE_URL")
            .args(["run", "--dry-run", "--state", state_url])
            .arg(dir.toml()),
    );
    started.elapsed()
}

/// After every runner ended and every lease ran out: one more run must find
/// nothing left to send (it rescues what dead runners left `sending`).
fn final_rerun(sandbox: &TestSandbox, dir: &CampaignDir, sql: &Psql, lease: &str) {
    sql.wait_leases_expired(Duration::from_secs(30));
    let mut rerun = Runners::new(sandbox, dir, &sql.url, lease).spawn("rerun");
    let status = rerun.wait(Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(0),
        "the final rerun\n{}",
        rerun.output()
    );
}

fn received_at(m: &RecordedMessage) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&m.received_at)
        .unwrap_or_else(|e| panic!("received_at {:?}: {e}", m.received_at))
        .with_timezone(&Utc)
}

fn assert_nobody_twice(sandbox: &TestSandbox) {
    let twice: Vec<_> = sandbox
        .per_phone()
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(twice.is_empty(), "messaged more than once: {twice:?}");
}

/// Every `sent` row carries the message id the sandbox gave its phone, and
/// every message the sandbox accepted belongs to a `sent` row or to an
/// `uncertain` one (delivered, answer never recorded).
fn assert_rows_match_sandbox(rows: &[Row], messages: &[RecordedMessage]) {
    let by_phone: HashMap<&str, &RecordedMessage> =
        messages.iter().map(|m| (m.to.as_str(), m)).collect();
    let by_row: HashMap<&str, &Row> = rows.iter().map(|r| (r.phone.as_str(), r)).collect();
    for r in rows.iter().filter(|r| r.state == "sent") {
        let m = by_phone
            .get(r.phone.as_str())
            .unwrap_or_else(|| panic!("row {} ({}) is sent but not in the sandbox", r.id, r.phone));
        assert_eq!(r.message_id, m.message_id, "row {} message id", r.id);
    }
    for m in messages {
        let r = by_row
            .get(m.to.as_str())
            .unwrap_or_else(|| panic!("the sandbox messaged {}, a phone of no row", m.to));
        assert!(
            r.state == "sent" || r.state == "uncertain",
            "{} was messaged but its row is {}",
            m.to,
            r.state
        );
    }
}

// ---------------------------------------------------------------------------
// Drill 1: three runners, one SIGKILLed twice

const D1_RECIPIENTS: usize = 20_000;
const D1_RATE: f64 = 300.0;
const D1_CONCURRENCY: usize = 16;
const D1_LEASE: &str = "6s";
const D1_KILLS: usize = 2;

#[test]
fn three_runners_one_killed_twice_nobody_twice_and_the_shared_rate_holds() {
    let Some(server) = test_pg_url() else {
        return;
    };
    let _one_at_a_time = serial();
    let started = Instant::now();
    let mut rng = seeded_rng("drill 1");
    let db = TestDatabase::create(&server);
    let sql = Psql::new(&db.url);
    // The server's own limit is the campaign's: 300/s, a bucket of one second.
    let sandbox = TestSandbox::start(SandboxConfig {
        rate: D1_RATE,
        burst: 0,
        ..SandboxConfig::default()
    });
    let dir = drill_campaign(D1_CONCURRENCY, D1_RATE, D1_RECIPIENTS);
    let claim_batch = convers8_campaign::engine::default_claim_batch(D1_CONCURRENCY) as u64;
    let planned_in = plan(&sandbox, &dir, &db.url);
    assert_eq!(sql.states().get("pending"), Some(&(D1_RECIPIENTS as u64)));

    let runners = Runners::new(&sandbox, &dir, &db.url, D1_LEASE);
    let mut a = runners.spawn("A");
    let mut b = runners.spawn("B");
    let mut c = runners.spawn("C");
    let sending_from = Instant::now();

    // Each kill: a random moment 2–8 s into that instance's run, then at the
    // first poll that shows it holding rows `sending`. After the kill the
    // process can change nothing, so the rows it holds `sending` then are
    // exactly what it strands: counted, they must all end uncertain.
    let mut killed: Vec<(i64, u64)> = Vec::new();
    for kill in 0..D1_KILLS {
        let c_id = sql.runner_of(c.pid(), Duration::from_secs(20));
        let delay = Duration::from_millis(rng.random_range(2_000..8_000));
        std::thread::sleep(delay);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(
                c.try_status().is_none(),
                "C ended before kill {kill}\n{}",
                c.output()
            );
            if sql.sending_of(c_id) > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "C held no row `sending` for 20 s"
            );
        }
        c.sigkill();
        let stranded = sql.stranded_by(c_id);
        eprintln!(
            "drill 1: kill {kill} of runner {c_id} {:.1} s in ({delay:?} after its start): {stranded} rows stranded `sending`; {:?}",
            sending_from.elapsed().as_secs_f64(),
            sql.states()
        );
        assert!(
            stranded > 0,
            "kill {kill} landed while runner {c_id} held no row `sending`"
        );
        killed.push((c_id, stranded));
        c = runners.spawn("C");
    }
    assert!(
        sql.states().get("pending").copied().unwrap_or(0) > 0,
        "the kills must land before the campaign is drained"
    );

    for r in [&mut a, &mut b, &mut c] {
        let status = r.wait(Duration::from_secs(240));
        assert_eq!(status.code(), Some(0), "{}", r.output());
        assert_eq!(r.end().as_deref(), Some("completed"), "{}", r.output());
    }
    let drained_in = sending_from.elapsed();
    final_rerun(&sandbox, &dir, &sql, D1_LEASE);

    // Nobody messaged twice; every row settled.
    assert_nobody_twice(&sandbox);
    let states = sql.states();
    assert_eq!(states.values().sum::<u64>(), D1_RECIPIENTS as u64);
    assert_eq!(
        states.get("pending").copied().unwrap_or(0) + states.get("sending").copied().unwrap_or(0),
        0,
        "{states:?}"
    );
    let rows = recipients(&sql);
    let messages = sandbox.messages();
    assert_rows_match_sandbox(&rows, &messages);

    // `uncertain` only among the killed instances' claims, exactly the rows
    // each stranded, each at most a claim batch plus what is in flight.
    let killed_ids: HashMap<i64, u64> = killed.iter().copied().collect();
    let mut uncertain_of: HashMap<i64, u64> = HashMap::new();
    for r in rows.iter().filter(|r| r.state == "uncertain") {
        let runner = r.runner.unwrap_or(-1);
        assert!(
            killed_ids.contains_key(&runner),
            "row {} is uncertain ({}) but runner {runner} was never killed",
            r.id,
            r.error_code
        );
        assert!(
            r.error_code == "runner_lost" || r.error_code == "interrupted",
            "row {} is uncertain with {:?}",
            r.id,
            r.error_code
        );
        *uncertain_of.entry(runner).or_insert(0) += 1;
    }
    for (id, stranded) in &killed {
        let uncertain = uncertain_of.get(id).copied().unwrap_or(0);
        assert_eq!(
            uncertain, *stranded,
            "runner {id}: the rows it stranded `sending` are the ones left uncertain"
        );
        assert!(
            uncertain <= claim_batch + D1_CONCURRENCY as u64,
            "runner {id} left {uncertain} uncertain: more than a claim batch ({claim_batch}) plus concurrency ({D1_CONCURRENCY})"
        );
    }

    // The rate, from the sandbox's acceptance times (ms resolution).
    let mut times: Vec<DateTime<Utc>> = messages.iter().map(received_at).collect();
    times.sort();
    let first = times[0];
    let last = *times.last().expect("messages");
    let mut per_second: BTreeMap<i64, u64> = BTreeMap::new();
    for t in &times {
        *per_second
            .entry((*t - first).num_milliseconds() / 1000)
            .or_insert(0) += 1;
    }
    // The shared pace is a real guarantee: whole seconds after the first
    // (which may hold a runner's first block, reserved before the others'),
    // never more than the rate plus 5 % (the runners' clocks each see the
    // database's slots a round trip late, and the sandbox stamps messages
    // when its handler runs).
    let ceiling = D1_RATE * 1.05;
    let over: Vec<_> = per_second
        .iter()
        .filter(|(s, n)| **s >= 1 && **n as f64 > ceiling)
        .collect();
    // A sliding window is reported, not asserted: a pause of the sandbox's
    // own threads on a loaded machine stamps a few ms of messages at once.
    let mut sliding_max = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= chrono::TimeDelta::seconds(1) {
            lo += 1;
        }
        if times[lo] - first >= chrono::TimeDelta::seconds(1) {
            sliding_max = sliding_max.max(hi - lo + 1);
        }
    }
    let span = (last - first).num_milliseconds() as f64 / 1000.0;
    let average = times.len() as f64 / span;
    let stats = sandbox.stats();
    eprintln!(
        "drill 1: planned {D1_RECIPIENTS} rows in {:.1} s; drained in {:.1} s; {} messages over {span:.1} s = {average:.1}/s; \
         busiest whole second {} (sliding 1 s window {sliding_max}); 429s {}; uncertain {uncertain_of:?}; \
         per second {:?}; drill {:.1} s",
        planned_in.as_secs_f64(),
        drained_in.as_secs_f64(),
        times.len(),
        per_second
            .iter()
            .filter(|(s, _)| **s >= 1)
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0),
        stats.rate_limited,
        per_second.values().collect::<Vec<_>>(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        over.is_empty(),
        "seconds (from the first message) above {ceiling}/s: {over:?}"
    );
    // The average may not sag either. A killed runner's downtime does not
    // excuse a lower one: the pace is one row in the database that every
    // runner reserves from, so while C is dead (and while its successor
    // starts) A and B take every slot — each has concurrency 16 against a
    // sandbox answering in about a millisecond, several times what 300/s
    // needs. What a kill legitimately costs is the rest of the one slot
    // block C had reserved (at most 50 ms of the rate) and the rows it
    // stranded (never sent, at most 48): well under 1 % for two kills. So
    // the whole run, first message to last, kills included, must average
    // at least 95 % of the rate.
    assert!(
        average >= 0.95 * D1_RATE,
        "the campaign averaged {average:.1}/s over {span:.1} s, under 95 % of {D1_RATE}/s"
    );
}

// ---------------------------------------------------------------------------
// Drill 2: SIGSTOP past the lease

const D2_RECIPIENTS: usize = 1_500;
const D2_RATE: f64 = 300.0;
const D2_CONCURRENCY: usize = 8;
const D2_LEASE: &str = "4s";

#[test]
fn a_runner_stopped_past_its_lease_sends_nothing_more_and_exits_lease_lost() {
    let Some(server) = test_pg_url() else {
        return;
    };
    let _one_at_a_time = serial();
    let started = Instant::now();
    let mut rng = seeded_rng("drill 2");
    let db = TestDatabase::create(&server);
    let sql = Psql::new(&db.url);
    // Answers take 150 ms, so the stopped runner nearly always has requests
    // in flight whose answers it reads only after SIGCONT (late outcomes);
    // the drill checks that it had some. (This caps each runner at about
    // 50/s: the rate is not this drill's subject.)
    let sandbox = TestSandbox::start(SandboxConfig {
        rate: 0.0,
        latency: Duration::from_millis(150),
        ..SandboxConfig::default()
    });
    // The default 30 s request timeout: a shorter one would race the late
    // answers on SIGCONT (the monotonic clock ran on while it was stopped).
    let dir = drill_campaign(D2_CONCURRENCY, D2_RATE, D2_RECIPIENTS);
    plan(&sandbox, &dir, &db.url);

    // Each runner with a ledger of its own, as on three machines: runners on
    // one machine share its ledger (SQLite), and one stopped while it holds
    // the ledger's write lock stops the others on that machine with
    // "database is locked" (see the report), which is not this drill's
    // subject.
    let ledgers = tempfile::tempdir().expect("tempdir");
    let own = |name: &str| ledgers.path().join(format!("{name}.ledger.db"));
    let runners = Runners::new(&sandbox, &dir, &db.url, D2_LEASE);
    let spawn = |name: &str| runners.spawn_with_ledger(name, &own(name));
    let mut a = spawn("A");
    let mut b = spawn("B");
    let mut c = spawn("C");
    let c_id = sql.runner_of(c.pid(), Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(rng.random_range(1_000..3_000)));
    let deadline = Instant::now() + Duration::from_secs(20);
    while sql.sending_of(c_id) == 0 {
        assert!(c.try_status().is_none(), "C ended early\n{}", c.output());
        assert!(
            Instant::now() < deadline,
            "C held no row `sending` for 20 s"
        );
    }
    signal(&c, "STOP");
    let stopped_at = Utc::now();
    let holding = sql.sending_of(c_id);
    assert!(holding > 0, "C was stopped holding no row `sending`");
    let pending_at_stop = sql.states().get("pending").copied().unwrap_or(0);
    assert!(
        pending_at_stop > 0,
        "C was stopped after the list was drained"
    );

    // The others finish the list, and one of them declares C dead.
    for r in [&mut a, &mut b] {
        let status = r.wait(Duration::from_secs(120));
        assert_eq!(status.code(), Some(0), "{}", r.output());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while sql.value(&format!(
        "SELECT state FROM convers8.runners WHERE id = {c_id}"
    )) != "dead"
    {
        assert!(
            Instant::now() < deadline,
            "runner {c_id} was never declared dead"
        );
        // A and B have ended: a rerun's start is what rescues now.
        sql.wait_leases_expired(Duration::from_secs(30));
        let mut rescuer = spawn("rescuer");
        rescuer.wait(Duration::from_secs(60));
    }
    assert_eq!(
        sql.states().get("pending").copied().unwrap_or(0),
        0,
        "the others sent C's share"
    );

    // What the world looks like before C wakes up.
    let before = recipients(&sql);
    let c_phones: HashSet<String> = before
        .iter()
        .filter(|r| r.runner == Some(c_id))
        .map(|r| r.phone.clone())
        .collect();
    let in_flight: Vec<&Row> = before
        .iter()
        .filter(|r| r.runner == Some(c_id) && r.state == "uncertain")
        .collect();
    assert_eq!(
        in_flight.len() as u64,
        holding,
        "every row C held `sending` was rescued as uncertain"
    );
    assert!(
        in_flight.iter().all(|r| r.error_code == "runner_lost"),
        "rescued rows say runner_lost"
    );
    let delivered_unanswered: HashSet<String> = sandbox
        .messages()
        .iter()
        .filter(|m| in_flight.iter().any(|r| r.phone == m.to))
        .map(|m| m.to.clone())
        .collect();
    assert!(
        !delivered_unanswered.is_empty(),
        "C must be stopped with requests in flight (delivered, answers unread)"
    );
    let from_c_before = sandbox
        .messages()
        .iter()
        .filter(|m| c_phones.contains(&m.to))
        .count();

    let continued_at = Utc::now();
    signal(&c, "CONT");
    let status = c.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "C after SIGCONT\n{}", c.output());
    assert!(!c.stderr_text().contains("panicked"), "{}", c.output());

    // It sent nothing more: no message to any row it had claimed arrived
    // after the continue.
    let messages = sandbox.messages();
    let late: Vec<_> = messages
        .iter()
        .filter(|m| c_phones.contains(&m.to) && received_at(m) >= continued_at)
        .map(|m| (m.to.clone(), m.received_at.clone()))
        .collect();
    assert!(late.is_empty(), "C sent after SIGCONT: {late:?}");
    let from_c_after = messages.iter().filter(|m| c_phones.contains(&m.to)).count();
    assert_eq!(from_c_before, from_c_after, "C sent after SIGCONT");
    assert_nobody_twice(&sandbox);

    // Its late outcomes changed only its own rows: every other row is as it
    // was before C woke, and C's rows moved only from uncertain
    // (runner_lost) to sent, for messages the sandbox did deliver, or back
    // to pending, for rows it gave back before any request left for them.
    let after = recipients(&sql);
    assert_eq!(before.len(), after.len());
    let delivered: HashSet<&String> = messages.iter().map(|m| &m.to).collect();
    let mut upgraded = 0;
    let mut given_back = 0;
    for (was, now) in before.iter().zip(&after) {
        if was.runner != Some(c_id) {
            assert_eq!(was, now, "a row of another runner changed after C woke");
            continue;
        }
        if was == now {
            continue;
        }
        assert!(
            was.state == "uncertain" && was.error_code == "runner_lost",
            "C's row changed from {was:?} to {now:?}"
        );
        assert_eq!(was.token, now.token);
        if now.state == "pending" {
            assert_eq!(was.attempts, now.attempts, "given back without a request");
            assert!(
                !delivered.contains(&now.phone),
                "row {} went back to pending though the sandbox has its message",
                now.id
            );
            given_back += 1;
            continue;
        }
        assert_eq!(now.state, "sent", "C's row changed from {was:?} to {now:?}");
        assert!(
            delivered_unanswered.contains(&now.phone),
            "row {} became sent but the sandbox never delivered it before C woke",
            now.id
        );
        upgraded += 1;
    }
    // The rows C gave back are sent by the next run, once each.
    final_rerun(&sandbox, &dir, &sql, D2_LEASE);
    let messages = sandbox.messages();
    assert_nobody_twice(&sandbox);
    let after = recipients(&sql);
    assert_rows_match_sandbox(&after, &messages);
    let states = sql.states();
    assert_eq!(
        states.get("pending").copied().unwrap_or(0) + states.get("sending").copied().unwrap_or(0),
        0,
        "{states:?}"
    );
    eprintln!(
        "drill 2: C (runner {c_id}) stopped at {stopped_at} holding {holding} rows `sending` ({} delivered, answers unread), \
         continued at {continued_at}: {upgraded} late outcomes upgraded its rows, {given_back} rows it never sent went back to pending; {states:?}; drill {:.1} s",
        delivered_unanswered.len(),
        started.elapsed().as_secs_f64()
    );
    // The late answers were waiting in C's sockets: each one it read upgrades
    // its row (a timeout cannot win the race with the default 30 s).
    assert_eq!(
        upgraded,
        delivered_unanswered.len(),
        "every answer C read late upgraded its own row"
    );
    // Last, so that every check above has run when it fails: the summary
    // says why the runner stopped.
    assert_eq!(
        c.end().as_deref(),
        Some("lease_lost"),
        "C's --json summary\n{}",
        c.output()
    );
}

// ---------------------------------------------------------------------------
// Drill 3: the server restarts under the runners

const D3_RECIPIENTS: usize = 3_000;
const D3_RATE: f64 = 300.0;
const D3_CONCURRENCY: usize = 8;
const D3_LEASE: &str = "6s";

/// A throw-away cluster of the drill's own (`scripts/pg-throwaway`),
/// stopped and removed when dropped.
struct Cluster {
    dir: PathBuf,
    script: PathBuf,
    url: String,
}

impl Cluster {
    fn start() -> Option<Cluster> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-throwaway");
        let bindir = Command::new(&script).arg("bindir").output().ok()?;
        if !bindir.status.success() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI must provide the PostgreSQL server binaries"
            );
            eprintln!("skipped: no PostgreSQL server binaries for a throw-away cluster");
            return None;
        }
        // Short: the unix socket's path must fit in sun_path.
        let dir = std::env::temp_dir().join(format!("c8drill-{:08x}", rand::random::<u32>()));
        let mut cluster = Cluster {
            dir,
            script,
            url: String::new(),
        };
        let out = Command::new(&cluster.script)
            .arg("start")
            .arg(&cluster.dir)
            .output()
            .expect("pg-throwaway runs");
        assert!(
            out.status.success(),
            "pg-throwaway start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.url = std::fs::read_to_string(cluster.dir.join("url"))
            .expect("the cluster's url")
            .trim()
            .to_owned();
        Some(cluster)
    }

    fn bindir(&self) -> PathBuf {
        let out = Command::new(&self.script)
            .arg("bindir")
            .output()
            .expect("pg-throwaway bindir");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    }

    /// `pg_ctl restart -m immediate`, as the cluster's owner.
    fn restart_immediate(&self) -> Duration {
        let pg_ctl = self.bindir().join("pg_ctl");
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            Command::new(&pg_ctl)
        };
        cmd.arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-m", "immediate", "-w", "-t", "60", "restart"])
            .current_dir("/")
            .stdout(Stdio::null());
        let started = Instant::now();
        let out = cmd.output().expect("pg_ctl runs");
        assert!(
            out.status.success(),
            "pg_ctl restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        started.elapsed()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn the_server_restarting_mid_run_stops_or_resumes_runners_cleanly_and_nobody_twice() {
    // Needs the server binaries as well; the configured server's presence
    // says whether PostgreSQL drills are wanted at all.
    if test_pg_url().is_none() {
        return;
    }
    let _one_at_a_time = serial();
    let started = Instant::now();
    let mut rng = seeded_rng("drill 3");
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let sql = Psql::new(&cluster.url);
    // Diagnosis only (see the module's notes).
    if std::env::var("PG_DRILL_SYNC").is_ok() {
        sql.rows("ALTER SYSTEM SET synchronous_commit = on");
        sql.rows("SELECT pg_reload_conf()");
        eprintln!(
            "synchronous_commit {}",
            sql.value("SHOW synchronous_commit")
        );
    }
    let sandbox = TestSandbox::start(SandboxConfig {
        rate: 0.0,
        latency: Duration::from_millis(10),
        ..SandboxConfig::default()
    });
    let dir = drill_campaign(D3_CONCURRENCY, D3_RATE, D3_RECIPIENTS);
    let claim_batch = convers8_campaign::engine::default_claim_batch(D3_CONCURRENCY) as u64;
    plan(&sandbox, &dir, &cluster.url);
    let before_start = sql.value("SELECT pg_postmaster_start_time()");

    let spawner = Runners::new(&sandbox, &dir, &cluster.url, D3_LEASE);
    let mut runners: Vec<Proc> = ["A", "B", "C"].iter().map(|n| spawner.spawn(n)).collect();
    std::thread::sleep(Duration::from_millis(rng.random_range(1_500..4_000)));
    let deadline = Instant::now() + Duration::from_secs(20);
    while sql.count("SELECT count(*) FROM convers8.recipients WHERE state = 'sending'") == 0 {
        assert!(Instant::now() < deadline, "no row `sending` for 20 s");
    }
    let states_before = sql.states();
    let messages_before = sandbox.messages().len();
    let took = cluster.restart_immediate();
    let restarted_at = Instant::now();
    assert_ne!(
        sql.value("SELECT pg_postmaster_start_time()"),
        before_start,
        "the server restarted"
    );
    assert!(
        states_before.get("pending").copied().unwrap_or(0) > 0 && messages_before > 0,
        "the restart must land mid-run: {states_before:?}, {messages_before} messages"
    );

    let mut ends = Vec::new();
    for r in &mut runners {
        let status = r.wait(Duration::from_secs(120));
        let code = status.code();
        let end = r.end();
        let stderr = r.stderr_text();
        assert!(!stderr.contains("panicked"), "{}", r.output());
        assert!(
            code == Some(0) || code == Some(1),
            "{} exited {code:?}\n{}",
            r.name(),
            r.output()
        );
        // Exit 0 only when it completed; exit 1 only for a claim or commit
        // the restart broke in the middle, said so in the summary. Never for
        // its lease: a restart far shorter than a third of a lease is
        // bridged by the heartbeat retrying at once, not a lease later.
        match code {
            Some(0) => assert_eq!(end.as_deref(), Some("completed"), "{}", r.output()),
            _ => assert!(
                matches!(end.as_deref(), Some("state_failed" | "error")),
                "{} exited 1 with end {end:?}\n{}",
                r.name(),
                r.output()
            ),
        }
        eprintln!("drill 3: {} exited {code:?}\n{}", r.name(), r.output());
        ends.push((r.name().to_owned(), code, end));
    }
    let runners_done_after = restarted_at.elapsed();
    let messages_after = sandbox.messages().len();
    final_rerun(&sandbox, &dir, &sql, D3_LEASE);

    assert_nobody_twice(&sandbox);
    let states = sql.states();
    assert_eq!(states.values().sum::<u64>(), D3_RECIPIENTS as u64);
    assert_eq!(
        states.get("pending").copied().unwrap_or(0) + states.get("sending").copied().unwrap_or(0),
        0,
        "a rerun finished every row: {states:?}"
    );
    let rows = recipients(&sql);
    assert_rows_match_sandbox(&rows, &sandbox.messages());
    // What the restart can cost: the rows each runner held `sending` when its
    // connection broke.
    let uncertain = states.get("uncertain").copied().unwrap_or(0);
    assert!(
        uncertain <= 3 * (claim_batch + D3_CONCURRENCY as u64),
        "{uncertain} rows uncertain after one restart: {states:?}"
    );
    for r in rows.iter().filter(|r| r.state == "uncertain") {
        assert!(
            r.error_code == "runner_lost" || r.error_code == "interrupted",
            "row {} uncertain with {:?}",
            r.id,
            r.error_code
        );
    }
    eprintln!(
        "drill 3: restart took {:.1} s with {states_before:?} and {messages_before} messages; runners ended {ends:?} \
         {:.1} s later, {messages_after} messages; after the rerun {states:?} ({} messages); drill {:.1} s",
        took.as_secs_f64(),
        runners_done_after.as_secs_f64(),
        sandbox.messages().len(),
        started.elapsed().as_secs_f64()
    );
}
