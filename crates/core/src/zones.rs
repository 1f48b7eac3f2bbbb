//! Which time zone a recipient lives in, for a send window in each
//! recipient's own hours.
//!
//! A row's zone is, in order: the IANA name in the campaign's
//! `timezone_column` (a name the tz database does not know makes the row
//! invalid), else the zone of the phone number's country when that country
//! has exactly one, else the campaign's `fallback_timezone`. The country table
//! is the tz database's own `zone1970.tab` (embedded from `data/tz`, parsed on
//! first use), not a hand-made list: countries that span zones (the US,
//! Brazil, Russia…) have several rows there and so fall back, since a phone
//! number says nothing about where in the country its owner is. This module
//! decides zones only; it never reads a clock or the CSV.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::OnceLock;

use chrono_tz::Tz;
use phonenumber::country::Id;

/// The tz database's zones by country (release 2025b; see `data/tz/README.md`).
const ZONE1970_TAB: &str = include_str!("../data/tz/zone1970.tab");

/// Where a row's zone came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneSource {
    /// The CSV's `timezone_column`.
    Column,
    /// The phone number's country, which has one zone.
    Country,
    /// Neither said: the campaign's `fallback_timezone`.
    Fallback,
}

/// A row's zone and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowZone {
    pub zone: Tz,
    pub source: ZoneSource,
}

/// A timezone cell that is not an IANA zone name; its `Display` is the
/// row's reason for being invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown timezone '{shown}' in column '{column}': use an IANA name such as Africa/Nairobi")]
pub struct UnknownZone {
    pub shown: String,
    pub column: String,
}

/// The zone of one row: `cell` is its `timezone_column` value (if the
/// campaign has one), `phone` its number in E.164.
pub fn zone_for_row(
    cell: Option<&str>,
    column: &str,
    phone: &str,
    fallback: Tz,
) -> Result<RowZone, UnknownZone> {
    if let Some(cell) = cell.map(str::trim).filter(|c| !c.is_empty()) {
        return Tz::from_str(cell)
            .map(|zone| RowZone {
                zone,
                source: ZoneSource::Column,
            })
            .map_err(|_| UnknownZone {
                shown: cell
                    .chars()
                    .take(40)
                    .flat_map(char::escape_default)
                    .collect(),
                column: column.to_owned(),
            });
    }
    Ok(match phone_country(phone).and_then(country_zone) {
        Some(zone) => RowZone {
            zone,
            source: ZoneSource::Country,
        },
        None => RowZone {
            zone: fallback,
            source: ZoneSource::Fallback,
        },
    })
}

/// The country a number in E.164 belongs to, if the number parses.
fn phone_country(e164: &str) -> Option<Id> {
    let number = phonenumber::parse(None, e164).ok()?;
    number.country().id()
}

/// The zone of a country that has exactly one in the tz database.
pub fn country_zone(country: Id) -> Option<Tz> {
    let code: &str = country.as_ref();
    match by_country().get(code)?.as_slice() {
        [only] => Some(*only),
        _ => None,
    }
}

/// `zone1970.tab` as country code → zones, parsed once.
fn by_country() -> &'static HashMap<&'static str, Vec<Tz>> {
    static TABLE: OnceLock<HashMap<&'static str, Vec<Tz>>> = OnceLock::new();
    TABLE.get_or_init(|| parse_zone_tab(ZONE1970_TAB))
}

/// Rows are `codes<TAB>coordinates<TAB>zone[<TAB>comments]`; `#` starts a
/// comment line. A zone that chrono-tz does not know (a newer table than
/// its data) is left out, so such a country falls back instead of failing.
fn parse_zone_tab(text: &'static str) -> HashMap<&'static str, Vec<Tz>> {
    let mut table: HashMap<&str, Vec<Tz>> = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut fields = line.split('\t');
        let (Some(codes), Some(_), Some(zone)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(tz) = Tz::from_str(zone) else {
            continue;
        };
        for code in codes.split(',') {
            table.entry(code).or_default().push(tz);
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_single_zone_countries_have_their_zone() {
        // Senegal keeps Abidjan's clock (UTC+0) and the table names it so.
        assert_eq!(country_zone(Id::SN), Some(chrono_tz::Africa::Abidjan));
        assert_eq!(country_zone(Id::KE), Some(chrono_tz::Africa::Nairobi));
        assert_eq!(country_zone(Id::MU), Some(chrono_tz::Indian::Mauritius));
        // Several zones: a number alone does not say which.
        assert_eq!(country_zone(Id::US), None);
        assert_eq!(country_zone(Id::BR), None);
        assert_eq!(country_zone(Id::AU), None);
    }

    #[test]
    fn zones_every_row_of_the_table_is_a_zone_chrono_tz_knows() {
        let rows = ZONE1970_TAB
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty());
        for row in rows {
            let zone = row.split('\t').nth(2).unwrap_or("");
            assert!(Tz::from_str(zone).is_ok(), "{row}");
        }
        assert!(by_country().len() > 240, "{}", by_country().len());
    }

    #[test]
    fn zones_column_then_country_then_fallback() {
        let fallback = chrono_tz::Europe::London;
        let zone =
            |cell, phone| zone_for_row(cell, "tz", phone, fallback).map(|z| (z.zone, z.source));
        assert_eq!(
            zone(Some(" Pacific/Honolulu "), "+18085550100"),
            Ok((chrono_tz::Pacific::Honolulu, ZoneSource::Column))
        );
        assert_eq!(
            zone(Some(""), "+254712345678"),
            Ok((chrono_tz::Africa::Nairobi, ZoneSource::Country))
        );
        assert_eq!(
            zone(None, "+18085550100"),
            Ok((fallback, ZoneSource::Fallback))
        );
        let e = zone(Some("Mars/Olympus"), "+254712345678").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown timezone 'Mars/Olympus' in column 'tz': use an IANA name such as Africa/Nairobi"
        );
    }
}
