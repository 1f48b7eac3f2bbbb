//! When rows may leave: the campaign's one send window, or the same hours in
//! each recipient's own zone (`timezone = "recipient"`).
//!
//! For the second, the zones are the few distinct ones the plan stored for
//! the rows a run may claim, read once at the start of the run; "open" means
//! open in at least one of them, and the run names the zones open *now* to
//! every claim (see [`crate::state::StateStore::claim_only_zones`]), so rows
//! of a zone whose night it is stay `pending` while the others are sent.
//! Nothing here reads a clock: callers pass the instant to judge.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::campaign::SendWindow;
use crate::state::{RecipientState, StateError, StateRead};

/// The send window a run keeps to.
#[derive(Debug, Clone)]
pub enum Hours {
    /// One window in one zone.
    Campaign(SendWindow),
    /// The same hours in each recipient's zone.
    Recipients(RecipientHours),
}

/// A window in each recipient's own hours, over the zones that have rows to send.
#[derive(Debug, Clone)]
pub struct RecipientHours {
    window: SendWindow,
    /// Each zone's name as stored, with its window.
    zones: Vec<(String, SendWindow)>,
}

impl RecipientHours {
    /// The zones of the rows in `states`. A zone name this build does not
    /// know (a state planned by a newer tz database) is left out: its rows are
    /// never claimed, rather than sent at a guessed hour.
    pub fn load(
        db: &dyn StateRead,
        window: SendWindow,
        states: &[RecipientState],
    ) -> Result<RecipientHours, StateError> {
        let zones = db
            .rows_by_zone(states)?
            .into_iter()
            .filter_map(|(name, _)| {
                let name = name?;
                let zone = Tz::from_str(&name).ok()?;
                Some((name, window.in_zone(zone)))
            })
            .collect();
        Ok(RecipientHours { window, zones })
    }

    /// The same hours over the given zones (for a caller that already counted them).
    pub fn from_zones<'a>(window: SendWindow, zones: impl IntoIterator<Item = &'a str>) -> Self {
        let zones = zones
            .into_iter()
            .filter_map(|name| {
                let zone = Tz::from_str(name).ok()?;
                Some((name.to_owned(), window.in_zone(zone)))
            })
            .collect();
        RecipientHours { window, zones }
    }

    /// The names of the zones whose window is open at `now`.
    pub fn open_zones(&self, now: DateTime<Utc>) -> Vec<String> {
        self.zones
            .iter()
            .filter(|(_, w)| w.contains(now))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Whether the window of the zone named `zone` is open at `now`. A row
    /// without a zone (or one this build does not know) is never open.
    pub fn zone_open(&self, zone: Option<&str>, now: DateTime<Utc>) -> bool {
        let Some(zone) = zone else {
            return false;
        };
        self.zones
            .iter()
            .find(|(name, _)| name == zone)
            .map_or_else(
                || Tz::from_str(zone).is_ok_and(|tz| self.window.in_zone(tz).contains(now)),
                |(_, w)| w.contains(now),
            )
    }

    /// The next moment some zone opens, and that zone: `now` when one is open.
    pub fn next_open(&self, now: DateTime<Utc>) -> Option<(DateTime<Utc>, Tz)> {
        self.zones
            .iter()
            .map(|(_, w)| (w.next_open(now), w.timezone))
            .min_by_key(|(at, zone)| (*at, zone.name()))
    }

    /// When the zone named `zone` may send next (`now` if open).
    pub fn zone_next_open(&self, zone: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let tz = Tz::from_str(zone).ok()?;
        Some(self.window.in_zone(tz).next_open(now))
    }
}

impl Hours {
    /// The window of a run: `None` without one.
    pub fn of(window: Option<SendWindow>, zones: Option<RecipientHours>) -> Option<Hours> {
        match (window, zones) {
            (Some(w), Some(zones)) if w.per_recipient => Some(Hours::Recipients(zones)),
            (Some(w), _) => Some(Hours::Campaign(w)),
            (None, _) => None,
        }
    }

    /// Whether rows may leave at `now` (in some zone, for recipients' hours).
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        match self {
            Hours::Campaign(w) => w.contains(now),
            Hours::Recipients(r) => !r.open_zones(now).is_empty(),
        }
    }

    /// `now` if open, else the next opening, with the zone it is in.
    pub fn next_open(&self, now: DateTime<Utc>) -> (DateTime<Utc>, Tz) {
        match self {
            Hours::Campaign(w) => (w.next_open(now), w.timezone),
            Hours::Recipients(r) => r.next_open(now).unwrap_or((now, r.window.timezone)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveTime;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn hours_open_zones_and_the_next_opening_across_zones() {
        let window = SendWindow {
            start: NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(20, 0, 0).unwrap(),
            timezone: Tz::UTC,
            per_recipient: true,
        };
        let hours = RecipientHours::from_zones(
            window,
            [
                "Africa/Abidjan",
                "Africa/Nairobi",
                "Indian/Mauritius",
                "Pacific/Honolulu",
            ],
        );
        // 08:00 UTC: Dakar 08:00 (closed), Nairobi 11:00, Port Louis 12:00
        // (open), Honolulu 22:00 the day before (closed).
        let now = utc("2026-11-26T08:00:00Z");
        assert_eq!(
            hours.open_zones(now),
            ["Africa/Nairobi", "Indian/Mauritius"]
        );
        assert!(hours.zone_open(Some("Africa/Nairobi"), now));
        assert!(!hours.zone_open(Some("Pacific/Honolulu"), now));
        assert!(!hours.zone_open(None, now));
        assert!(Hours::Recipients(hours.clone()).contains(now));
        assert_eq!(
            hours.zone_next_open("Pacific/Honolulu", now),
            Some(utc("2026-11-26T19:00:00Z"))
        );
        // Without Honolulu, 03:00 UTC is night everywhere; Port Louis (UTC+4)
        // opens first, at 05:00 UTC, before Nairobi (06:00) and Dakar (09:00).
        let africa = RecipientHours::from_zones(
            window,
            ["Africa/Abidjan", "Africa/Nairobi", "Indian/Mauritius"],
        );
        let night = utc("2026-11-26T03:00:00Z");
        assert!(africa.open_zones(night).is_empty());
        assert!(!Hours::Recipients(africa.clone()).contains(night));
        assert_eq!(
            africa.next_open(night),
            Some((utc("2026-11-26T05:00:00Z"), chrono_tz::Indian::Mauritius))
        );
    }
}
