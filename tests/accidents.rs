//! Trust under accidents: the promise (nobody messaged twice, nobody lost,
//! the counts right) kept under the ordinary mishaps of operations — a
//! second path to the same state, a state file deleted mid-run, a full log
//! disk, a `timeout` in a cron line, a retry refused, an edit before the
//! first send. Each test runs the real binary against a sandbox on loopback
//! and names the accident it pins.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use convers8_campaign::sandbox::SandboxConfig;

/// Waits for `child` to exit; kills it and fails after `limit` (a safety
/// net for a hung process, far above what any of these runs needs).
fn wait_exit(mut child: Child, limit: Duration) -> Output {
    let started = Instant::now();
    while child.try_wait().expect("poll").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the run did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// A background `run` with its output captured.
fn spawn_captured(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the run starts")
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

// ---------------------------------------------------------------------------
// 1. The lock belongs to the state, not to a spelling of its path.

#[cfg(unix)]
#[test]
fn every_path_to_a_state_reaches_the_same_lock() {
    // Regression: the lock was `<path>.lock`, so a symlink, a hard link or
    // another spelling of the path took a second lock and sent beside the first.
    let sandbox = TestSandbox::slow(200);
    let dir = CampaignDir::new(&text_campaign("concurrency = 1", "Hi"), &kenyan_csv(60));
    let mut first = spawn_run(&sandbox, &dir);
    sandbox.wait_for_messages(1);

    let root = dir.dir.path();
    std::os::unix::fs::symlink(dir.state(), root.join("link.db")).expect("symlink");
    std::fs::hard_link(dir.state(), root.join("hard.db")).expect("hard link");
    std::fs::create_dir(root.join("x")).expect("mkdir");
    let spellings = [
        root.join("link.db"),
        root.join("hard.db"),
        root.join("x/../campaign.state.db"),
        "./campaign.state.db".into(),
    ];
    for state in &spellings {
        let out = bin(&sandbox)
            .current_dir(root)
            .arg("run")
            .arg(dir.toml())
            .arg("--state")
            .arg(state)
            .output()
            .expect("second run");
        assert_eq!(
            out.status.code(),
            Some(75),
            "{}: {}",
            state.display(),
            stderr(&out)
        );
        let text = stderr(&out);
        assert!(text.contains(&format!("pid {}", first.id())), "{text}");
    }
    // Deleting a file named like the old lock file lets nobody in either.
    let _ = std::fs::remove_file(root.join("campaign.state.db.lock"));
    let out = bin(&sandbox)
        .arg("run")
        .arg(dir.toml())
        .output()
        .expect("third run");
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));

    let _ = first.kill();
    let _ = first.wait();
    assert!(sandbox.per_phone().values().all(|&n| n == 1));
}

#[cfg(unix)]
#[test]
fn a_planted_symlink_is_never_written_through() {
    // Regression: `ln -s victim.conf campaign.state.db.lock` and a run
    // truncated and overwrote victim.conf — from a root cron job, any file.
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(3));
    let root = dir.dir.path();
    let victim = root.join("victim.conf");
    std::fs::write(&victim, "precious = true\n").expect("victim");
    std::os::unix::fs::symlink(&victim, root.join("campaign.state.db.lock")).expect("symlink");
    run_ok(bare_bin().args(["run", "--dry-run"]).arg(dir.toml()));
    assert_eq!(
        std::fs::read_to_string(&victim).expect("read"),
        "precious = true\n"
    );

    // SQLite's companions are refused when they are links: it would write through them.
    let other = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(3));
    let wal = other.dir.path().join("campaign.state.db-wal");
    std::os::unix::fs::symlink(&victim, &wal).expect("symlink");
    let out = bare_bin()
        .args(["run", "--dry-run"])
        .arg(other.toml())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stderr(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("campaign.state.db-wal") && text.contains("symbolic link"));
    assert_eq!(
        std::fs::read_to_string(&victim).expect("read"),
        "precious = true\n"
    );
    assert!(!other.state().exists(), "nothing was created");

    // A state path that is not a regular file is refused in one line.
    let out = bare_bin()
        .args(["run", "--dry-run"])
        .arg(other.toml())
        .arg("--state")
        .arg(root)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("a folder"), "{}", stderr(&out));
}

