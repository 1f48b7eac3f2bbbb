//! The HTML report: one self-contained page about a campaign that a manager
//! can open in a browser or attach to a mail.
//!
//! This module owns gathering the page's aggregates from the state (counts
//! per state, sends per time bucket, the attempts histogram, error codes,
//! the run history) and writing them as HTML with inline CSS and an inline
//! SVG chart ([`chart`]): no script, no font, no image, nothing fetched
//! from anywhere.
//! Every figure is grouped in SQL (see [`crate::state::reads`]), so a
//! million-row state is never read into memory. The page lists no
//! recipients — no phone, name, message or per-recipient error detail — so
//! it is safe to mail; the per-recipient export stays the owner-only CSV.
//! Every piece of text that comes from a file or a server (campaign name,
//! paths, error codes, run outcomes) goes through [`Esc`] on its way out.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub mod chart;

pub use chart::{BucketSize, SendChart};

use super::ReportError;
use crate::engine::progress::format_duration;
use crate::state::reads::{AttemptsCount, ErrorStateCount};
use crate::state::{Counts, PlanInfo, RecipientState, RunRecord, StateRead};

/// At most this many runs are listed, the latest ones: a campaign run from
/// cron every ten minutes has thousands.
pub const MAX_RUNS: usize = 100;

/// Everything the page shows, gathered from the state.
#[derive(Debug, Clone)]
pub struct HtmlReport {
    pub generated_at: DateTime<Utc>,
    pub state_file: String,
    pub plan: Option<PlanInfo>,
    pub counts: Counts,
    /// Sends over time; `None` before the first send.
    pub chart: Option<SendChart>,
    pub attempts: Vec<AttemptsCount>,
    pub errors: Vec<ErrorStateCount>,
    /// The latest runs (at most [`MAX_RUNS`]), oldest first.
    pub runs: Vec<RunRecord>,
    /// All runs the state records, listed or not.
    pub run_count: u64,
    /// The latest run has not finished and its process is alive.
    pub running: bool,
}

/// Reads everything the page shows; `now` is when the page says it was made.
pub fn gather(db: &dyn StateRead, now: DateTime<Utc>) -> Result<HtmlReport, ReportError> {
    let plan = db.plan_info()?;
    let counts = db.counts()?;
    let chart = chart::gather(db)?;
    let mut runs = db.runs(MAX_RUNS)?;
    // Only the latest run can still be going; one that never recorded its
    // end is going only while its process lives (as `status` judges it).
    let running = runs
        .first()
        .is_some_and(|r| r.finished_at.is_none() && super::process_alive(r.pid).unwrap_or(true));
    runs.reverse();
    Ok(HtmlReport {
        generated_at: now,
        state_file: db.location().to_owned(),
        plan,
        counts,
        chart,
        attempts: db.attempts_by_state()?,
        errors: db.error_codes_by_state()?,
        runs,
        run_count: db.run_count()?,
        running,
    })
}

impl HtmlReport {
    /// Writes the page.
    pub fn write_html(&self, out: &mut dyn Write) -> Result<(), ReportError> {
        write!(out, "{}", Page(self)).map_err(ReportError::Write)?;
        out.flush().map_err(ReportError::Write)
    }

    /// The page as a string (tests, previews).
    pub fn to_html(&self) -> String {
        Page(self).to_string()
    }
}

/// Text made safe for HTML, in element content and in quoted attributes
/// alike. Control characters (other than tab and newline) become U+FFFD:
/// they have no business in a page and some are parse errors.
pub struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '&' => f.write_str("&amp;")?,
                '<' => f.write_str("&lt;")?,
                '>' => f.write_str("&gt;")?,
                '"' => f.write_str("&quot;")?,
                '\'' => f.write_str("&#39;")?,
                '\t' | '\n' => f.write_char(c)?,
                c if c.is_control() => f.write_char('\u{FFFD}')?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// `text` escaped for HTML.
pub fn escape(text: &str) -> String {
    Esc(text).to_string()
}

