//! Shared test harness: a sandbox running on its own runtime, campaign folders
//! in temporary directories, and the real binary pointed at the sandbox.
//! Every address is 127.0.0.1.
#![allow(dead_code)]

pub mod pg;
pub mod process;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use convers8_campaign::sandbox::{RecordedMessage, Sandbox, SandboxConfig, SandboxStats};
use convers8_campaign::state::{Counts, StateDb, StateRead};

pub const KEY: &str = "test-key-7f3a";

/// A sandbox served from a private runtime, so tests can stay synchronous and
/// drive the binary with `std::process::Command`.
pub struct TestSandbox {
    runtime: tokio::runtime::Runtime,
    sandbox: Option<Sandbox>,
}

impl TestSandbox {
    pub fn start(config: SandboxConfig) -> TestSandbox {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime");
        let sandbox = runtime
            .block_on(Sandbox::start(
                SandboxConfig {
                    api_key: KEY.into(),
                    ..config
                },
                "127.0.0.1:0".parse().expect("addr"),
            ))
            .expect("sandbox starts");
        TestSandbox {
            runtime,
            sandbox: Some(sandbox),
        }
    }

    /// A fast, unlimited, fault-free sandbox.
    pub fn unlimited() -> TestSandbox {
        TestSandbox::start(SandboxConfig {
            rate: 0.0,
            ..SandboxConfig::default()
        })
    }

    /// An unlimited sandbox that answers every request after `latency_ms`:
    /// slow enough for a test to act while a run is under way.
    pub fn slow(latency_ms: u64) -> TestSandbox {
        TestSandbox::start(SandboxConfig {
            rate: 0.0,
            latency: std::time::Duration::from_millis(latency_ms),
            ..SandboxConfig::default()
        })
    }

    fn inner(&self) -> &Sandbox {
        self.sandbox.as_ref().expect("sandbox running")
    }

    pub fn base_url(&self) -> String {
        self.inner().base_url()
    }

    pub fn messages(&self) -> Vec<RecordedMessage> {
        self.inner().messages()
    }

    pub fn stats(&self) -> SandboxStats {
        self.inner().stats()
    }

    /// Writes every accepted message to the `--log` file before returning.
    pub fn flush_log(&self) {
        self.inner().state().flush_log();
    }

    /// Waits until the sandbox has accepted at least `n` messages (a run is
    /// under way); panics after 20 seconds.
    pub fn wait_for_messages(&self, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.messages().len() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "the sandbox accepted fewer than {n} messages in 20 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// How many messages each phone received.
    pub fn per_phone(&self) -> std::collections::HashMap<String, usize> {
        let mut map = std::collections::HashMap::new();
        for m in self.messages() {
            *map.entry(m.to).or_insert(0) += 1;
        }
        map
    }
}

impl Drop for TestSandbox {
    fn drop(&mut self) {
        if let Some(sandbox) = self.sandbox.take() {
            self.runtime.block_on(sandbox.shutdown());
        }
    }
}

/// A campaign folder: `campaign.toml` and `recipients.csv` in a temp dir.
pub struct CampaignDir {
    pub dir: tempfile::TempDir,
}

impl CampaignDir {
    pub fn new(toml: &str, csv: &str) -> CampaignDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("campaign.toml"), toml).expect("write toml");
        std::fs::write(dir.path().join("recipients.csv"), csv).expect("write csv");
        CampaignDir { dir }
    }

    pub fn toml(&self) -> PathBuf {
        self.dir.path().join("campaign.toml")
    }

    pub fn csv(&self) -> PathBuf {
        self.dir.path().join("recipients.csv")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("campaign.state.db")
    }

    pub fn counts(&self) -> Counts {
        StateDb::open_read_only(&self.state())
            .expect("state opens")
            .counts()
            .expect("counts")
    }
}

/// A text campaign with the given `[send]` lines.
pub fn text_campaign(send: &str, text: &str) -> String {
    format!(
        r#"[campaign]
name = "test"

[recipients]
csv = "recipients.csv"
default_country = "KE"

[send]
{send}

[message]
type = "text"
[message.content]
text = "{text}"
"#
    )
}

/// `n` distinct valid Kenyan numbers with names.
pub fn kenyan_csv(n: usize) -> String {
    let mut csv = String::from("phone,name\n");
    for i in 0..n {
        csv.push_str(&format!("+2547{:08},Person {i}\n", 10_000_000 + i));
    }
    csv
}

/// The real binary, aimed at the sandbox with the test key.
pub fn bin(sandbox: &TestSandbox) -> Command {
    let mut cmd = bare_bin();
    cmd.env("CONVERS8_API_KEY", KEY)
        .env("CONVERS8_BASE_URL", sandbox.base_url());
    cmd
}

/// The real binary with no key or base URL from this environment, and a
/// ledger of this test process's own (see [`test_ledger`]).
pub fn bare_bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_convers8-campaign"));
    cmd.env_remove("CONVERS8_API_KEY")
        .env_remove("CONVERS8_BASE_URL")
        .env_remove("RUST_LOG")
        .env("CONVERS8_LEDGER", test_ledger());
    cmd
}

/// The ledger every binary a test starts uses unless the test names its
/// own: a temporary file, so no test ever reads or writes the real user's
/// ledger (`~/.local/state/...`). One per test (by the test's thread, which
/// the harness names after it): the ledger remembers every campaign, and
/// tests that each run a campaign called "test" from their own state must
/// not see one another's messages, daily limits or opt-outs.
pub fn test_ledger() -> PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("ledger tempdir"));
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "_");
    dir.path().join(format!("{test}.ledger.db"))
}

/// Starts `run` on the campaign in the background, its output discarded.
pub fn spawn_run(sandbox: &TestSandbox, dir: &CampaignDir) -> std::process::Child {
    bin(sandbox)
        .arg("run")
        .arg(dir.toml())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the run starts")
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("binary runs");
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn path_arg(p: &Path) -> &std::ffi::OsStr {
    p.as_os_str()
}
