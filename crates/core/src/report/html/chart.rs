//! The chart of messages sent over time: one inline SVG of bars, with its
//! caption.
//!
//! This module owns choosing the bar width from the campaign's span (a
//! second for a campaign sent in a minute, hours for one spread over days),
//! asking SQLite for sends grouped by a prefix of their timestamp, adding
//! those few rows up into bars on the clock, and drawing them with round
//! axis steps and UTC time ticks. Bars without sends are not drawn, so the
//! nights between a campaign's send windows show as gaps. It writes numbers
//! and times only: no text from a file or a server reaches the SVG.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, Utc};

use super::{plural, thousands};
use crate::state::{StateError, StateRead};

/// The chart aims at no more bars than this: enough to show the shape of a
/// run, few enough that each bar stays wide enough to point at.
const TARGET_BARS: i64 = 60;

/// A chart narrower than this many buckets is padded on both sides, so a
/// campaign sent within a few seconds is not one bar the width of the page.
const MIN_SLOTS: i64 = 12;

/// Messages sent per time bucket, as the chart draws them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendChart {
    pub bucket: BucketSize,
    /// `(start in seconds since the epoch, messages)`, in time order; only
    /// buckets with a send.
    pub bars: Vec<(i64, u64)>,
    /// Sends whose time could not be read (only a damaged file has them).
    pub unreadable: u64,
}

/// The width of one bar of the chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketSize {
    secs: i64,
}

/// Bar widths the chart may use, each a divisor of the next larger unit so
/// bars line up with the clock (a 10-minute bar starts at :00, :10, ...).
const BUCKET_SECONDS: [i64; 18] = [
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
];

impl BucketSize {
    /// The finest bar width that draws `span_secs` in at most about
    /// `TARGET_BARS` bars: seconds for a campaign sent in a few minutes,
    /// hours for one spread over days. Beyond two months, one bar a day.
    pub fn for_span(span_secs: i64) -> BucketSize {
        let secs = BUCKET_SECONDS
            .into_iter()
            .find(|&s| span_secs <= s * TARGET_BARS)
            .unwrap_or(86_400);
        BucketSize { secs }
    }

    pub fn seconds(self) -> i64 {
        self.secs
    }

    /// How many leading characters of a stored timestamp SQLite groups by:
    /// the coarsest calendar unit (day, hour, 10 minutes, minute, 10
    /// seconds, second) that divides the bar width. The few rows per bar
    /// are added up here.
    pub fn sql_prefix(self) -> usize {
        match self.secs {
            s if s % 86_400 == 0 => 10,
            s if s % 3_600 == 0 => 13,
            s if s % 600 == 0 => 15,
            s if s % 60 == 0 => 16,
            s if s % 10 == 0 => 18,
            _ => 19,
        }
    }

    /// "10 minutes", "1 hour", "5 seconds".
    pub fn describe(self) -> String {
        let (n, unit) = match self.secs {
            s if s % 86_400 == 0 => (s / 86_400, "day"),
            s if s % 3_600 == 0 => (s / 3_600, "hour"),
            s if s % 60 == 0 => (s / 60, "minute"),
            s => (s, "second"),
        };
        plural(n as u64, unit)
    }

    /// The unit a bar's height is in: the longest of second, minute and
    /// hour that fits in the bar, so a height is an average over its bar,
    /// never a few seconds blown up to a rate per hour. Returns (seconds,
    /// name, short name).
    pub fn rate_unit(self) -> (i64, &'static str, &'static str) {
        match self.secs {
            s if s < 60 => (1, "second", "s"),
            s if s < 3_600 => (60, "minute", "min"),
            _ => (3_600, "hour", "h"),
        }
    }

    /// A bar's height: `count` messages in one bar, per [`Self::rate_unit`].
    pub fn rate(self, count: u64) -> f64 {
        count as f64 * self.rate_unit().0 as f64 / self.secs as f64
    }
}