#[cfg(unix)]
#[test]
fn a_state_reached_by_another_name_after_a_crash_is_refused_not_planned_again() {
    // Regression: SQLite keeps a crashed run's latest claims and sends in a
    // log named after the path it used; through a hard link, or after a
    // rename, the state looked unplanned and everyone was messaged again.
    let sandbox = TestSandbox::slow(20);
    let dir = CampaignDir::new(&text_campaign("concurrency = 4", "Hi"), &kenyan_csv(300));
    let mut child = spawn_run(&sandbox, &dir);
    sandbox.wait_for_messages(30);
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let root = dir.dir.path();
    let wal = root.join("campaign.state.db-wal");
    assert!(
        std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0),
        "the crash left its latest changes in the log"
    );

    let hard = root.join("hard.db");
    std::fs::hard_link(dir.state(), &hard).expect("hard link");
    for args in [&["run"][..], &["status"]] {
        let out = bin(&sandbox)
            .args(args)
            .arg(dir.toml())
            .arg("--state")
            .arg(&hard)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("hard links"), "{}", stderr(&out));
    }
    std::fs::remove_file(&hard).expect("rm link");

    let renamed = root.join("renamed.db");
    std::fs::rename(dir.state(), &renamed).expect("mv");
    let out = bin(&sandbox)
        .arg("run")
        .arg(dir.toml())
        .arg("--state")
        .arg(&renamed)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("campaign.state.db-wal") && stderr(&out).contains("move it back"),
        "{}",
        stderr(&out)
    );
    // Put back where its log is, the campaign finishes; nobody twice.
    std::fs::rename(&renamed, dir.state()).expect("mv back");
    run_ok(bin(&sandbox).arg("run").arg(dir.toml()));
    assert!(
        sandbox.per_phone().values().all(|&n| n == 1),
        "messaged twice"
    );
    let counts = dir.counts();
    assert_eq!(counts.sent + counts.uncertain, 300, "{counts:?}");
}

#[cfg(unix)]
#[test]
fn a_state_path_leading_to_another_programs_database_is_left_untouched() {
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(3));
    let other = dir.dir.path().join("accounts.db");
    {
        let conn = rusqlite::Connection::open(&other).expect("other db");
        conn.execute_batch("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)")
            .expect("create");
    }
    let before = std::fs::read(&other).expect("read");
    std::os::unix::fs::symlink(&other, dir.state()).expect("symlink");
    let out = bare_bin()
        .args(["run", "--dry-run"])
        .arg(dir.toml())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a state file"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(&other).expect("read"),
        before,
        "not a byte changed"
    );
    assert!(!dir.dir.path().join("accounts.db-wal").exists());
}

// ---------------------------------------------------------------------------
// 2. A run notices when its state file is gone or replaced.

/// Starts a slow 400-row run, lets it send, does `accident` to its state
/// file, and returns the run's output and the sandbox's count at that moment.
fn accident_mid_run(
    sandbox: &TestSandbox,
    dir: &CampaignDir,
    accident: impl FnOnce(&Path),
) -> (Output, usize) {
    // Each accident is a new campaign dir of one test: each its own ledger.
    let child = spawn_captured(
        bin(sandbox)
            .env("CONVERS8_LEDGER", dir.dir.path().join("ledger.db"))
            .arg("run")
            .arg(dir.toml()),
    );
    sandbox.wait_for_messages(20);
    accident(&dir.state());
    let at_accident = sandbox.messages().len();
    (wait_exit(child, Duration::from_secs(60)), at_accident)
}

