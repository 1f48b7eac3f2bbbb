//! `report --format html` end to end: a real campaign sent to the sandbox in
//! three runs (sent rows, rows that failed after two attempts, a row whose
//! answer was lost, an invalid and a duplicate row), the page written
//! owner-only and checked as text, then opened in a real headless browser
//! (Debian's `chromium`): a screenshot, and the DOM as the browser parsed it.
//! Without chromium the browser part is skipped, saying so; under `CI=true`
//! a missing chromium fails the test (`.ci/run` installs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use convers8_campaign::sandbox::SandboxConfig;

/// Text a campaign manager typed, which the page must show as text.
const NAME: &str = "<script>alert(1)</script> & friends";
const NAME_ESCAPED: &str = "&lt;script&gt;alert(1)&lt;/script&gt; &amp; friends";

fn campaign() -> String {
    format!(
        r#"[campaign]
name = "{NAME}"

[recipients]
csv = "recipients.csv"
default_country = "KE"

[send]
concurrency = 4

[message]
type = "text"
[message.content]
text = "Hi {{{{name}}}}"
"#
    )
}

/// 34 valid rows, then an invalid phone and a duplicate of the first row.
fn recipients() -> String {
    let mut csv = kenyan_csv(34);
    csv.push_str("12345,Short Number\n");
    csv.push_str("+254710000000,Same As Row 1\n");
    csv
}

