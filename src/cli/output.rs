//! Writing to the terminal without ever stopping a command over it.
//!
//! `println!` and `eprintln!` panic when the write fails — a full disk
//! behind `2>>run.log`, a pipe whose reader left (`| head -1`) — and a panic
//! mid-run leaves rows `sending` that the next run must call `uncertain`
//! although they were never sent. Every line the command line writes goes
//! through here instead, and a failed write is dropped: what matters is
//! recorded in the state, not on the terminal.

use std::fmt;
use std::io::Write;

/// Writes one line to stderr; a failure to write is ignored.
pub fn stderr_line(args: fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// Writes one line to stdout; a failure to write is ignored.
pub fn stdout_line(args: fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stdout().lock(), "{args}");
}

/// `eprintln!` that never panics.
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