const CONCURRENCY: usize = 4;

fn assert_stopped_at_once(sandbox: &TestSandbox, at_accident: usize) {
    let after = sandbox.messages().len() - at_accident;
    let bound = convers8_campaign::engine::default_claim_batch(CONCURRENCY) + CONCURRENCY;
    assert!(
        after <= bound,
        "{after} messages left after the state was taken away (at most {bound})"
    );
}

#[test]
fn a_deleted_state_file_stops_the_run_and_its_copy_resumes_it() {
    // Regression: the run went on into the deleted file, printed
    // "completed" and exited 0; the next run planned again and messaged
    // everyone a second time.
    let sandbox = TestSandbox::slow(20);
    let dir = CampaignDir::new(
        &text_campaign(&format!("concurrency = {CONCURRENCY}"), "Hi"),
        &kenyan_csv(400),
    );
    let (out, at_accident) = accident_mid_run(&sandbox, &dir, |state| {
        std::fs::remove_file(state).expect("rm state");
    });
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!stdout(&out).contains("completed"), "{}", stdout(&out));
    let text = stderr(&out);
    let last = text.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{text}");
    assert!(last.contains("was deleted or moved"), "{last}");
    assert!(last.contains("stopped claiming at once"), "{last}");
    assert_stopped_at_once(&sandbox, at_accident);

    // What the run knew is saved, owner-only; put back, it finishes the job
    // and nobody is messaged twice.
    let copy = std::fs::read_dir(dir.dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().contains(".rescued-"))
        .expect("a rescued copy of the state");
    assert!(last.contains(&copy.display().to_string()), "{last}");
    #[cfg(unix)]
    assert_eq!(mode(&copy), 0o600);
    std::fs::rename(&copy, dir.state()).expect("put it back");
    run_ok(bin(&sandbox).arg("run").arg(dir.toml()));
    let counts = dir.counts();
    assert_eq!(counts.total(), 400);
    assert_eq!(
        counts.pending + counts.sending + counts.failed,
        0,
        "{counts:?}"
    );
    let per_phone = sandbox.per_phone();
    assert!(per_phone.values().all(|&n| n == 1), "messaged twice");
    // Nobody lost: every row is sent (and the sandbox has it) or uncertain.
    assert_eq!(counts.sent + counts.uncertain, 400, "{counts:?}");
    assert!(per_phone.len() as u64 >= counts.sent);
}

#[test]
fn a_moved_or_replaced_state_file_stops_the_run() {
    for (what, accident) in [
        (
            "was deleted or moved",
            Box::new(|state: &Path| {
                std::fs::rename(state, state.with_extension("moved")).expect("mv")
            }) as Box<dyn FnOnce(&Path)>,
        ),
        (
            "was replaced by another file",
            Box::new(|state: &Path| {
                let other = state.with_extension("other");
                std::fs::copy(state, &other).expect("cp");
                std::fs::rename(&other, state).expect("mv over");
            }),
        ),
    ] {
        let sandbox = TestSandbox::slow(20);
        let dir = CampaignDir::new(
            &text_campaign(&format!("concurrency = {CONCURRENCY}"), "Hi"),
            &kenyan_csv(400),
        );
        let (out, at_accident) = accident_mid_run(&sandbox, &dir, accident);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(&out));
        assert!(!stdout(&out).contains("completed"), "{}", stdout(&out));
        assert!(stderr(&out).contains(what), "{what}: {}", stderr(&out));
        assert_stopped_at_once(&sandbox, at_accident);
    }
}

// ---------------------------------------------------------------------------
// 3. Files that must not be overwritten.