#[test]
fn the_html_report_is_a_private_self_contained_page_a_browser_renders() {
    let dir = CampaignDir::new(&campaign(), &recipients());
    // Run 1: 30 sent, first time.
    let good = TestSandbox::unlimited();
    run_ok(bin(&good).args(["run", "--limit", "30"]).arg(dir.toml()));
    // Run 2: a server that fails every request: 3 rows fail after 2 attempts.
    let failing = TestSandbox::start(SandboxConfig {
        rate: 0.0,
        fail_rate: 1.0,
        ..SandboxConfig::default()
    });
    run_ok(
        bin(&failing)
            .args(["run", "--limit", "3", "--max-attempts", "2"])
            .arg(dir.toml()),
    );
    // Run 3: a server that closes the connection without answering: the last
    // row may have been delivered.
    let dropping = TestSandbox::start(SandboxConfig {
        rate: 0.0,
        drop_rate: 1.0,
        ..SandboxConfig::default()
    });
    run_ok(bin(&dropping).arg("run").arg(dir.toml()));
    let counts = dir.counts();
    assert_eq!(
        (
            counts.sent,
            counts.failed,
            counts.uncertain,
            counts.invalid,
            counts.duplicate,
            counts.pending
        ),
        (30, 3, 1, 1, 1, 0),
        "{counts:?}"
    );

    let page_path = dir.dir.path().join("r.html");
    let out = run_ok(
        bare_bin()
            .args(["report", "--format", "html", "-o"])
            .arg(&page_path)
            .arg(dir.toml()),
    );
    assert!(
        stderr(&out).contains("wrote the HTML report on 36 recipients"),
        "{}",
        stderr(&out)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&page_path)
            .expect("the page")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "written like every report: owner only");
    }
    let page = std::fs::read_to_string(&page_path).expect("the page");
    check_page_text(&page);

    // Without -o, the same page on stdout.
    let out = run_ok(
        bare_bin()
            .args(["report", "--format", "html"])
            .arg(dir.toml()),
    );
    let printed = stdout(&out);
    assert!(printed.starts_with("<!DOCTYPE html>"), "{printed}");
    assert!(printed.contains(NAME_ESCAPED) && printed.contains("<svg"));
    // A state filter means nothing to a page of aggregates: refused.
    let out = bare_bin()
        .args(["report", "--format", "html", "--state-filter", "failed"])
        .arg(dir.toml())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("--state-filter does not apply to --format html"));

    // Never over the state or the campaign's inputs, however it is spelled.
    let state_before = std::fs::read(dir.state()).expect("the state");
    for target in [
        dir.state(),
        dir.csv(),
        dir.dir.path().join(".").join("campaign.toml"),
    ] {
        let out = bare_bin()
            .args(["report", "--format", "html", "-o"])
            .arg(&target)
            .arg(dir.toml())
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("refusing to write the report"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(std::fs::read(dir.state()).expect("the state"), state_before);
    assert_eq!(
        std::fs::read_to_string(dir.csv()).expect("csv"),
        recipients()
    );

    render_in_browser(&page_path);
}

/// What the page must hold, and what it must not reach for.
fn check_page_text(page: &str) {
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    // The name is text, never markup.
    assert!(page.contains(&format!("<h1>{NAME_ESCAPED}</h1>")), "{page}");
    assert!(!page.contains("<script"), "{page}");
    // Self-contained: nothing to fetch, nowhere to go.
    for reference in [
        "http://", "https://", "<link", "<img", "<iframe", "src=", "url(", "@import",
    ] {
        assert!(!page.contains(reference), "{reference} in the page");
    }
    // The counts per state, their total and the CSV's rows.
    for (state, n) in [
        ("sent", 30),
        ("failed", 3),
        ("uncertain", 1),
        ("pending", 0),
        ("sending", 0),
        ("invalid", 1),
        ("duplicate", 1),
    ] {
        assert!(
            page.contains(&format!("{state}</td><td class=\"n\">{n}</td>")),
            "{state} {n}"
        );
    }
    assert!(page.contains("total</td><td class=\"n\">36</td>"));
    assert!(page.contains("the states add up to the CSV's 36 data rows"));
    // The chart of sends.
    assert!(page.contains("<svg") && page.contains("</svg>"));
    assert!(page.contains("<rect"));
    assert!(
        page.contains("messages per second"),
        "a run of seconds: {page}"
    );
    // Attempts: 30 sent at the first attempt, 3 failed after two.
    assert!(
        page.contains(
            "<tr><td>1</td><td class=\"n\">30</td><td class=\"n\">0</td><td class=\"n\">1</td>"
        ),
        "{page}"
    );
    assert!(page.contains("<tr><td>2</td><td class=\"n\">0</td><td class=\"n\">3</td>"));
    // Error codes with their meanings.
    for code in ["internal_error", "no_answer", "invalid_phone", "duplicate"] {
        assert!(page.contains(&format!("<code>{code}</code>")), "{code}");
    }
    assert!(page.contains("may have been delivered"));
    // Three runs, each with its outcome.
    for run in ["#1", "#2", "#3"] {
        assert!(page.contains(&format!(">{run}</td>")), "{run}");
    }
    assert!(page.contains("completed"));
    // Aggregates only: no phone number, no name.
    assert!(!page.contains("+2547"), "a phone in the page");
    assert!(
        !page.contains("12345"),
        "the invalid row's phone in the page"
    );
    assert!(!page.contains("Person "), "a name in the page");
    assert!(page.contains("can be mailed"));
}

/// The chromium binary, if this machine has one: on the PATH (as `.ci/run`
/// looks for it) or where Debian puts it.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|p| p.is_file())
}

