//! The documented exit codes, in one place.

/// Bad input, a rejected key, the circuit breaker, any error.
pub const ERROR: u8 = 1;
/// A command line clap could not parse.
pub const USAGE: u8 = 2;
/// Try later (EX_TEMPFAIL): the lock is held, outside the send window, daily limit.
pub const TRY_LATER: u8 = 75;
/// Interrupted by SIGINT/SIGTERM.
pub const INTERRUPTED: u8 = 130;