#[cfg(unix)]
#[test]
fn report_refuses_to_overwrite_the_state_and_the_inputs() {
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(3));
    run_ok(bin(&sandbox).arg("run").arg(dir.toml()));
    let root = dir.dir.path();
    std::os::unix::fs::symlink(dir.state(), root.join("alias.db")).expect("symlink");
    let before = std::fs::read(dir.state()).expect("state");
    let protected = [
        dir.state(),
        root.join("alias.db"),
        root.join("campaign.state.db-wal"),
        root.join("campaign.state.db-shm"),
        root.join("campaign.state.db.lock"),
        dir.toml(),
        dir.csv(),
        root.join("sub/../recipients.csv"),
    ];
    std::fs::create_dir(root.join("sub")).expect("mkdir");
    for target in &protected {
        let out = bare_bin()
            .arg("report")
            .arg(dir.toml())
            .arg("-o")
            .arg(target)
            .output()
            .expect("report");
        assert_eq!(out.status.code(), Some(1), "{}", target.display());
        let text = stderr(&out);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("would overwrite"), "{text}");
    }
    assert_eq!(std::fs::read(dir.state()).expect("state"), before);
    assert_eq!(dir.counts().sent, 3);
    // Any other file is fine.
    run_ok(
        bare_bin()
            .arg("report")
            .arg(dir.toml())
            .arg("-o")
            .arg(root.join("report.csv")),
    );
}

#[test]
fn an_empty_file_at_the_state_path_is_refused_not_taken_for_a_new_state() {
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(3));
    std::fs::write(dir.state(), b"").expect("empty file");
    for args in [&["run"][..], &["run", "--dry-run"], &["status"]] {
        let out = bin(&sandbox)
            .args(args)
            .arg(dir.toml())
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("empty (0 bytes)"), "{}", stderr(&out));
        assert_eq!(std::fs::metadata(dir.state()).expect("state").len(), 0);
    }
    assert!(sandbox.messages().is_empty());
}

// ---------------------------------------------------------------------------
// 4. Output failures never stop a send.

#[cfg(target_os = "linux")]
#[test]
fn a_full_log_disk_does_not_stop_a_send() {
    // Regression: `eprintln!` panicked on the first progress line (exit 101)
    // and left the claimed rows `sending`, to be called uncertain although
    // they were never sent.
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(50));
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let out = bin(&sandbox)
        .env("RUST_LOG", "debug")
        .arg("run")
        .arg(dir.toml())
        .stderr(full)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0));
    let counts = dir.counts();
    assert_eq!((counts.sent, counts.sending, counts.uncertain), (50, 0, 0));
}

#[cfg(unix)]
#[test]
fn a_closed_pipe_does_not_stop_a_send() {
    // `run … 2>&1 | head -1`: the reader is gone before the first line.
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(50));
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let stdout_writer = writer.try_clone().expect("clone");
    let status = bin(&sandbox)
        .env("RUST_LOG", "info")
        .arg("run")
        .arg(dir.toml())
        .stdout(stdout_writer)
        .stderr(writer)
        .status()
        .expect("runs");
    assert_eq!(status.code(), Some(0));
    let counts = dir.counts();
    assert_eq!((counts.sent, counts.sending, counts.uncertain), (50, 0, 0));
}

#[cfg(unix)]
#[test]
fn a_stalled_stderr_does_not_stall_a_send() {
    // Regression: with a reader that stopped reading (a paused terminal, a
    // stuck log pipe) progress and log writes blocked, and the send with them.
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(300));
    let (reader, writer) = std::io::pipe().expect("pipe");
    let child = bin(&sandbox)
        // Trace-level logs fill the pipe's buffer long before the list is done.
        .env("RUST_LOG", "trace")
        .arg("run")
        .arg(dir.toml())
        .stdout(Stdio::null())
        .stderr(writer)
        .spawn()
        .expect("runs");
    let out = wait_exit(child, Duration::from_secs(120));
    drop(reader);
    assert_eq!(out.status.code(), Some(0));
    let counts = dir.counts();
    assert_eq!((counts.sent, counts.sending, counts.uncertain), (300, 0, 0));
}