/// Turns SQL's rows (a timestamp prefix `2026-03-04T14:05` and its count)
/// into bars of `bucket`: each row goes to the bar its start falls in.
/// Rows must be in time order, as [`StateRead::sent_per_bucket`] gives them.
pub fn bars_from_prefixes(rows: &[(String, u64)], bucket: BucketSize) -> (Vec<(i64, u64)>, u64) {
    let mut bars: Vec<(i64, u64)> = Vec::new();
    let mut unreadable = 0;
    for (prefix, count) in rows {
        let Some(start) = prefix_start(prefix) else {
            unreadable += count;
            continue;
        };
        let bar = start.div_euclid(bucket.secs) * bucket.secs;
        match bars.last_mut() {
            Some((last, n)) if *last == bar => *n += count,
            _ => bars.push((bar, *count)),
        }
    }
    (bars, unreadable)
}

/// The first second of a timestamp prefix (`2026-03-04T14:0` is 14:00:00),
/// in seconds since the epoch; `None` for text that is not one.
fn prefix_start(prefix: &str) -> Option<i64> {
    const TEMPLATE: &str = "0000-01-01T00:00:00";
    // The shortest prefix SQL is asked for is the day.
    if prefix.len() < 10 {
        return None;
    }
    let rest = TEMPLATE.get(prefix.len()..)?;
    let full = format!("{prefix}{rest}");
    NaiveDateTime::parse_from_str(&full, "%Y-%m-%dT%H:%M:%S")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

fn from_epoch(secs: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0)
}

/// A bar's height (messages per second, minute or hour) as an axis or tooltip shows it.
fn show_rate(rate: f64) -> String {
    if rate >= 100.0 || rate == rate.trunc() {
        thousands(rate.round() as u64)
    } else if rate >= 1.0 {
        format!("{rate:.1}")
    } else {
        format!("{rate:.2}")
    }
}

/// Evenly spaced axis values from 0 past `max`: steps of 1, 2 or 5 times a
/// power of ten, about `target` of them. Returns (step, top).
fn nice_axis(max: f64, target: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 1.0);
    }
    let raw = max / target;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let top = (max / step).ceil() * step;
    (step, top)
}

/// Time-axis tick spacings, in seconds: each lines up with the clock.
const TICK_SECONDS: [i64; 24] = [
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
    172_800, 604_800, 1_209_600, 2_592_000, 7_776_000, 31_536_000,
];

/// The time-axis tick spacing: the smallest that puts at most `max_ticks`
/// ticks over `range_secs`.
fn tick_spacing(range_secs: i64, max_ticks: i64) -> i64 {
    TICK_SECONDS
        .into_iter()
        .find(|&s| range_secs / s <= max_ticks)
        .unwrap_or(31_536_000)
}

// The chart's geometry, in SVG user units (the SVG scales to the page).
const SVG_W: f64 = 960.0;
const SVG_H: f64 = 300.0;
const PLOT_LEFT: f64 = 72.0;
// Room for half of the last time label, centred on the right edge.
const PLOT_RIGHT: f64 = 40.0;
const PLOT_TOP: f64 = 16.0;
const PLOT_BOTTOM: f64 = 52.0;

/// The x range a chart draws: from the first bar's start to the last bar's
/// end, widened on both sides to at least [`MIN_SLOTS`] bars.
fn chart_range(chart: &SendChart) -> (i64, i64) {
    let b = chart.bucket.seconds();
    let first = chart.bars.first().map_or(0, |bar| bar.0);
    let last = chart.bars.last().map_or(0, |bar| bar.0) + b;
    let slots = (last - first) / b;
    if slots >= MIN_SLOTS {
        return (first, last);
    }
    let pad = (MIN_SLOTS - slots) / 2;
    (first - pad * b, last + (MIN_SLOTS - slots - pad) * b)
}