/// What an error code means, for the codes this tool and the API document.
pub fn error_meaning(code: &str) -> Option<&'static str> {
    Some(match code {
        "rate_limit_exceeded" => {
            "The API's rate limit (429). Retried after a pause without spending attempts."
        }
        "unauthorized" => {
            "The API rejected the key. The run stops and the rows stay pending: fix the key and rerun."
        }
        "validation_error" => {
            "The API rejected the request as written. Resending it unchanged will not help."
        }
        "not_found" => "The API says what the request names does not exist.",
        "internal_error" | "server_error" => {
            "The API failed (HTTP 5xx). Retried up to max_attempts, then failed."
        }
        "connect_error" => {
            "The API could not be reached (DNS, refused connection, TLS) before anything was sent. Retried, then failed."
        }
        "no_answer" => {
            "Sent, but no answer came back (timeout or reset): the message may have been delivered."
        }
        "gateway_error" => {
            "A proxy in front of the API answered 502/504: the message may have been delivered."
        }
        "unexpected_response" => {
            "An answer the API's documents do not describe (or too large to read)."
        }
        "interrupted" => {
            "The run stopped while this message was being sent: it may have been delivered."
        }
        "invalid_phone" => "The phone cell is empty or not a valid number.",
        "missing_variable" => "The message uses a column or variable this row does not have.",
        "content_rule" => {
            "The rendered message breaks WhatsApp's limits (lengths, buttons, list rows)."
        }
        "bad_row" => "The CSV row could not be read (wrong number of cells, bad encoding).",
        "duplicate" => "The same phone as an earlier row: only the first is sent.",
        "opted_out" => "On the account's opt-out list (the ledger): never sent.",
        "excluded" => "In one of the campaign's exclude files: never sent.",
        "frequency_cap" => {
            "Over the [audience] cap of messages per phone when its turn came (`retry --suppressed --codes frequency_cap` reconsiders it)."
        }
        "already_messaged" => {
            "This campaign already messaged this phone from another state file (a copied state, or a second one): not sent again."
        }
        "earlier_attempt" => {
            "The ledger shows this campaign may already have messaged this phone from another state: not sent again."
        }
        _ => return None,
    })
}

/// What each state means, in a phrase.
fn state_meaning(state: RecipientState) -> &'static str {
    match state {
        RecipientState::Pending => "planned, not sent yet",
        RecipientState::Sending => "claimed by a run right now (or by one that crashed)",
        RecipientState::Sent => "accepted by the API",
        RecipientState::Failed => "rejected for good, or retries ran out",
        RecipientState::Uncertain => "may have been delivered: never resent without you saying so",
        RecipientState::Invalid => "not sendable: bad phone, missing variable or content rule",
        RecipientState::Duplicate => "the same phone as an earlier row",
        RecipientState::Suppressed => {
            "never sent on purpose: opted out, or excluded by the campaign"
        }
    }
}

/// The CSS colour of a state.
fn state_colour(state: RecipientState) -> &'static str {
    match state {
        RecipientState::Pending => "#8c9eff",
        RecipientState::Sending => "#1c7ed6",
        RecipientState::Sent => "#2f9e44",
        RecipientState::Failed => "#e03131",
        RecipientState::Uncertain => "#f59f00",
        RecipientState::Invalid => "#9c36b5",
        RecipientState::Duplicate => "#adb5bd",
        RecipientState::Suppressed => "#495057",
    }
}

/// States in the order the page lists them: outcomes first.
const STATE_ORDER: [RecipientState; 8] = [
    RecipientState::Sent,
    RecipientState::Failed,
    RecipientState::Uncertain,
    RecipientState::Pending,
    RecipientState::Sending,
    RecipientState::Invalid,
    RecipientState::Duplicate,
    RecipientState::Suppressed,
];

/// `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "1 message", "2,000 messages".
pub fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{} {word}s", thousands(n))
    }
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A stored timestamp as `2026-03-04 14:05:06 UTC`; text that is not one
/// is shown as it is (escaped by the caller).
fn show_time(text: &str) -> String {
    match parse_time(text) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        None => text.to_owned(),
    }
}

