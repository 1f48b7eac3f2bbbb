//! What the operator sees while a run sends: a live bar on a terminal, a
//! line every few seconds elsewhere (a log file, cron mail) — with an RFC 3339
//! timestamp in front, or as a JSON object with `--log-format json` (see
//! [`super::output`]). Both are [`Progress`] receivers of the engine's
//! events; neither affects what is sent, and neither panics on a write that
//! fails.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use convers8_campaign::engine::progress::{Progress, Snapshot, format_duration};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use unicode_width::UnicodeWidthStr;

use super::output::{self, Style, plural};

/// The target of progress events in JSON.
pub const TARGET: &str = "convers8_campaign::progress";

/// The bar on a terminal, timestamped or JSON lines elsewhere: the CLI's choice.
pub fn for_stderr() -> Box<dyn Progress> {
    match output::style() {
        Style::Terminal => Box::new(Bar::new()),
        Style::Plain | Style::Json => Box::new(LogLines::new(Duration::from_secs(5))),
    }
}

/// The bar's line: spinner, elapsed time, the bar, then [`bar_message`].
/// The counts live only in the message, so each number appears once.
const BAR_TEMPLATE: &str = "{spinner} {elapsed_precise} {wide_bar} {msg}";
/// Columns the template takes besides the bar and the message: the spinner
/// and a space, `HH:MM:SS` and a space, the space before the message.
const BAR_FIXED: usize = 2 + 9 + 1;
/// The narrowest the bar itself may get before the message gives up detail.
const BAR_MIN: usize = 10;
/// The width the line is laid out for when the terminal's is unknown or
/// narrower: everything fits 80 columns with 6-digit counts.
const LINE_WIDTH: usize = 80;

/// An `indicatif` bar: sent of the total, failures, messages/s, ETA.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    pub fn new() -> Bar {
        // Drawn through the stderr queue, so a paused terminal pauses no send.
        Bar::with_target(ProgressDrawTarget::term_like(Box::new(
            super::stderr::QueueTerm,
        )))
    }

    fn with_target(target: ProgressDrawTarget) -> Bar {
        let bar = ProgressBar::with_draw_target(Some(0), target);
        let style = ProgressStyle::with_template(BAR_TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        Bar { bar }
    }

    fn show(&self, s: &Snapshot) {
        self.bar.set_position(s.settled());
        self.bar
            .set_message(bar_message(s, message_budget(terminal_width())));
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
        self.show(s);
    }
    fn note(&self, line: &str) {
        self.bar.suspend(|| output::stderr_raw(line));
    }
    fn end(&self, s: &Snapshot) {
        self.show(s);
        self.bar.abandon();
        // indicatif leaves the cursor at the end of the bar's line: the
        // summary that follows (on stdout) starts on a line of its own.
        if !self.bar.is_hidden() {
            output::stderr_raw("");
        }
    }
}

/// The terminal's width, when stderr is one.
fn terminal_width() -> Option<usize> {
    terminal_size::terminal_size_of(std::io::stderr()).map(|(w, _)| usize::from(w.0))
}

/// The columns left for the message on a terminal `width` wide (80 when unknown).
fn message_budget(width: Option<usize>) -> usize {
    width
        .unwrap_or(LINE_WIDTH)
        .max(LINE_WIDTH)
        .saturating_sub(BAR_FIXED + BAR_MIN)
}

/// `123456/999999 sent, 12 failed, 3 uncertain, 250.0 msg/s, eta 3m05s, 40 rate-limited`:
/// each number once. Failed and uncertain appear when there are some; the
/// speed, the ETA and the rate-limited count are dropped, last first, when
/// the message would be wider than `budget` columns.
pub fn bar_message(s: &Snapshot, budget: usize) -> String {
    let mut parts = vec![format!("{}/{} sent", s.sent, s.to_send)];
    if s.failed > 0 {
        parts.push(format!("{} failed", s.failed));
    }
    if s.uncertain > 0 {
        parts.push(format!("{} uncertain", s.uncertain));
    }
    let kept = parts.len();
    parts.push(format!("{:.1} msg/s", s.per_second));
    let left = s.to_send.saturating_sub(s.settled() + s.released);
    if let Some(eta) = s.eta().filter(|_| left > 0) {
        parts.push(format!("eta {}", format_duration(eta)));
    }
    if s.rate_limited > 0 {
        parts.push(format!("{} rate-limited", s.rate_limited));
    }
    let mut text = parts.join(", ");
    while parts.len() > kept && text.width() > budget {
        parts.pop();
        text = parts.join(", ");
    }
    text
}

/// `3/5 sent, 1 failed, 1 given back in 12.3s (4.1 msg/s)`: the last numbers.
fn ended_message(s: &Snapshot) -> String {
    let mut parts = vec![format!("{}/{} sent", s.sent, s.to_send)];
    if s.failed > 0 {
        parts.push(format!("{} failed", s.failed));
    }
    if s.uncertain > 0 {
        parts.push(format!("{} uncertain", s.uncertain));
    }
    if s.released > 0 {
        parts.push(format!("{} given back as pending", s.released));
    }
    format!(
        "{} in {:.1}s ({:.1} msg/s)",
        parts.join(", "),
        s.elapsed.as_secs_f64(),
        s.per_second
    )
}