pub(super) fn write_svg(f: &mut fmt::Formatter<'_>, chart: &SendChart) -> fmt::Result {
    let bucket = chart.bucket;
    let (t0, t1) = chart_range(chart);
    let range = (t1 - t0).max(1) as f64;
    let plot_w = SVG_W - PLOT_LEFT - PLOT_RIGHT;
    let plot_h = SVG_H - PLOT_TOP - PLOT_BOTTOM;
    let base = PLOT_TOP + plot_h;
    let x_of = |t: i64| PLOT_LEFT + (t - t0) as f64 / range * plot_w;
    let (_, unit, unit_short) = bucket.rate_unit();
    let max_rate = chart
        .bars
        .iter()
        .map(|&(_, n)| bucket.rate(n))
        .fold(0.0, f64::max);
    let (step, top) = nice_axis(max_rate, 5.0);
    let y_of = |rate: f64| base - rate / top * plot_h;

    writeln!(
        f,
        "<svg viewBox=\"0 0 {SVG_W} {SVG_H}\" role=\"img\" aria-label=\"messages sent per {unit} over time\" font-size=\"12\" fill=\"#52606d\">"
    )?;
    // Horizontal grid lines and the y labels.
    let mut v = 0.0;
    while v <= top + step / 2.0 {
        let y = y_of(v);
        writeln!(
            f,
            "<line x1=\"{PLOT_LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{}\" stroke-width=\"1\"/>",
            SVG_W - PLOT_RIGHT,
            if v == 0.0 { "#9aa5b1" } else { "#e4e9f0" }
        )?;
        writeln!(
            f,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            PLOT_LEFT - 8.0,
            y + 4.0,
            show_rate(v)
        )?;
        v += step;
    }
    writeln!(
        f,
        "<text transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\">messages per {unit}</text>",
        PLOT_TOP + plot_h / 2.0
    )?;
    // Bars, each with a tooltip (an SVG <title>: no script needed).
    let bar_w = bucket.seconds() as f64 / range * plot_w;
    let gap = if bar_w >= 4.0 { 1.0 } else { 0.0 };
    for &(start, n) in &chart.bars {
        let rate = bucket.rate(n);
        let y = y_of(rate);
        let from = from_epoch(start).map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string());
        let to = from_epoch(start + bucket.seconds()).map(|t| t.format("%H:%M:%S").to_string());
        writeln!(
            f,
            "<rect x=\"{:.2}\" y=\"{y:.2}\" width=\"{:.2}\" height=\"{:.2}\" fill=\"#2f9e44\"><title>{}–{} UTC: {} ({}/{unit_short})</title></rect>",
            x_of(start) + gap / 2.0,
            (bar_w - gap).max(0.8),
            (base - y).max(0.5),
            from.unwrap_or_default(),
            to.unwrap_or_default(),
            plural(n, "message"),
            show_rate(rate)
        )?;
    }
    // Time ticks, lined up with the clock, with the date under the first
    // tick and under each tick where the day changes.
    let spacing = tick_spacing(t1 - t0, 8);
    let mut t = t0.div_euclid(spacing) * spacing;
    if t < t0 {
        t += spacing;
    }
    let mut last_day = None;
    while t <= t1 {
        let Some(at) = from_epoch(t) else { break };
        let x = x_of(t);
        writeln!(
            f,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{base:.1}\" y2=\"{:.1}\" stroke=\"#9aa5b1\"/>",
            base + 5.0
        )?;
        let (time, date) = if spacing >= 86_400 {
            (at.format("%b %-d").to_string(), None)
        } else {
            let label = if spacing < 60 { "%H:%M:%S" } else { "%H:%M" };
            let day = at.date_naive();
            let date = (last_day != Some(day)).then(|| at.format("%a %b %-d").to_string());
            last_day = Some(day);
            (at.format(label).to_string(), date)
        };
        writeln!(
            f,
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{time}</text>",
            base + 19.0
        )?;
        if let Some(date) = date {
            writeln!(
                f,
                "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#7b8794\">{date}</text>",
                base + 35.0
            )?;
        }
        t += spacing;
    }
    // Left of the first time label, under the y axis's title.
    writeln!(
        f,
        "<text x=\"8\" y=\"{:.1}\" font-weight=\"600\">UTC</text>",
        base + 19.0
    )?;
    writeln!(f, "</svg>")
}