// ---------------------------------------------------------------------------
// 6. Signals as schedulers send them.

#[cfg(unix)]
#[test]
fn timeout_s_int_gives_the_graceful_stop() {
    // GNU timeout signals the command, then its whole process group: two
    // SIGINTs at once. Regression: the second one "quit at once", leaving
    // the rows in flight `sending`, to become uncertain.
    if Command::new("timeout").arg("--version").output().is_err() {
        eprintln!("skipped: GNU timeout is not installed");
        return;
    }
    let sandbox = TestSandbox::slow(300);
    let dir = CampaignDir::new(&text_campaign("concurrency = 4", "Hi"), &kenyan_csv(200));
    run_ok(bin(&sandbox).args(["run", "--dry-run"]).arg(dir.toml()));
    let out = Command::new("timeout")
        .args(["--preserve-status", "-s", "INT", "5"])
        .arg(env!("CARGO_BIN_EXE_convers8-campaign"))
        .arg("run")
        .arg(dir.toml())
        .env("CONVERS8_API_KEY", KEY)
        .env("CONVERS8_BASE_URL", sandbox.base_url())
        .env("CONVERS8_LEDGER", test_ledger())
        .output()
        .expect("timeout runs");
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("quitting at once"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("to continue:"), "{}", stdout(&out));
    let counts = dir.counts();
    assert_eq!(counts.sending + counts.uncertain, 0, "{counts:?}");
    assert!(counts.sent > 0);
    assert_eq!(counts.sent, sandbox.messages().len() as u64);
}

#[cfg(unix)]
#[test]
fn two_signals_close_together_are_one_request() {
    // A wrapper that forwards the signal it got while the group gets it too,
    // or a scheduler that sends SIGINT then SIGTERM: the same request.
    let sandbox = TestSandbox::slow(300);
    let dir = CampaignDir::new(&text_campaign("concurrency = 4", "Hi"), &kenyan_csv(200));
    run_ok(bin(&sandbox).args(["run", "--dry-run"]).arg(dir.toml()));
    let child = spawn_captured(bin(&sandbox).arg("run").arg(dir.toml()));
    sandbox.wait_for_messages(4);
    signal(&child, "INT");
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, "TERM");
    let out = wait_exit(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("quitting at once"),
        "{}",
        stderr(&out)
    );
    let counts = dir.counts();
    assert_eq!(counts.sending + counts.uncertain, 0, "{counts:?}");
    assert_eq!(counts.sent, sandbox.messages().len() as u64);
}

#[cfg(unix)]
#[test]
fn a_second_signal_after_a_second_quits_at_once() {
    let sandbox = TestSandbox::slow(20_000);
    let dir = CampaignDir::new(&text_campaign("concurrency = 2", "Hi"), &kenyan_csv(10));
    run_ok(bin(&sandbox).args(["run", "--dry-run"]).arg(dir.toml()));
    let child = spawn_captured(bin(&sandbox).arg("run").arg(dir.toml()));
    // Both requests are on the wire (the sandbox holds them for 20 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    while dir.counts().sending < 2 {
        assert!(Instant::now() < deadline, "the run never claimed");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, "INT");
    // Well past the one second in which a repeat counts as the same request,
    // even if the first signal is heard late on a loaded machine.
    std::thread::sleep(Duration::from_secs(3));
    signal(&child, "TERM");
    let out = wait_exit(child, Duration::from_secs(15));
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("quitting at once"),
        "{}",
        stderr(&out)
    );
    // The two requests in flight may have been delivered: not resent.
    let out = run_ok(bin(&sandbox).args(["run", "--dry-run"]).arg(dir.toml()));
    assert!(
        stderr(&out).contains("2 rows were being sent"),
        "{}",
        stderr(&out)
    );
    assert_eq!(dir.counts().uncertain, 2);
}

// ---------------------------------------------------------------------------
// 7. A refused retry changes nothing.