/// A line every `every`, for logs and cron mail.
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

/// A snapshot's numbers, as the fields of a JSON progress event.
fn snapshot_fields(s: &Snapshot) -> serde_json::Map<String, serde_json::Value> {
    let mut fields = serde_json::Map::new();
    fields.insert("to_send".into(), s.to_send.into());
    fields.insert("settled".into(), s.settled().into());
    fields.insert("sent".into(), s.sent.into());
    fields.insert("failed".into(), s.failed.into());
    fields.insert("uncertain".into(), s.uncertain.into());
    fields.insert("released".into(), s.released.into());
    fields.insert("rate_limited".into(), s.rate_limited.into());
    fields.insert(
        "per_second".into(),
        ((s.per_second * 10.0).round() / 10.0).into(),
    );
    fields.insert("elapsed_secs".into(), s.elapsed.as_secs().into());
    if let Some(eta) = s.eta() {
        fields.insert("eta_secs".into(), eta.as_secs().into());
    }
    fields
}

impl Progress for LogLines {
    fn begin(&self, to_send: u64) {
        output::event(
            TARGET,
            &format!("sending {}", plural(to_send, "message")),
            || {
                let mut fields = serde_json::Map::new();
                fields.insert("to_send".into(), to_send.into());
                fields
            },
        );
        // The first progress line comes one interval in, not at zero.
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }
    fn tick(&self, s: &Snapshot) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= self.every);
        if due {
            *last = Some(Instant::now());
            output::event(
                TARGET,
                &format!("progress: {}", bar_message(s, usize::MAX)),
                || snapshot_fields(s),
            );
        }
    }
    fn note(&self, line: &str) {
        output::event(output::TARGET, line, serde_json::Map::new);
    }
    fn end(&self, s: &Snapshot) {
        // The last numbers, for a log whose reader does not get the summary.
        output::event(
            TARGET,
            &format!("sending ended: {}", ended_message(s)),
            || snapshot_fields(s),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A terminal that remembers what the bar drew.
    #[derive(Debug, Clone)]
    struct Screen {
        width: u16,
        drawn: Arc<Mutex<Vec<String>>>,
    }

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            self.width
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(s)
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            if !s.is_empty() {
                self.drawn.lock().unwrap().push(s.to_owned());
            }
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Six-digit counts everywhere, each number different.
    fn big() -> Snapshot {
        Snapshot {
            to_send: 999_999,
            sent: 123_451,
            failed: 123_452,
            uncertain: 123_453,
            released: 0,
            elapsed: Duration::from_secs(4000),
            per_second: 1234.5,
            pace: Some(1300.0),
            rate_limited: 123_454,
        }
    }

    /// What the real bar draws on a terminal `width` columns wide.
    fn render(s: &Snapshot, width: u16) -> String {
        let screen = Screen {
            width,
            drawn: Arc::default(),
        };
        let bar = Bar::with_target(ProgressDrawTarget::term_like(Box::new(screen.clone())));
        bar.bar.set_length(s.to_send);
        bar.bar.set_position(s.settled());
        bar.bar
            .set_message(bar_message(s, message_budget(Some(usize::from(width)))));
        bar.bar.tick();
        let drawn = screen.drawn.lock().unwrap();
        drawn.last().cloned().expect("the bar drew a line")
    }

    #[test]
    fn the_bar_fits_80_columns_with_six_digit_counts_and_says_each_number_once() {
        let s = big();
        let line = render(&s, 80);
        assert!(!line.contains('\n'), "{line:?}");
        assert!(line.width() <= 80, "{} columns: {line}", line.width());
        for n in ["999999", "123451", "123452", "123453"] {
            assert_eq!(line.matches(n).count(), 1, "{n} in {line}");
        }
        assert!(line.contains("123451/999999 sent"), "{line}");
        assert!(line.contains("123452 failed"), "{line}");
        assert!(line.contains("123453 uncertain"), "{line}");
        // A wide terminal has room for the rest.
        let wide = render(&s, 140);
        assert!(wide.width() <= 140, "{wide}");
        assert!(
            wide.contains("1234.5 msg/s") && wide.contains("123454 rate-limited"),
            "{wide}"
        );
    }

    #[test]
    fn the_bar_message_snapshot() {
        let s = Snapshot {
            to_send: 200,
            sent: 1,
            failed: 0,
            uncertain: 0,
            elapsed: Duration::from_secs(1),
            per_second: 2.0,
            ..Snapshot::default()
        };
        assert_eq!(
            bar_message(&s, message_budget(None)),
            "1/200 sent, 2.0 msg/s, eta 1m39s"
        );
        let line = render(&s, 80);
        assert!(line.width() <= 80, "{line}");
        assert_eq!(line.matches(" 1/200 sent").count(), 1, "{line}");
        // Everything the worst case keeps on 80 columns.
        assert_eq!(
            bar_message(&big(), message_budget(Some(80))),
            "123451/999999 sent, 123452 failed, 123453 uncertain"
        );
        assert!(BAR_FIXED + BAR_MIN + bar_message(&big(), message_budget(None)).width() <= 80);
    }
}