/// A stored timestamp as `2026-03-04 14:05:06`, for a column headed (UTC).
fn show_time_bare(text: &str) -> String {
    match parse_time(text) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => text.to_owned(),
    }
}

struct Page<'a>(&'a HtmlReport);

const CSS: &str = r#"
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f3f5f8; color: #1f2933;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 24px 40px; }
h1 { font-size: 26px; line-height: 1.25; margin: 0 0 4px; overflow-wrap: anywhere; }
h2 { font-size: 18px; margin: 0 0 12px; }
.sub { color: #52606d; margin: 0 0 18px; }
section { background: #fff; border: 1px solid #d9e2ec; border-radius: 8px; padding: 18px 22px; margin: 16px 0; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 0; }
dl.facts dt { color: #52606d; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 10px; border-bottom: 1px solid #e4e9f0; text-align: left; vertical-align: top; }
th { font-size: 13px; color: #52606d; font-weight: 600; white-space: nowrap; }
tfoot td { border-bottom: none; font-weight: 600; }
.n { text-align: right; white-space: nowrap; }
.nowrap { white-space: nowrap; }
.muted { color: #52606d; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 8px; vertical-align: -1px; }
.stack { display: flex; height: 18px; border-radius: 4px; overflow: hidden; background: #e4e9f0; margin: 4px 0 14px; }
.stack span { display: block; height: 100%; min-width: 2px; }
.meter { height: 10px; border-radius: 2px; background: #4c6ef5; min-width: 2px; }
.scroll { overflow-x: auto; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px;
  background: #eef2f6; padding: 1px 4px; border-radius: 3px; overflow-wrap: anywhere; }
figure { margin: 0; }
figure svg { display: block; width: 100%; min-width: 640px; height: auto; }
figcaption, .note { color: #52606d; font-size: 13px; margin: 8px 0 0; }
.banner { background: #fff4e6; border: 1px solid #ffd8a8; border-radius: 8px; padding: 10px 16px; margin: 16px 0; }
footer { color: #52606d; font-size: 13px; margin-top: 28px; }
@media (max-width: 640px) {
  main { padding: 16px 10px 28px; }
  section { padding: 14px 12px; }
  h1 { font-size: 22px; }
  td.meaning { min-width: 14em; }
}
@media print { body { background: #fff; } section { break-inside: avoid; } }
"#;

impl fmt::Display for Page<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        let title = r
            .plan
            .as_ref()
            .map_or("a campaign not planned yet", |p| p.campaign_name.as_str());
        writeln!(f, "<!DOCTYPE html>")?;
        writeln!(f, "<html lang=\"en\">")?;
        writeln!(f, "<head>")?;
        writeln!(f, "<meta charset=\"utf-8\">")?;
        writeln!(
            f,
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        )?;
        // The page fetches nothing: a policy that says so keeps it that way
        // even if a later change slipped an external reference in.
        writeln!(
            f,
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
        )?;
        writeln!(f, "<meta name=\"generator\" content=\"convers8-campaign\">")?;
        writeln!(f, "<title>Campaign report: {}</title>", Esc(title))?;
        writeln!(f, "<style>{CSS}</style>")?;
        writeln!(f, "</head>")?;
        writeln!(f, "<body>")?;
        writeln!(f, "<main>")?;
        self.header(f)?;
        self.states(f)?;
        self.chart(f)?;
        self.attempts(f)?;
        self.errors(f)?;
        self.runs(f)?;
        self.footer(f)?;
        writeln!(f, "</main>")?;
        writeln!(f, "</body>")?;
        writeln!(f, "</html>")
    }
}

impl Page<'_> {
    fn header(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        let generated = r.generated_at.format("%Y-%m-%d %H:%M:%S UTC");
        match &r.plan {
            Some(plan) => {
                writeln!(f, "<h1>{}</h1>", Esc(&plan.campaign_name))?;
                writeln!(
                    f,
                    "<p class=\"sub\">{} message campaign · report made {generated}</p>",
                    Esc(&plan.message_type)
                )?;
            }
            None => {
                writeln!(f, "<h1>Campaign not planned yet</h1>")?;
                writeln!(
                    f,
                    "<p class=\"sub\">The state file holds no plan: run the campaign (or <code>run --dry-run</code>) first · report made {generated}</p>"
                )?;
            }
        }
        if r.running
            && let Some(run) = r.runs.last()
        {
            writeln!(
                f,
                "<div class=\"banner\"><strong>Run #{} is sending</strong> (since {}): these figures are a snapshot taken at {generated}.</div>",
                run.id,
                Esc(&show_time(&run.started_at))
            )?;
        }
        writeln!(f, "<section>")?;
        writeln!(f, "<dl class=\"facts\">")?;
        if let Some(plan) = &r.plan {
            fact(f, "CSV", &plan.csv_file)?;
            fact(f, "Campaign file", &plan.campaign_file)?;
            fact(f, "Planned", &show_time(&plan.planned_at))?;
            if plan.updated_at != plan.planned_at {
                fact(f, "Plan updated", &show_time(&plan.updated_at))?;
            }
        }
        fact(f, "State file", &r.state_file)?;
        writeln!(f, "</dl>")?;
        writeln!(f, "</section>")
    }

    fn states(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        let c = &r.counts;
        let total = c.total();
        writeln!(f, "<section>")?;
        writeln!(f, "<h2>Recipients by state</h2>")?;
        if total > 0 {
            write!(
                f,
                "<div class=\"stack\" role=\"img\" aria-label=\"share of each state\">"
            )?;
            for state in STATE_ORDER {
                let n = c.get(state);
                if n > 0 {
                    write!(
                        f,
                        "<span style=\"width:{:.3}%;background:{}\" title=\"{}: {}\"></span>",
                        n as f64 * 100.0 / total as f64,
                        state_colour(state),
                        state.as_str(),
                        thousands(n)
                    )?;
                }
            }
            writeln!(f, "</div>")?;
        }
        writeln!(f, "<div class=\"scroll\"><table>")?;
        writeln!(
            f,
            "<thead><tr><th>state</th><th class=\"n\">rows</th><th class=\"n\">share</th><th>meaning</th></tr></thead>"
        )?;
        writeln!(f, "<tbody>")?;
        for state in STATE_ORDER {
            let n = c.get(state);
            let share = if total > 0 {
                format!("{:.1}%", n as f64 * 100.0 / total as f64)
            } else {
                "–".to_owned()
            };
            writeln!(
                f,
                "<tr{}><td class=\"nowrap\"><span class=\"swatch\" style=\"background:{}\"></span>{}</td><td class=\"n\">{}</td><td class=\"n\">{share}</td><td class=\"muted meaning\">{}</td></tr>",
                if n == 0 { " class=\"muted\"" } else { "" },
                state_colour(state),
                state.as_str(),
                thousands(n),
                state_meaning(state)
            )?;
        }
        writeln!(f, "</tbody>")?;
        writeln!(
            f,
            "<tfoot><tr><td>total</td><td class=\"n\">{}</td><td></td><td></td></tr></tfoot>",
            thousands(total)
        )?;
        writeln!(f, "</table></div>")?;
        let note = match r.plan.as_ref().map(|p| p.csv_rows) {
            Some(rows) if rows == total => format!(
                "Every data row of the CSV is in exactly one state: the states add up to the CSV's {}.",
                plural(rows, "data row")
            ),
            Some(rows) => format!(
                "Every planned row is in exactly one state. The CSV had {} at the last plan (rows added with <code>--add-new-recipients</code> or a CSV changed since are why the two differ).",
                plural(rows, "data row")
            ),
            None => "Nothing is planned yet.".to_owned(),
        };
        writeln!(f, "<p class=\"note\">{note}</p>")?;
        writeln!(f, "</section>")
    }

    fn chart(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "<section>")?;
        writeln!(f, "<h2>Messages sent over time</h2>")?;
        match &self.0.chart {
            Some(chart) if !chart.bars.is_empty() => {
                writeln!(f, "<figure>")?;
                // Scrolls sideways on a phone rather than shrinking its text.
                writeln!(f, "<div class=\"scroll\">")?;
                chart::write_svg(f, chart)?;
                writeln!(f, "</div>")?;
                chart::write_caption(f, chart)?;
                writeln!(f, "</figure>")?;
            }
            Some(chart) => writeln!(
                f,
                "<p class=\"muted\">{} sent, but their times cannot be read (is the state file damaged?).</p>",
                plural(chart.unreadable, "message")
            )?,
            None => writeln!(f, "<p class=\"muted\">No message has been sent yet.</p>")?,
        }
        writeln!(f, "</section>")
    }

    fn attempts(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        writeln!(f, "<section>")?;
        writeln!(f, "<h2>Attempts per recipient</h2>")?;
        if r.attempts.is_empty() {
            writeln!(
                f,
                "<p class=\"muted\">No message has been attempted yet.</p>"
            )?;
            return writeln!(f, "</section>");
        }
        // attempts → (sent, failed, uncertain, other), in attempts order.
        let mut rows: BTreeMap<u32, [u64; 4]> = BTreeMap::new();
        for a in &r.attempts {
            let slot = match a.state {
                RecipientState::Sent => 0,
                RecipientState::Failed => 1,
                RecipientState::Uncertain => 2,
                _ => 3,
            };
            rows.entry(a.attempts).or_default()[slot] += a.count;
        }
        let widest = rows
            .values()
            .map(|v| v.iter().sum::<u64>())
            .max()
            .unwrap_or(1)
            .max(1);
        let other = rows.values().any(|v| v[3] > 0);
        writeln!(f, "<div class=\"scroll\"><table>")?;
        write!(
            f,
            "<thead><tr><th>attempts</th><th class=\"n\">sent</th><th class=\"n\">failed</th><th class=\"n\">uncertain</th>"
        )?;
        if other {
            write!(
                f,
                "<th class=\"n\" title=\"pending or sending again after a retry\">other</th>"
            )?;
        }
        writeln!(
            f,
            "<th class=\"n\">rows</th><th style=\"width:30%\"></th></tr></thead>"
        )?;
        writeln!(f, "<tbody>")?;
        for (attempts, v) in &rows {
            let sum: u64 = v.iter().sum();
            write!(
                f,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>",
                attempts,
                thousands(v[0]),
                thousands(v[1]),
                thousands(v[2])
            )?;
            if other {
                write!(f, "<td class=\"n\">{}</td>", thousands(v[3]))?;
            }
            writeln!(
                f,
                "<td class=\"n\">{}</td><td><div class=\"meter\" style=\"width:{:.1}%\"></div></td></tr>",
                thousands(sum),
                sum as f64 * 100.0 / widest as f64
            )?;
        }
        writeln!(f, "</tbody>")?;
        writeln!(f, "</table></div>")?;
        let zero = rows.contains_key(&0);
        writeln!(
            f,
            "<p class=\"note\">How many requests each recipient took. Waiting out the API's rate limit is not an attempt; server errors and unreachable moments are retried up to the campaign's <code>max_attempts</code>.{}</p>",
            if zero {
                " 0: a run stopped before any answer came back."
            } else {
                ""
            }
        )?;
        writeln!(f, "</section>")
    }

    fn errors(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        writeln!(f, "<section>")?;
        writeln!(f, "<h2>Error codes</h2>")?;
        if r.errors.is_empty() {
            writeln!(
                f,
                "<p class=\"muted\">No row failed, is uncertain, invalid, a duplicate or suppressed.</p>"
            )?;
            return writeln!(f, "</section>");
        }
        writeln!(f, "<div class=\"scroll\"><table>")?;
        writeln!(
            f,
            "<thead><tr><th>code</th><th>state</th><th class=\"n\">rows</th><th>meaning</th></tr></thead>"
        )?;
        writeln!(f, "<tbody>")?;
        for e in &r.errors {
            let meaning = error_meaning(&e.code).unwrap_or(
                "A code from the API that its documents do not describe; the per-recipient report has the details.",
            );
            writeln!(
                f,
                "<tr><td class=\"nowrap\"><code>{}</code></td><td class=\"nowrap\"><span class=\"swatch\" style=\"background:{}\"></span>{}</td><td class=\"n\">{}</td><td class=\"muted meaning\">{}</td></tr>",
                Esc(&e.code),
                state_colour(e.state),
                e.state.as_str(),
                thousands(e.count),
                meaning
            )?;
        }
        writeln!(f, "</tbody>")?;
        writeln!(f, "</table></div>")?;
        writeln!(
            f,
            "<p class=\"note\">Most frequent first. Each row's own details are in the per-recipient report (<code>report --state-filter failed,uncertain</code>).</p>"
        )?;
        writeln!(f, "</section>")
    }

    fn runs(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        writeln!(f, "<section>")?;
        writeln!(f, "<h2>Runs</h2>")?;
        if r.runs.is_empty() {
            writeln!(f, "<p class=\"muted\">No run yet.</p>")?;
            return writeln!(f, "</section>");
        }
        writeln!(f, "<div class=\"scroll\"><table>")?;
        writeln!(
            f,
            "<thead><tr><th class=\"n\">run</th><th>started (UTC)</th><th>ended (UTC)</th><th class=\"n\">lasted</th><th>outcome</th><th class=\"n\">sent</th><th class=\"n\">failed</th><th class=\"n\">uncertain</th></tr></thead>"
        )?;
        writeln!(f, "<tbody>")?;
        let latest = r.runs.last().map(|run| run.id);
        for run in &r.runs {
            let (ended, lasted, outcome) = match &run.finished_at {
                Some(end) => {
                    let lasted = match (parse_time(&run.started_at), parse_time(end)) {
                        (Some(a), Some(b)) => {
                            format_duration((b - a).to_std().unwrap_or(Duration::ZERO))
                        }
                        _ => String::new(),
                    };
                    (
                        show_time_bare(end),
                        lasted,
                        run.outcome
                            .clone()
                            .unwrap_or_else(|| "no outcome recorded".into()),
                    )
                }
                None if r.running && Some(run.id) == latest => {
                    (String::new(), String::new(), "sending now".to_owned())
                }
                None => (
                    String::new(),
                    String::new(),
                    "never finished: killed or crashed".to_owned(),
                ),
            };
            writeln!(
                f,
                "<tr><td class=\"n\">#{}</td><td class=\"nowrap\">{}</td><td class=\"nowrap\">{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                run.id,
                Esc(&show_time_bare(&run.started_at)),
                Esc(&ended),
                Esc(&lasted),
                Esc(&outcome),
                thousands(run.sent),
                thousands(run.failed),
                thousands(run.uncertain)
            )?;
        }
        writeln!(f, "</tbody>")?;
        writeln!(f, "</table></div>")?;
        let shown = r.runs.len() as u64;
        if r.run_count > shown {
            writeln!(
                f,
                "<p class=\"note\">The latest {shown} of {} runs.</p>",
                thousands(r.run_count)
            )?;
        }
        writeln!(f, "</section>")
    }

    fn footer(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "<footer>")?;
        writeln!(
            f,
            "<p>Made by convers8-campaign {} at {}. All times are UTC.</p>",
            env!("CARGO_PKG_VERSION"),
            self.0.generated_at.format("%Y-%m-%d %H:%M:%S UTC")
        )?;
        writeln!(
            f,
            "<p>Aggregates only: this page lists no recipient (no phone number, name, message or per-recipient error), so it can be mailed. One line per recipient is in <code>convers8-campaign report CAMPAIGN -o results.csv</code>, a file readable by its owner only: it holds phone numbers.</p>"
        )?;
        writeln!(f, "</footer>")
    }
}

fn fact(f: &mut fmt::Formatter<'_>, name: &str, value: &str) -> fmt::Result {
    writeln!(f, "<dt>{}</dt><dd>{}</dd>", Esc(name), Esc(value))
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDateTime;

    use super::*;

    fn epoch(text: &str) -> i64 {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
            .expect("a test time")
            .and_utc()
            .timestamp()
    }

    #[test]
    fn counts_read_as_words() {
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(plural(1, "message"), "1 message");
        assert_eq!(plural(2_000, "message"), "2,000 messages");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<script>alert(1)</script>"),
            "&lt;script&gt;alert(1)&lt;/script&gt;"
        );
        assert_eq!(
            escape("Tom & Jerry's \"best\""),
            "Tom &amp; Jerry&#39;s &quot;best&quot;"
        );
        assert_eq!(escape("a\u{0}b\u{1b}[31m"), "a\u{FFFD}b\u{FFFD}[31m");
        assert_eq!(escape("Ñandú 👋"), "Ñandú 👋");
    }

    fn sample(name: &str) -> HtmlReport {
        let at = "2026-03-04T14:05:00.000Z".to_owned();
        HtmlReport {
            generated_at: Utc::now(),
            state_file: "/tmp/<state>.db".into(),
            plan: Some(PlanInfo {
                campaign_name: name.into(),
                message_type: "text".into(),
                campaign_file: "campaign.toml".into(),
                csv_file: "a&b.csv".into(),
                message_fingerprint: "fp".into(),
                csv_sha256: "sha".into(),
                csv_rows: 4,
                planned_at: at.clone(),
                updated_at: at.clone(),
            }),
            counts: Counts {
                sent: 2,
                failed: 1,
                invalid: 1,
                ..Counts::default()
            },
            chart: Some(SendChart {
                bucket: BucketSize::for_span(180),
                bars: vec![(epoch("2026-03-04 14:05:00"), 2)],
                unreadable: 0,
            }),
            attempts: vec![AttemptsCount {
                attempts: 1,
                state: RecipientState::Sent,
                count: 2,
            }],
            errors: vec![ErrorStateCount {
                code: "<img src=x onerror=alert(2)>".into(),
                state: RecipientState::Failed,
                count: 1,
            }],
            runs: vec![RunRecord {
                id: 1,
                pid: 1,
                started_at: at.clone(),
                finished_at: Some("2026-03-04T14:06:00.000Z".into()),
                outcome: Some("<b>completed</b>".into()),
                sent: 2,
                failed: 1,
                uncertain: 0,
            }],
            run_count: 1,
            running: false,
        }
    }

    #[test]
    fn the_page_escapes_what_comes_from_files_and_servers() {
        let page = sample("<script>alert(1)</script>").to_html();
        assert!(
            page.contains("<h1>&lt;script&gt;alert(1)&lt;/script&gt;</h1>"),
            "{page}"
        );
        assert!(page.contains("<title>Campaign report: &lt;script&gt;"));
        assert!(!page.contains("<script"), "no script at all: {page}");
        assert!(page.contains("&lt;img src=x onerror=alert(2)&gt;"));
        assert!(!page.contains("<img"));
        assert!(page.contains("&lt;b&gt;completed&lt;/b&gt;"));
        assert!(page.contains("a&amp;b.csv"));
        assert!(page.contains("/tmp/&lt;state&gt;.db"));
        // The figures and the chart are there.
        assert!(page.contains("<svg"));
        assert!(page.contains("1 message") || page.contains("2 messages"));
        assert!(page.contains("the states add up to the CSV's 4 data rows."));
    }

    #[test]
    fn the_page_fetches_nothing() {
        let mut report = sample("plain");
        report.errors[0].code = "internal_error".into();
        report.runs[0].outcome = Some("completed".into());
        let page = report.to_html();
        for banned in [
            "<script", "<link", "<img", "src=", "url(", "@import", "http://", "https://",
        ] {
            assert!(!page.contains(banned), "{banned} in the page");
        }
    }
}
