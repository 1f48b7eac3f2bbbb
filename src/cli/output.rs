//! Writing to the terminal without ever stopping a command over it, and in
//! the shape the reader needs.
//!
//! `println!` and `eprintln!` panic when the write fails — a full disk
//! behind `2>>run.log`, a pipe whose reader left (`| head -1`) — and a panic
//! mid-run leaves rows `sending` that the next run must call `uncertain`
//! although they were never sent. Every line the command line writes goes
//! through here instead, and a failed write is dropped: what matters is
//! recorded in the state, not on the terminal.
//!
//! Lines on stderr take one of three [`Style`]s, chosen once at start:
//! on a terminal they are written as they are (and `run` draws a bar);
//! without one (cron, a log file) each line starts with an RFC 3339 UTC
//! timestamp and holds no escape codes; with `--log-format json` each line
//! is one JSON object in tracing-subscriber's JSON shape, so a log shipper
//! reads the CLI's own lines, its progress and `RUST_LOG` output alike.
//! The one exception is the last line of a failed command, `error: …`: it
//! is the command's verdict, not a log line, and stays greppable as
//! `^error:` (in JSON it is an `ERROR` event like any other line).

use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

/// `--log-format`: how lines on stderr are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    // No doc comments here: clap would list them under every command's help.
    // text: as they are on a terminal; elsewhere an RFC 3339 timestamp in
    // front and no escape codes. json: one object per line (timestamp,
    // level, fields with the message and a progress line's counts, target).
    #[default]
    Text,
    Json,
}

/// How this process writes its stderr lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// stderr is a terminal: lines as they are, a live progress bar.
    Terminal,
    /// No terminal: a timestamp in front of every line, no escape codes.
    Plain,
    /// `--log-format json`: one JSON object per line.
    Json,
}

static STYLE: OnceLock<Style> = OnceLock::new();

/// Chooses the style for the rest of the process (the first call wins).
pub fn init(format: LogFormat) -> Style {
    let chosen = match format {
        LogFormat::Json => Style::Json,
        LogFormat::Text if std::io::stderr().is_terminal() => Style::Terminal,
        LogFormat::Text => Style::Plain,
    };
    *STYLE.get_or_init(|| chosen)
}

/// The style chosen by [`init`]; before it, text judged by the terminal.
pub fn style() -> Style {
    *STYLE.get_or_init(|| {
        if std::io::stderr().is_terminal() {
            Style::Terminal
        } else {
            Style::Plain
        }
    })
}

/// Now, as RFC 3339 in UTC with milliseconds: `2026-05-01T07:00:00.123Z`.
/// The same clock and shape as `RUST_LOG` lines (see [`Rfc3339`]).
pub fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The timer of `RUST_LOG` lines, so they carry the same timestamps as the
/// CLI's own.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rfc3339;

impl tracing_subscriber::fmt::time::FormatTime for Rfc3339 {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> fmt::Result {
        w.write_str(&timestamp())
    }
}

/// A line's level, read from how it starts (`warning:`, `error:`).
fn level_of(line: &str) -> &'static str {
    if line.starts_with("error:") {
        "ERROR"
    } else if line.starts_with("warning:") {
        "WARN"
    } else {
        "INFO"
    }
}

/// The target of the CLI's own lines in JSON.
pub const TARGET: &str = "convers8_campaign::cli";

/// One JSON log line, in tracing-subscriber's JSON shape:
/// `{"timestamp":…,"level":…,"fields":{"message":…,…},"target":…}`.
pub fn json_line(
    level: &str,
    target: &str,
    message: &str,
    fields: serde_json::Map<String, serde_json::Value>,
) -> String {
    let mut all = serde_json::Map::new();
    all.insert("message".into(), message.into());
    all.extend(fields);
    // Written by hand so the timestamp comes first, as tracing writes it.
    format!(
        "{{\"timestamp\":{},\"level\":{},\"fields\":{},\"target\":{}}}",
        serde_json::Value::from(timestamp()),
        serde_json::Value::from(level),
        serde_json::Value::Object(all),
        serde_json::Value::from(target)
    )
}

/// Writes `line` (one line, no newline) to stderr as it is, through the
/// background writer ([`super::stderr`]): never waits, never panics.
pub fn stderr_raw(line: &str) {
    super::stderr::line(line);
}

/// Writes an event to stderr in the process's style: `message` with a
/// timestamp in front (plain), as it is (terminal), or as a JSON object with
/// `fields` (JSON). Progress lines go through here.
pub fn event(
    target: &str,
    message: &str,
    fields: impl FnOnce() -> serde_json::Map<String, serde_json::Value>,
) {
    match style() {
        Style::Terminal => stderr_raw(message),
        Style::Plain => stderr_raw(&format!("{} {message}", timestamp())),
        Style::Json => stderr_raw(&json_line(level_of(message), target, message, fields())),
    }
}

/// Writes one line to stderr in the process's style; a failure to write is ignored.
pub fn stderr_line(args: fmt::Arguments<'_>) {
    let line = args.to_string();
    // Several lines in one call are several log lines, each stamped.
    for part in line.split('\n') {
        event(TARGET, part, serde_json::Map::new);
    }
}

/// The last line of a failed command, `error: …`: as it is (so `^error:`
/// finds it in a log) unless the lines are JSON.
pub fn error_line(message: &str) {
    match style() {
        Style::Terminal | Style::Plain => stderr_raw(&format!("error: {message}")),
        Style::Json => stderr_raw(&json_line(
            "ERROR",
            TARGET,
            &format!("error: {message}"),
            serde_json::Map::new(),
        )),
    }
}

/// Writes one line to stdout; a failure to write is ignored.
pub fn stdout_line(args: fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stdout().lock(), "{args}");
}

/// `eprintln!` that never panics, in the process's [`Style`].
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::output::stderr_line(format_args!($($arg)*))
    };
}

/// `println!` that never panics.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::stdout_line(format_args!($($arg)*))
    };
}

pub(crate) use {out, say};

/// `1 message`, `2 messages`, `0 messages`: a count and its noun (regular
/// plurals only: the noun takes an `s`).
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plural_says_one_and_many() {
        assert_eq!(plural(0, "message"), "0 messages");
        assert_eq!(plural(1, "message"), "1 message");
        assert_eq!(plural(2, "row"), "2 rows");
        assert_eq!(plural(1, "attempt"), "1 attempt");
    }

    #[test]
    fn json_lines_have_tracing_shape() {
        let mut fields = serde_json::Map::new();
        fields.insert("sent".into(), 3.into());
        let line = json_line("INFO", TARGET, "progress", fields);
        assert!(line.starts_with("{\"timestamp\":\""), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["fields"]["message"], "progress");
        assert_eq!(v["fields"]["sent"], 3);
        assert_eq!(v["target"], TARGET);
        let ts = v["timestamp"].as_str().expect("a string");
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
        assert_eq!(level_of("warning: x"), "WARN");
        assert_eq!(level_of("error: x"), "ERROR");
        assert_eq!(level_of("planning"), "INFO");
    }
}