fn render_in_browser(page: &Path) {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium must be installed in CI (apt-get install chromium)"
        );
        eprintln!(
            "skipped: chromium is not installed (apt-get install chromium); the page was checked as text only"
        );
        return;
    };
    let url = format!(
        "file://{}",
        std::fs::canonicalize(page).expect("the page").display()
    );
    let work = tempfile::tempdir().expect("tempdir");

    // A screenshot at a laptop's width.
    let png = work.path().join("report.png");
    let run = Browser::run(
        &chromium,
        work.path(),
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1200,1600".to_owned(),
            url.clone(),
        ],
    );
    let bytes = std::fs::read(&png)
        .unwrap_or_else(|e| panic!("no screenshot at {} ({e}); {}", png.display(), run.log));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let width = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let height = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    assert!(
        width >= 1200 && height >= 1600,
        "a {width}x{height} screenshot"
    );
    // A blank 1200x1600 page compresses to a few kilobytes; text, tables
    // and a chart make it much larger.
    assert!(
        bytes.len() > 40_000,
        "a {}-byte screenshot looks empty",
        bytes.len()
    );

    // The DOM as the browser parsed it: the SVG survived, no script appeared.
    let run = Browser::run(&chromium, work.path(), &["--dump-dom".to_owned(), url]);
    let dom = run.stdout;
    assert!(
        dom.contains("<svg"),
        "no SVG in the parsed page: {}",
        run.log
    );
    assert!(dom.contains("</svg>") && dom.contains("<rect"));
    assert!(dom.contains(NAME_ESCAPED), "the name as text: {dom}");
    assert!(!dom.contains("<script"), "{dom}");
}

/// One chromium run in its own process group, with its own profile and
/// home, stopped whole after it exits (or after a minute).
struct Browser {
    stdout: String,
    log: String,
}

impl Browser {
    fn run(chromium: &Path, work: &Path, args: &[String]) -> Browser {
        use std::os::unix::process::CommandExt;
        let profile = tempfile::tempdir_in(work).expect("profile dir");
        let out_path = profile.path().join("stdout");
        let err_path = profile.path().join("stderr");
        let mut child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(args)
            // Nothing of the browser's lands in the real home, and its crash
            // handler's command line names the profile, so it can be found.
            .env("HOME", profile.path())
            .env("XDG_CONFIG_HOME", profile.path())
            .env("XDG_CACHE_HOME", profile.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("stderr file"))
            .process_group(0)
            .spawn()
            .expect("chromium starts");
        let ours = Ours {
            group: child.id(),
            profile: profile.path().to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for chromium") {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Its helpers (zygote, renderer, GPU, the crash handler in a session
        // of its own) leave with it: give them a moment, then stop any that
        // stayed, so the test leaves no process behind.
        let stopped = ours.stop();
        eprintln!("chromium {args:?}: {status:?}; helpers the test had to stop: {stopped}");
        let left = ours.processes();
        assert!(left.is_empty(), "chromium processes survived: {left:?}");
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        let log = format!(
            "chromium {status:?}; helpers the test had to stop: {stopped}; its stderr:\n{}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
        assert!(
            status.is_some_and(|s| s.success()),
            "chromium did not finish well within a minute: {log}"
        );
        Browser { stdout, log }
    }
}

/// The processes one browser run started: its process group, and those
/// whose command line names its private profile folder (the crash handler
/// starts a session of its own).
struct Ours {
    group: u32,
    profile: PathBuf,
}

impl Ours {
    /// The live ones, from /proc; zombies have exited and only wait for
    /// their parent.
    fn processes(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let profile = self.profile.to_string_lossy().into_owned();
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    return false;
                };
                // After the command name in parentheses: state, ppid, pgrp.
                let Some((_, rest)) = stat.rsplit_once(')') else {
                    return false;
                };
                let fields: Vec<&str> = rest.split_whitespace().collect();
                if fields.first() == Some(&"Z") {
                    return false;
                }
                if fields.get(2) == Some(&self.group.to_string().as_str()) {
                    return true;
                }
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains(&profile))
            })
            .collect()
    }

    /// Waits up to 5 s for them to leave, then kills each that stayed, by
    /// its id; returns how many had to be killed.
    fn stop(&self) -> usize {
        let wait_until_gone = |secs| {
            let deadline = Instant::now() + Duration::from_secs(secs);
            while !self.processes().is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        wait_until_gone(5);
        let left = self.processes();
        if !left.is_empty() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(left.iter().map(u32::to_string))
                .status();
            wait_until_gone(5);
        }
        left.len()
    }
}
