//! The send window: when, in one time zone, messages may leave — judged
//! by instants, so a DST night neither reopens a closed window nor skips one.
//! Nothing here reads a clock: callers pass the instant to judge.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The hours of the day, in one time zone, during which messages may leave.
///
/// Open from `start` (inclusive) to `end` (exclusive) local time. When `start`
/// is later than `end` the window spans midnight (`22:00`–`06:00`). `end =
/// "00:00"` (or `"24:00"`) means "until midnight". `start == end` is rejected
/// at load because it is ambiguous (never or always).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWindow {
    pub start: NaiveTime,
    pub end: NaiveTime,
    /// The zone the hours are read in. With `per_recipient` it is the
    /// campaign's `fallback_timezone`, used for rows whose zone is unknown.
    pub timezone: Tz,
    /// `timezone = "recipient"`: the hours apply in each recipient's own
    /// zone (see [`SendWindow::in_zone`]); a row's zone is fixed at plan time.
    pub per_recipient: bool,
}

/// "HH:MM" on a 24-hour clock; "24:00" is accepted as midnight at the end of the day.
pub(super) fn parse_hh_mm(s: &str) -> Option<NaiveTime> {
    let s = s.trim();
    if s == "24:00" {
        return Some(NaiveTime::MIN);
    }
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let h: u32 = h.parse().ok()?;
    let m: u32 = m.parse().ok()?;
    NaiveTime::from_hms_opt(h, m, 0)
}

impl SendWindow {
    /// The same hours in `zone`: one recipient's window.
    pub fn in_zone(&self, zone: Tz) -> SendWindow {
        SendWindow {
            timezone: zone,
            per_recipient: false,
            ..*self
        }
    }

    /// The window as instants: each local date D opens one period, from the
    /// first moment the zone's clock reads `start` on D to the first moment
    /// after that it reads `end` (on D, or on D+1 for a window across
    /// midnight). Judging by instants, not by the clock's face, keeps the
    /// window on DST nights: when clocks go back and the end falls in the
    /// repeated hour, the period ends at the *first* pass of the end time
    /// and the repeated hour does not reopen it; a start that does not exist
    /// (clocks go forward) opens at the jump.
    fn period(&self, date: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let opens = self.at_local(date, 0, self.start)?;
        let end_day = if self.end <= self.start { 1 } else { 0 };
        let closes = self.at_local(date, end_day, self.end)?;
        (opens < closes).then_some((opens, closes))
    }

    /// The open period `now` falls in, if any.
    fn period_at(&self, now: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let today = now.with_timezone(&self.timezone).date_naive();
        // Yesterday's period is still open during a window across midnight.
        [today.pred_opt(), Some(today)]
            .into_iter()
            .flatten()
            .filter_map(|date| self.period(date))
            .find(|(opens, closes)| *opens <= now && now < *closes)
    }

