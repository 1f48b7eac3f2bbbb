//! A process a test starts in the background, its output in files: a guard
//! that kills it (by its own pid, never by name) and reaps it when dropped
//! unless it already ended, even when the test panics.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

pub struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
    stderr_tail: Option<usize>,
}

impl Proc {
    /// Starts `cmd` as `name` (in messages), its stdout and stderr in new
    /// files `{prefix}-{nonce}.stdout` and `.stderr`.
    pub fn spawn(name: impl Into<String>, cmd: &mut Command, prefix: &Path) -> Proc {
        let nonce = rand::random::<u32>();
        let file = |ext: &str| {
            let mut path = prefix.as_os_str().to_owned();
            path.push(format!("-{nonce:08x}.{ext}"));
            PathBuf::from(path)
        };
        let (stdout, stderr) = (file("stdout"), file("stderr"));
        let child = cmd
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("the process starts");
        Proc {
            name: name.into(),
            child,
            stdout,
            stderr,
            status: None,
            stderr_tail: None,
        }
    }

    /// [`Proc::output`] shows only the last `n` bytes of stderr.
    pub fn stderr_tail(mut self, n: usize) -> Proc {
        self.stderr_tail = Some(n);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has ended (reaped then).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits for it to end; panics, with its output, after `within`.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} (pid {}) still running after {within:?}\n{}",
                self.name,
                self.pid(),
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL to its pid, and reaped.
    pub fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.status = Some(self.child.wait().expect("reap"));
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Its stdout and stderr so far, labelled, for a failure message.
    pub fn output(&self) -> String {
        let stderr = self.stderr_text();
        let stderr = match self.stderr_tail {
            Some(n) => tail(&stderr, n),
            None => &stderr,
        };
        format!(
            "--- {} stdout:\n{}\n--- {} stderr:\n{}",
            self.name,
            self.stdout_text(),
            self.name,
            stderr
        )
    }

    /// The `end` of the `--json` summary (the last JSON line on stdout) a
    /// `run` printed, if it printed one.
    pub fn end(&self) -> Option<String> {
        let text = self.stdout_text();
        let line = text
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))?;
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        value.get("end")?.as_str().map(str::to_owned)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            // SIGKILL (to its own pid) ends a stopped process too.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `n` bytes of `s` (from a character boundary).
fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}