pub(super) fn write_caption(f: &mut fmt::Formatter<'_>, chart: &SendChart) -> fmt::Result {
    let bucket = chart.bucket;
    let (unit_secs, unit, unit_short) = bucket.rate_unit();
    let bar = bucket.describe();
    let bar = bar.trim_start_matches("1 ");
    let total: u64 = chart.bars.iter().map(|&(_, n)| n).sum();
    let first = chart.bars.first().and_then(|&(t, _)| from_epoch(t));
    let last = chart
        .bars
        .last()
        .and_then(|&(t, _)| from_epoch(t + bucket.seconds()));
    let day_and_time = |t: Option<DateTime<Utc>>| {
        t.map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
    };
    write!(f, "<figcaption>")?;
    if unit_secs == bucket.seconds() {
        write!(
            f,
            "Each bar covers {}; its height is the number of messages sent in it. ",
            bucket.describe()
        )?;
    } else {
        write!(
            f,
            "Each bar covers {}; its height is the average number of messages sent per {unit} in it. ",
            bucket.describe()
        )?;
    }
    write!(
        f,
        "A gap is time when nothing was sent. {} from {} to {} UTC",
        plural(total, "message"),
        day_and_time(first),
        day_and_time(last),
    )?;
    if let Some(&(t, n)) = chart.bars.iter().max_by_key(|&&(_, n)| n) {
        write!(
            f,
            "; the busiest {bar} began {} UTC: {} ({}/{unit_short})",
            day_and_time(from_epoch(t)),
            plural(n, "message"),
            show_rate(bucket.rate(n))
        )?;
    }
    write!(f, ". Point at a bar for its figures.")?;
    if chart.unreadable > 0 {
        write!(
            f,
            " {} with a send time that cannot be read are not drawn.",
            plural(chart.unreadable, "message")
        )?;
    }
    writeln!(f, "</figcaption>")
}

