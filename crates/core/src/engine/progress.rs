//! Telling the operator how a run is going: a live bar on a terminal, a plain
//! line every few seconds in a log (cron), or a callback for library users.
//!
//! The engine calls a [`Progress`] with snapshots; it never writes to the
//! terminal itself. Nothing here affects what is sent.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where a run stands, as the engine saw it at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Snapshot {
    /// Rows this run set out to send (pending at start, capped by `--limit`).
    pub to_send: u64,
    pub sent: u64,
    pub failed: u64,
    pub uncertain: u64,
    /// Rows given back as pending (the run stopped before they were sent).
    pub released: u64,
    pub elapsed: Duration,
    /// Settled rows per second over the last few seconds.
    pub per_second: f64,
    /// The shared pace's current rate; `None` when unpaced.
    pub pace: Option<f64>,
    pub rate_limited: u64,
}

impl Snapshot {
    pub fn settled(&self) -> u64 {
        self.sent + self.failed + self.uncertain
    }

    /// Estimated time to finish at the current speed.
    pub fn eta(&self) -> Option<Duration> {
        let left = self.to_send.saturating_sub(self.settled() + self.released);
        (self.per_second > 0.0).then(|| Duration::from_secs_f64(left as f64 / self.per_second))
    }
}

/// Receives a run's progress. Every method has a do-nothing default.
pub trait Progress: Send + Sync {
    /// Sending starts.
    fn begin(&self, _to_send: u64) {}
    /// Called a few times a second while sending.
    fn tick(&self, _snapshot: &Snapshot) {}
    /// A line for the operator ("planning…", "waiting for the window…").
    fn note(&self, _line: &str) {}
    /// Sending ended; `snapshot` is final.
    fn end(&self, _snapshot: &Snapshot) {}
}

/// Reports nothing.
pub struct Silent;
impl Progress for Silent {}

/// Calls a closure with every snapshot.
pub struct Callback<F>(pub F);
impl<F: Fn(&Snapshot) + Send + Sync> Progress for Callback<F> {
    fn tick(&self, snapshot: &Snapshot) {
        (self.0)(snapshot)
    }
    fn end(&self, snapshot: &Snapshot) {
        (self.0)(snapshot)
    }
}

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

/// `1h02m`, `3m05s`, `42s`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_counts_what_is_left() {
        let s = Snapshot {
            to_send: 100,
            sent: 40,
            failed: 10,
            per_second: 10.0,
            ..Snapshot::default()
        };
        assert_eq!(s.eta(), Some(Duration::from_secs(5)));
        assert_eq!(format_duration(Duration::from_secs(3725)), "1h02m");
        assert_eq!(format_duration(Duration::from_secs(185)), "3m05s");
    }
}
