//! The documented exit codes, in one place.
//!
//! When several apply, the first of this order wins: 130 interrupted, 1
//! error, 3 rows failed (`--fail-on`), 75 try later, 0.

/// Bad input, a rejected key, the circuit breaker, any error.
pub const ERROR: u8 = 1;
/// A command line clap could not parse.
pub const USAGE: u8 = 2;
/// `--fail-on failed,uncertain`: this run left rows in one of those states.
pub const ROWS_FAILED: u8 = 3;
/// Try later (EX_TEMPFAIL): the lock is held, outside the send window, daily limit.
pub const TRY_LATER: u8 = 75;
/// Interrupted by SIGINT/SIGTERM.
pub const INTERRUPTED: u8 = 130;

/// The exit codes of `run` and `retry` in words, for `--help` (a macro, so
/// `concat!` can put it after a command's examples); every line fits 80 columns.
macro_rules! table {
    () => {
        "\
Exit codes:
  0    done; also nothing left to do, --dry-run, --limit, --max-runtime
       reached, the send window closed mid-run
  1    error: bad input, key rejected, circuit breaker, unwritable state
  2    usage: the command line could not be parsed
  3    with --fail-on: this run left rows failed or uncertain
  75   try later: lock held, outside the send window, daily limit reached
  130  interrupted (SIGINT/SIGTERM)
When several apply: 130, then 1, then 3, then 75."
    };
}
pub(crate) use table;