    /// Whether messages may leave at `now`.
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        self.period_at(now).is_some()
    }

    /// `now` if the window is open, else the next moment it opens.
    pub fn next_open(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        if self.contains(now) {
            return now;
        }
        let today = now.with_timezone(&self.timezone).date_naive();
        // Today's period may be behind us (closed after the window); then it
        // is tomorrow's. A third day is slack for a night without a period.
        (0..3)
            .filter_map(|days| today.checked_add_days(chrono::Days::new(days)))
            .filter_map(|date| self.period(date))
            .map(|(opens, _)| opens)
            .find(|opens| *opens > now)
            .unwrap_or(now)
    }

    /// When the currently open period ends, or `None` if the window is closed.
    pub fn closes_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.period_at(now).map(|(_, closes)| closes)
    }

    /// The instant the zone's wall clock reads `time` on `date + days`. When
    /// that time is repeated (clocks go back) the earlier one; when it does
    /// not exist (clocks go forward) the first minute that does, which is the
    /// moment the clocks jump.
    fn at_local(&self, date: NaiveDate, days: u64, time: NaiveTime) -> Option<DateTime<Utc>> {
        let date = date.checked_add_days(chrono::Days::new(days))?;
        let mut wall = NaiveDateTime::new(date, time);
        // Gaps are at most a few hours; a day of minutes is a generous bound.
        for _ in 0..(24 * 60) {
            if let Some(at) = self.timezone.from_local_datetime(&wall).earliest() {
                return Some(at.with_timezone(&Utc));
            }
            wall = wall.checked_add_signed(chrono::TimeDelta::minutes(1))?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn win(start: &str, end: &str, tz: Tz) -> SendWindow {
        SendWindow {
            start: parse_hh_mm(start).unwrap(),
            end: parse_hh_mm(end).unwrap(),
            timezone: tz,
            per_recipient: false,
        }
    }

    #[test]
    fn window_same_day() {
        // Nairobi is UTC+3 all year.
        let w = win("08:00", "20:00", chrono_tz::Africa::Nairobi);
        assert!(!w.contains(utc("2026-03-01T04:59:59Z")));
        assert!(w.contains(utc("2026-03-01T05:00:00Z")));
        assert!(w.contains(utc("2026-03-01T16:59:59Z")));
        assert!(!w.contains(utc("2026-03-01T17:00:00Z")));
        // Before opening: today's start. After closing: tomorrow's.
        assert_eq!(
            w.next_open(utc("2026-03-01T02:00:00Z")),
            utc("2026-03-01T05:00:00Z")
        );
        assert_eq!(
            w.next_open(utc("2026-03-01T18:00:00Z")),
            utc("2026-03-02T05:00:00Z")
        );
        let now = utc("2026-03-01T10:00:00Z");
        assert_eq!(w.next_open(now), now);
        assert_eq!(w.closes_at(now), Some(utc("2026-03-01T17:00:00Z")));
        assert_eq!(w.closes_at(utc("2026-03-01T18:00:00Z")), None);
    }

    #[test]
    fn window_across_midnight() {
        let w = win("22:00", "06:00", Tz::UTC);
        assert!(w.contains(utc("2026-03-01T23:00:00Z")));
        assert!(w.contains(utc("2026-03-02T05:59:00Z")));
        assert!(!w.contains(utc("2026-03-02T06:00:00Z")));
        assert!(!w.contains(utc("2026-03-02T12:00:00Z")));
        assert_eq!(
            w.next_open(utc("2026-03-02T12:00:00Z")),
            utc("2026-03-02T22:00:00Z")
        );
        assert_eq!(
            w.closes_at(utc("2026-03-01T23:00:00Z")),
            Some(utc("2026-03-02T06:00:00Z"))
        );
        assert_eq!(
            w.closes_at(utc("2026-03-02T01:00:00Z")),
            Some(utc("2026-03-02T06:00:00Z"))
        );
        // "until midnight"
        let w = win("20:00", "24:00", Tz::UTC);
        assert!(w.contains(utc("2026-03-01T23:59:59Z")));
        assert!(!w.contains(utc("2026-03-02T00:00:00Z")));
        assert_eq!(
            w.closes_at(utc("2026-03-01T21:00:00Z")),
            Some(utc("2026-03-02T00:00:00Z"))
        );
    }

    #[test]
    fn window_end_in_the_repeated_hour_closes_at_its_first_pass() {
        // 2026-11-01, New York: 02:00 EDT (06:00 UTC) becomes 01:00 EST, so
        // 01:00–02:00 happens twice: 05:00–06:00 UTC, then 06:00–07:00 UTC.
        let ny = chrono_tz::America::New_York;
        let w = win("22:00", "01:30", ny);
        // Open from 22:00 EDT on Oct 31 (02:00 UTC) to the first 01:30 (05:30 UTC).
        assert!(w.contains(utc("2026-11-01T05:29:59Z")));
        assert_eq!(
            w.closes_at(utc("2026-11-01T03:00:00Z")),
            Some(utc("2026-11-01T05:30:00Z"))
        );
        assert!(!w.contains(utc("2026-11-01T05:30:00Z")));
        // The second 01:10 (EST) is after the window closed: it stays closed,
        // and it does not count as a period that runs until tomorrow's 01:30.
        let second_pass = utc("2026-11-01T06:10:00Z");
        assert!(!w.contains(second_pass));
        assert_eq!(w.closes_at(second_pass), None);
        // It opens again at 22:00 EST (03:00 UTC on Nov 2).
        assert_eq!(w.next_open(second_pass), utc("2026-11-02T03:00:00Z"));

        // A window inside the repeated hour happens once, at its first pass.
        let w = win("01:00", "01:30", ny);
        assert!(w.contains(utc("2026-11-01T05:10:00Z")));
        assert_eq!(
            w.closes_at(utc("2026-11-01T05:10:00Z")),
            Some(utc("2026-11-01T05:30:00Z"))
        );
        assert!(!w.contains(utc("2026-11-01T06:10:00Z")));
        assert_eq!(
            w.next_open(utc("2026-11-01T06:10:00Z")),
            utc("2026-11-02T06:00:00Z")
        );
        // A start in the repeated hour opens at its first pass.
        let w = win("01:15", "03:00", ny);
        assert_eq!(
            w.next_open(utc("2026-11-01T04:00:00Z")),
            utc("2026-11-01T05:15:00Z")
        );
        assert_eq!(
            w.closes_at(utc("2026-11-01T05:15:00Z")),
            Some(utc("2026-11-01T08:00:00Z"))
        );
    }

    #[test]
    fn window_edges_in_the_spring_forward_gap_are_the_jump() {
        // 2026-03-08, New York: 02:00 EST (07:00 UTC) becomes 03:00 EDT.
        let ny = chrono_tz::America::New_York;
        // An end in the gap closes the window when the clocks jump.
        let w = win("22:00", "02:30", ny);
        assert_eq!(
            w.closes_at(utc("2026-03-08T04:00:00Z")),
            Some(utc("2026-03-08T07:00:00Z"))
        );
        assert!(!w.contains(utc("2026-03-08T07:00:00Z")));
        // A start in the gap opens at the jump, whatever hour it is asked from.
        let w = win("02:30", "05:00", ny);
        for asked in ["2026-03-07T22:00:00Z", "2026-03-08T06:59:00Z"] {
            assert_eq!(w.next_open(utc(asked)), utc("2026-03-08T07:00:00Z"));
        }
    }

    #[test]
    fn window_across_dst_in_new_york() {
        let ny = chrono_tz::America::New_York;
        // 2026-03-08: clocks jump from 02:00 EST to 03:00 EDT (07:00 UTC).
        let w = win("02:30", "05:00", ny);
        // 02:30 does not exist that day: the window opens when the clocks jump.
        assert_eq!(
            w.next_open(utc("2026-03-08T05:00:00Z")),
            utc("2026-03-08T07:00:00Z")
        );
        assert!(w.contains(utc("2026-03-08T07:00:00Z")));
        assert_eq!(
            w.closes_at(utc("2026-03-08T07:00:00Z")),
            Some(utc("2026-03-08T09:00:00Z"))
        );
        // A normal window: 09:00 local is 14:00 UTC before the change, 13:00 after.
        let w = win("09:00", "17:00", ny);
        assert_eq!(
            w.next_open(utc("2026-03-07T23:00:00Z")),
            utc("2026-03-08T13:00:00Z")
        );
        assert_eq!(
            w.next_open(utc("2026-03-06T23:00:00Z")),
            utc("2026-03-07T14:00:00Z")
        );
        // 2026-11-01: 01:30 happens twice; the earlier (EDT, 05:30 UTC) is used.
        let w = win("01:30", "03:00", ny);
        assert_eq!(
            w.next_open(utc("2026-11-01T04:00:00Z")),
            utc("2026-11-01T05:30:00Z")
        );
        // Across midnight through the spring change.
        let w = win("22:00", "06:00", ny);
        assert!(w.contains(utc("2026-03-08T04:00:00Z"))); // 23:00 EST
        assert_eq!(
            w.closes_at(utc("2026-03-08T04:00:00Z")),
            Some(utc("2026-03-08T10:00:00Z"))
        ); // 06:00 EDT
    }
}
