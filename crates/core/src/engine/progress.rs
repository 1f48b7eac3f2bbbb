//! How a run reports its progress: the events the engine emits (a
//! [`Snapshot`] a few times a second, a note now and then) through the
//! [`Progress`] trait. The engine never writes to a terminal; the command line
//! draws a bar or log lines from these events, a library user passes a
//! [`Callback`] or [`Silent`]. Nothing here affects what is sent.

use std::time::Duration;

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
