//! What the operator sees while a run sends: a live bar on a terminal, a
//! plain line every few seconds elsewhere (a log file, cron mail). Both are
//! [`Progress`] receivers of the engine's events; neither affects what is
//! sent, and neither panics on a write that fails.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use convers8_campaign::engine::progress::{Progress, Snapshot, format_duration};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar on a terminal, plain lines elsewhere: the CLI's choice.
pub fn for_stderr() -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(Bar::new())
    } else {
        Box::new(LogLines::new(Duration::from_secs(5)))
    }
}

/// An `indicatif` bar: sent, failed, messages/s, ETA.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    pub fn new() -> Bar {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        Bar { bar }
    }
}

impl Default for Bar {
    fn default() -> Self {
        Bar::new()
    }
}

impl Progress for Bar {
    fn begin(&self, to_send: u64) {
        self.bar.set_length(to_send);
        self.bar.enable_steady_tick(Duration::from_millis(200));
    }
    fn tick(&self, s: &Snapshot) {
        self.bar.set_position(s.settled());
        self.bar.set_message(describe(s));
    }
    fn note(&self, line: &str) {
        self.bar.suspend(|| stderr_line(line));
    }
    fn end(&self, s: &Snapshot) {
        self.bar.set_position(s.settled());
        self.bar.set_message(describe(s));
        self.bar.abandon();
    }
}

/// One plain line every `every`, for logs and cron mail.
pub struct LogLines {
    every: Duration,
    last: Mutex<Option<Instant>>,
}

impl LogLines {
    pub fn new(every: Duration) -> LogLines {
        LogLines {
            every,
            last: Mutex::new(None),
        }
    }
}

impl Progress for LogLines {
    fn begin(&self, to_send: u64) {
        stderr_line(&format!("sending {to_send} messages"));
        // The first progress line comes one interval in, not at zero.
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }
    fn tick(&self, s: &Snapshot) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= self.every);
        if due {
            *last = Some(Instant::now());
            stderr_line(&format!(
                "progress: {}/{} {}",
                s.settled(),
                s.to_send,
                describe(s)
            ));
        }
    }
    fn note(&self, line: &str) {
        stderr_line(line);
    }
}

/// A line on stderr. A failed write (full disk, closed pipe) is dropped:
/// progress is not worth stopping a run for, and `eprintln!` would panic.
fn stderr_line(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn describe(s: &Snapshot) -> String {
    let mut text = format!(
        "sent {} failed {} uncertain {} | {:.1} msg/s",
        s.sent, s.failed, s.uncertain, s.per_second
    );
    if let Some(eta) = s.eta() {
        text.push_str(&format!(" | eta {}", format_duration(eta)));
    }
    if s.rate_limited > 0 {
        text.push_str(&format!(" | 429s {}", s.rate_limited));
    }
    text
}