/// Sends over time from the state; `None` before the first send.
pub(super) fn gather(db: &dyn StateRead) -> Result<Option<SendChart>, StateError> {
    let Some((first, last)) = db.sent_span()? else {
        return Ok(None);
    };
    // A time that cannot be read (a damaged file) gets day bars: the
    // coarsest, so the rows SQL returns stay few whatever the span.
    let span = match (parse_time(&first), parse_time(&last)) {
        (Some(a), Some(b)) => (b - a).num_seconds().max(0),
        _ => i64::MAX,
    };
    let bucket = BucketSize::for_span(span);
    let rows = db.sent_per_bucket(bucket.sql_prefix())?;
    let (bars, unreadable) = bars_from_prefixes(&rows, bucket);
    Ok(Some(SendChart {
        bucket,
        bars,
        unreadable,
    }))
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(text: &str) -> i64 {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
            .expect("a test time")
            .and_utc()
            .timestamp()
    }

    #[test]
    fn the_bucket_follows_the_span() {
        // A 3-minute campaign: 5-second bars, 36 of them.
        assert_eq!(BucketSize::for_span(180).seconds(), 5);
        assert_eq!(BucketSize::for_span(0).seconds(), 1);
        assert_eq!(BucketSize::for_span(60).seconds(), 1);
        // An hour: one bar a minute.
        assert_eq!(BucketSize::for_span(3_600).seconds(), 60);
        // Ten hours: 10-minute bars.
        assert_eq!(BucketSize::for_span(36_000).seconds(), 600);
        // Three days: 2-hour bars; ten days: 6 hours; a year: a day.
        assert_eq!(BucketSize::for_span(3 * 86_400).seconds(), 7_200);
        assert_eq!(BucketSize::for_span(10 * 86_400).seconds(), 21_600);
        assert_eq!(BucketSize::for_span(365 * 86_400).seconds(), 86_400);
        assert_eq!(BucketSize::for_span(i64::MAX).seconds(), 86_400);
        for secs in BUCKET_SECONDS {
            // SQL's calendar unit always divides the bar, so no row
            // straddles two bars.
            let bucket = BucketSize { secs };
            let unit = match bucket.sql_prefix() {
                10 => 86_400,
                13 => 3_600,
                15 => 600,
                16 => 60,
                18 => 10,
                19 => 1,
                other => panic!("prefix {other}"),
            };
            assert_eq!(secs % unit, 0, "{secs}");
        }
        assert_eq!(BucketSize { secs: 600 }.describe(), "10 minutes");
        assert_eq!(BucketSize { secs: 3_600 }.describe(), "1 hour");
        assert_eq!(BucketSize { secs: 5 }.describe(), "5 seconds");
        // Heights are averages over a bar, in the longest unit that fits in it.
        assert_eq!(BucketSize { secs: 5 }.rate(40), 8.0);
        assert_eq!(BucketSize { secs: 5 }.rate_unit().1, "second");
        assert_eq!(BucketSize { secs: 60 }.rate(40), 40.0);
        assert_eq!(BucketSize { secs: 600 }.rate(40), 4.0);
        assert_eq!(BucketSize { secs: 600 }.rate_unit().1, "minute");
        assert_eq!(BucketSize { secs: 21_600 }.rate(600), 100.0);
        assert_eq!(BucketSize { secs: 21_600 }.rate_unit().1, "hour");
    }

    #[test]
    fn sql_rows_are_added_up_into_bars_on_the_clock() {
        // Minutes from SQL into 5-minute bars: 14:05 and 14:09 share a bar;
        // the next day starts its own.
        let rows = vec![
            ("2026-03-04T14:05".to_owned(), 3),
            ("2026-03-04T14:09".to_owned(), 4),
            ("2026-03-04T14:10".to_owned(), 1),
            ("garbage".to_owned(), 7),
            ("2026-03-05T00:00".to_owned(), 2),
        ];
        let (bars, unreadable) = bars_from_prefixes(&rows, BucketSize { secs: 300 });
        assert_eq!(
            bars,
            vec![
                (epoch("2026-03-04 14:05:00"), 7),
                (epoch("2026-03-04 14:10:00"), 1),
                (epoch("2026-03-05 00:00:00"), 2),
            ]
        );
        assert_eq!(unreadable, 7);
        // Every prefix SQL groups by is understood.
        for (prefix, at) in [
            ("2026-03-04T14:05:0", "2026-03-04 14:05:00"),
            ("2026-03-04T14:05:37", "2026-03-04 14:05:37"),
            ("2026-03-04T14:5", "2026-03-04 14:50:00"),
            ("2026-03-04T14", "2026-03-04 14:00:00"),
            ("2026-03-04", "2026-03-04 00:00:00"),
        ] {
            assert_eq!(prefix_start(prefix), Some(epoch(at)), "{prefix}");
        }
        assert_eq!(prefix_start(""), None);
        assert_eq!(prefix_start("2026-03-04T14:05:00.000Z"), None);
    }

    #[test]
    fn a_short_chart_is_padded_and_a_long_one_is_not() {
        let bucket = BucketSize { secs: 1 };
        let chart = SendChart {
            bucket,
            bars: vec![(1_000, 5)],
            unreadable: 0,
        };
        let (t0, t1) = chart_range(&chart);
        assert_eq!(t1 - t0, MIN_SLOTS);
        assert!(t0 <= 1_000 && t1 >= 1_001);
        let chart = SendChart {
            bucket,
            bars: vec![(1_000, 5), (1_100, 1)],
            unreadable: 0,
        };
        assert_eq!(chart_range(&chart), (1_000, 1_101));
    }

    #[test]
    fn axes_have_round_steps() {
        assert_eq!(nice_axis(2_400.0, 5.0), (500.0, 2_500.0));
        assert_eq!(nice_axis(7.0, 5.0), (2.0, 8.0));
        assert_eq!(nice_axis(0.3, 5.0).0, 0.1);
        assert_eq!(nice_axis(0.0, 5.0), (1.0, 1.0));
        // Three minutes: ticks every 30 s; three days: every 12 hours.
        assert_eq!(tick_spacing(180, 8), 30);
        assert_eq!(tick_spacing(3 * 86_400, 8), 43_200);
    }
}