/// A campaign whose two rows ended `uncertain` (answers that came too late).
fn campaign_with_uncertain_rows() -> CampaignDir {
    let slow = TestSandbox::start(SandboxConfig {
        rate: 0.0,
        slow_rate: 1.0,
        slow: Duration::from_secs(3),
        ..SandboxConfig::default()
    });
    let dir = CampaignDir::new(&text_campaign("timeout_secs = 1", "Hi"), &kenyan_csv(2));
    run_ok(bin(&slow).arg("run").arg(dir.toml()));
    assert_eq!(dir.counts().uncertain, 2);
    dir
}

#[test]
fn retry_outside_the_window_changes_nothing() {
    // Regression: `retry --uncertain --yes` exited 75 outside the window but
    // had already put the rows back to pending, so the next plain `run`
    // resent them without anyone deciding it.
    let dir = campaign_with_uncertain_rows();
    let healthy = TestSandbox::unlimited();
    let plain = std::fs::read_to_string(dir.toml()).expect("toml");
    let now = chrono::Utc::now();
    use chrono::Timelike;
    let closed = plain.replace(
        "[send]\ntimeout_secs = 1",
        &format!(
            "[send]\ntimeout_secs = 1\nwindow = {{ start = \"{:02}:00\", end = \"{:02}:00\", timezone = \"UTC\" }}",
            (now.hour() + 2) % 24,
            (now.hour() + 3) % 24
        ),
    );
    assert_ne!(closed, plain);
    std::fs::write(dir.toml(), &closed).expect("toml");
    let out = bin(&healthy)
        .args(["retry", "--uncertain", "--yes"])
        .arg(dir.toml())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert_eq!(dir.counts().uncertain, 2, "a refused retry changes nothing");

    std::fs::write(dir.toml(), &plain).expect("toml");
    let out = run_ok(bin(&healthy).arg("run").arg(dir.toml()));
    assert!(
        stdout(&out).contains("nothing left to send"),
        "{}",
        stdout(&out)
    );
    assert!(
        healthy.messages().is_empty(),
        "nobody resent without a decision"
    );
}

#[test]
fn rows_selected_for_resend_that_a_run_does_not_reach_keep_their_state() {
    // Regression: `--resend-uncertain --limit 1` put every uncertain row back
    // to pending; the next plain `run` resent the rest without being asked.
    let dir = campaign_with_uncertain_rows();
    let healthy = TestSandbox::unlimited();
    run_ok(
        bin(&healthy)
            .args(["run", "--resend-uncertain", "--limit", "1"])
            .arg(dir.toml()),
    );
    let counts = dir.counts();
    assert_eq!((counts.sent, counts.uncertain, counts.pending), (1, 1, 0));
    let out = run_ok(bin(&healthy).arg("run").arg(dir.toml()));
    assert!(
        stdout(&out).contains("nothing left to send"),
        "{}",
        stdout(&out)
    );
    assert_eq!(healthy.messages().len(), 1);
}

// ---------------------------------------------------------------------------
// 8. A plan is not frozen before anything was sent.

#[test]
fn an_edit_after_a_dry_run_is_planned_again() {
    let sandbox = TestSandbox::unlimited();
    let dir = CampaignDir::new(&text_campaign("", "Helo {{name}}"), &kenyan_csv(3));
    run_ok(bare_bin().args(["run", "--dry-run"]).arg(dir.toml()));
    // The operator spots the typo and adds a recipient before the real run.
    let fixed = std::fs::read_to_string(dir.toml())
        .expect("toml")
        .replace("Helo", "Hello");
    std::fs::write(dir.toml(), fixed).expect("toml");
    std::fs::write(dir.csv(), kenyan_csv(4)).expect("csv");
    let out = run_ok(bin(&sandbox).arg("run").arg(dir.toml()));
    assert!(
        stderr(&out).contains("nothing has been sent")
            && stderr(&out).contains("planning it again"),
        "{}",
        stderr(&out)
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
    assert_eq!(texts.len(), 4);
    assert!(texts.iter().all(|t| t.starts_with("Hello ")), "{texts:?}");
    assert_eq!(dir.counts().total(), 4);
}

#[test]
fn run_without_a_key_fails_before_planning() {
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
    assert!(!dir.state().exists(), "nothing planned, no state created");
}

// ---------------------------------------------------------------------------
// 14. The key never crosses a network in clear text.

#[test]
fn plain_http_to_another_host_is_refused_before_anything_happens() {
    let dir = CampaignDir::new(&text_campaign("", "Hi"), &kenyan_csv(3));
    // 192.0.2.0/24 is reserved for documentation: never contacted here.
    let out = bare_bin()
        .env("CONVERS8_API_KEY", KEY)
        .args(["run", "--base-url", "http://192.0.2.7:8080"])
        .arg(dir.toml())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("http://192.0.2.7:8080") && text.contains("--allow-insecure-http"),
        "{text}"
    );
    assert!(!text.contains(KEY));
    assert!(!dir.state().exists(), "refused before planning");
    // The flag lets it through (a dry run stops before the network).
    run_ok(
        bare_bin()
            .env("CONVERS8_API_KEY", KEY)
            .args(["run", "--dry-run", "--allow-insecure-http"])
            .args(["--base-url", "http://192.0.2.7:8080"])
            .arg(dir.toml()),
    );
}

#[test]
fn a_campaign_file_that_sends_the_key_elsewhere_is_named() {
    let toml = text_campaign("", "Hi").replace(
        "[message]",
        "[api]\nbase_url = \"https://collector.example\"\n\n[message]",
    );
    let dir = CampaignDir::new(&toml, &kenyan_csv(3));
    let out = run_ok(bare_bin().arg("validate").arg(dir.toml()));
    let text = stdout(&out);
    assert!(
        text.contains("warning:")
            && text.contains(&dir.toml().display().to_string())
            && text.contains("https://collector.example"),
        "{text}"
    );
    let out = run_ok(
        bare_bin()
            .env("CONVERS8_API_KEY", KEY)
            .args(["run", "--dry-run"])
            .arg(dir.toml()),
    );
    assert!(
        stderr(&out).contains("sends the API key to https://collector.example"),
        "{}",
        stderr(&out)
    );
}

// ---------------------------------------------------------------------------
// 10. A gateway that may have forwarded the request.

/// A proxy on 127.0.0.1 that answers every request with its own 502 page;
/// returns its base URL and a counter of the requests it received.
fn bad_gateway() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut reader = BufReader::new(stream);
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            seen.fetch_add(1, Ordering::SeqCst);
            let page = "<html><body><h1>502 Bad Gateway</h1>nginx</body></html>";
            let _ = write!(
                reader.get_mut(),
                "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    (url, count)
}

#[test]
fn a_proxys_502_page_makes_the_row_uncertain_and_it_is_not_resent() {
    // Regression: a 502 from a proxy was retried like a 5xx of the API,
    // though the proxy may have forwarded the message already.
    let (url, requests) = bad_gateway();
    let dir = CampaignDir::new(&text_campaign("max_attempts = 5", "Hi"), &kenyan_csv(3));
    let out = bare_bin()
        .env("CONVERS8_API_KEY", KEY)
        .env("CONVERS8_BASE_URL", &url)
        .arg("run")
        .arg(dir.toml())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let counts = dir.counts();
    assert_eq!((counts.uncertain, counts.sent, counts.failed), (3, 0, 0));
    assert_eq!(
        requests.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "one request per row"
    );
    let report = run_ok(
        bare_bin()
            .args(["report", "--format", "json"])
            .arg(dir.toml()),
    );
    assert!(
        stdout(&report).contains("gateway_error"),
        "{}",
        stdout(&report)
    );
}
