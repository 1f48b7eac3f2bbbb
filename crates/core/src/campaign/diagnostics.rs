//! Reading a campaign file and saying exactly what is wrong with it: TOML
//! syntax, unknown or misspelt keys (with the keys the table accepts), wrong
//! types, values out of range, a `[message.content]` that does not fit its
//! `type`, and a credential put where it must not be. Every message is one
//! line naming the file, the line and the key, so an operator fixes a typo in
//! one go. The result is the checked model of [`super`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::Value;

use super::window::{SendWindow, parse_hh_mm};
use super::*;
use crate::api::model::{
    InteractiveContent, LocationContent, MediaContent, MessageKind, TemplateContent, TextContent,
};

/// The keys each table accepts, for "expected one of" hints. They mirror the
/// `Raw*` structs below; `known_keys_match_the_structs` keeps them in step.
const ROOT_KEYS: &[&str] = &[
    "campaign",
    "recipients",
    "send",
    "api",
    "vars",
    "message",
    "ledger",
    "audience",
    "state",
];
const STATE_KEYS: &[&str] = &["url", "lease"];
const LEDGER_KEYS: &[&str] = &["enabled", "path"];
const AUDIENCE_KEYS: &[&str] = &["max_messages", "per"];
const CAMPAIGN_KEYS: &[&str] = &["name", "description"];
const RECIPIENTS_KEYS: &[&str] = &[
    "csv",
    "phone_column",
    "name_column",
    "default_country",
    "delimiter",
    "timezone_column",
    "fallback_timezone",
    "exclude",
];
const SEND_KEYS: &[&str] = &[
    "concurrency",
    "rate_per_second",
    "max_attempts",
    "timeout_secs",
    "window",
    "daily_limit",
];
const WINDOW_KEYS: &[&str] = &["start", "end", "timezone"];
/// The window's `timezone` value that means "each recipient's own zone".
const RECIPIENT_ZONE: &str = "recipient";
const API_KEYS: &[&str] = &["base_url"];
const MESSAGE_KEYS: &[&str] = &["type", "content"];

/// Key names that look like someone is trying to put a credential in the file.
const SECRET_KEYS: &[&str] = &[
    "api_key",
    "apikey",
    "api-key",
    "key",
    "token",
    "api_token",
    "access_token",
    "bearer",
    "secret",
    "password",
];

/// Why a campaign file cannot be used. Each message is one line naming the
/// file (and the line and key where there is one) and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error("cannot read campaign file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: the campaign file is not valid UTF-8: save it as UTF-8", file.display())]
    NotUtf8 { file: PathBuf, line: usize },
    #[error("{}:{line}: TOML syntax error: {message}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}:{line}: unknown key `{key}` in {table} (expected one of {})", file.display(), expected.join(", "))]
    UnknownKey {
        file: PathBuf,
        line: usize,
        key: String,
        table: String,
        expected: Vec<&'static str>,
    },
    #[error(
        "{}:{line}: `{key}` in {table} is not allowed: the API key comes from CONVERS8_API_KEY or --api-key-file, never from the campaign file",
        file.display()
    )]
    SecretKey {
        file: PathBuf,
        line: usize,
        key: String,
        table: String,
    },
    #[error("{}: missing {table} table: {hint}", file.display())]
    MissingTable {
        file: PathBuf,
        table: &'static str,
        hint: &'static str,
    },
    #[error("{}:{line}: missing key `{key}` in {table}: {hint}", file.display())]
    MissingKey {
        file: PathBuf,
        line: usize,
        key: &'static str,
        table: String,
        hint: &'static str,
    },
    /// A key is present but its value has the wrong type or is out of range.
    #[error("{}:{line}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    /// `[message.content]` does not have the shape its `type` needs.
    #[error("{}:{line}: {place}: {reason}", file.display())]
    Content {
        file: PathBuf,
        line: usize,
        place: String,
        reason: String,
    },
}

impl CampaignError {
    /// The 1-based line in the campaign file the error points at, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            CampaignError::Read { .. } | CampaignError::MissingTable { .. } => None,
            CampaignError::NotUtf8 { line, .. }
            | CampaignError::Syntax { line, .. }
            | CampaignError::UnknownKey { line, .. }
            | CampaignError::SecretKey { line, .. }
            | CampaignError::MissingKey { line, .. }
            | CampaignError::Invalid { line, .. }
            | CampaignError::Content { line, .. } => Some(*line),
        }
    }
}

// The file as serde sees it. Every field is optional so that a missing key is
// reported by `validate` with its table's line and a hint, not by serde's
// terse "missing field".

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    campaign: Option<RawCampaign>,
    recipients: Option<RawRecipients>,
    send: Option<RawSend>,
    api: Option<RawApi>,
    vars: Option<toml::Table>,
    message: Option<RawMessage>,
    ledger: Option<RawLedger>,
    audience: Option<RawAudience>,
    state: Option<RawState>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    url: Option<String>,
    lease: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudience {
    max_messages: Option<i64>,
    per: Option<String>,
}

/// `ledger = false`, or a `[ledger]` table.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawLedger {
    Enabled(bool),
    Table(RawLedgerTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLedgerTable {
    enabled: Option<bool>,
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCampaign {
    name: Option<String>,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipients {
    csv: Option<String>,
    phone_column: Option<String>,
    name_column: Option<String>,
    default_country: Option<String>,
    delimiter: Option<String>,
    timezone_column: Option<String>,
    fallback_timezone: Option<String>,
    exclude: Option<Vec<String>>,
}

// Integers are read as i64 so that `concurrency = -1` gets our range message
// instead of serde's "expected usize".
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSend {
    concurrency: Option<i64>,
    rate_per_second: Option<f64>,
    max_attempts: Option<i64>,
    timeout_secs: Option<f64>,
    window: Option<RawWindow>,
    daily_limit: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    start: Option<String>,
    end: Option<String>,
    timezone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    base_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMessage {
    #[serde(rename = "type")]
    kind: Option<String>,
    content: Option<toml::Table>,
}

fn segs(path: &serde_path_to_error::Path) -> Vec<Seg> {
    path.iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
            serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
            _ => None,
        })
        .collect()
}

/// One segment of a path into the TOML document.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn key(s: &str) -> Seg {
    Seg::Key(s.to_owned())
}

/// Reads and checks campaign TOML (a BOM already stripped); `file` names it
/// in messages and anchors the relative CSV path.
pub(super) fn check(
    text: &str,
    file: &Path,
    file_sha256: String,
) -> Result<Campaign, CampaignError> {
    let doc = Doc { text, file };
    let raw = doc.deserialize()?;
    doc.validate(raw, file_sha256)
}

/// The text being checked, for turning paths and byte offsets into lines.
struct Doc<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Doc<'_> {
    fn line_at(&self, offset: usize) -> usize {
        line_of(self.text.as_bytes(), offset)
    }

    /// The line of the deepest part of `path` that exists in the document:
    /// the offending key if it is there, else its table's header. Parsing
    /// again is cheap and only happens on the way to an error.
    fn line_of_path(&self, path: &[Seg]) -> usize {
        let Ok(root) = toml::de::DeTable::parse(self.text) else {
            return 1;
        };
        let mut best = 1;
        let mut value: Option<&toml::de::DeValue<'_>> = None;
        let mut table = Some(root.get_ref());
        for seg in path {
            let found = match (seg, table, value) {
                (Seg::Key(k), Some(t), _) => t
                    .iter()
                    .find(|(name, _)| name.get_ref().as_ref() == k.as_str())
                    .map(|(name, v)| (name.span().start, v)),
                (Seg::Index(i), _, Some(toml::de::DeValue::Array(items))) => {
                    items.get(*i).map(|v| (v.span().start, v))
                }
                _ => None,
            };
            let Some((start, v)) = found else { break };
            best = self.line_at(start);
            value = Some(v.get_ref());
            table = v.get_ref().as_table();
        }
        best
    }

    fn deserialize(&self) -> Result<RawFile, CampaignError> {
        let de = toml::Deserializer::parse(self.text).map_err(|e| CampaignError::Syntax {
            file: self.file.to_owned(),
            line: e.span().map_or(1, |s| self.line_at(s.start)),
            message: one_line(e.message()),
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = segs(e.path());
            let inner = e.into_inner();
            let line = match inner.span() {
                Some(span) => self.line_at(span.start),
                None => self.line_of_path(&path),
            };
            self.shape_error(path, inner.message(), line)
        })
    }

    /// Turns serde's message into ours: unknown keys get the table's list,
    /// credentials get their own message, wrong types say what was expected.
    fn shape_error(&self, mut path: Vec<Seg>, message: &str, line: usize) -> CampaignError {
        let file = self.file.to_owned();
        if let Some(unknown) = message.strip_prefix("unknown field `") {
            let unknown = unknown.split('`').next().unwrap_or_default().to_owned();
            // Depending on where serde stopped, the path may already end in the key.
            if path.last() == Some(&Seg::Key(unknown.clone())) {
                path.pop();
            }
            let table = table_name(&path);
            if is_secret_key(&unknown) {
                return CampaignError::SecretKey {
                    file,
                    line,
                    key: unknown,
                    table,
                };
            }
            return CampaignError::UnknownKey {
                file,
                line,
                key: unknown,
                expected: expected_keys(&path).to_vec(),
                table,
            };
        }
        let (key_name, table) = match path.split_last() {
            Some((Seg::Key(k), parent)) => (k.clone(), table_name(parent)),
            _ => (String::new(), table_name(&path)),
        };
        let what = if key_name.is_empty() {
            table.clone()
        } else {
            format!("`{key_name}` in {table}")
        };
        let message = match type_mismatch(message) {
            Some((found, expected)) => format!("{what} must be {expected}, found {found}"),
            None => format!("{what}: {}", one_line(message)),
        };
        CampaignError::Invalid {
            file,
            line,
            key: key_name,
            message,
        }
    }

    fn invalid(&self, path: &[Seg], message: String) -> CampaignError {
        let key = match path.last() {
            Some(Seg::Key(k)) => k.clone(),
            _ => String::new(),
        };
        CampaignError::Invalid {
            file: self.file.to_owned(),
            line: self.line_of_path(path),
            key,
            message,
        }
    }

    fn missing_key(
        &self,
        table_path: &[Seg],
        key: &'static str,
        hint: &'static str,
    ) -> CampaignError {
        CampaignError::MissingKey {
            file: self.file.to_owned(),
            line: self.line_of_path(table_path),
            key,
            table: table_name(table_path),
            hint,
        }
    }

    fn validate(&self, raw: RawFile, file_sha256: String) -> Result<Campaign, CampaignError> {
        let file = self.file;
        let campaign = raw.campaign.ok_or_else(|| CampaignError::MissingTable {
            file: file.to_owned(),
            table: "[campaign]",
            hint: "add [campaign] with name = \"...\"",
        })?;
        let name = campaign
            .name
            .ok_or_else(|| {
                self.missing_key(&[key("campaign")], "name", "give the campaign a name")
            })?
            .trim()
            .to_owned();
        if name.is_empty() {
            return Err(self.invalid(
                &[key("campaign"), key("name")],
                "`name` in [campaign] is empty: give the campaign a name".into(),
            ));
        }

        let recipients = self.recipients(raw.recipients)?;
        let mut send = self.send(raw.send)?;
        self.recipient_zones(&recipients, &mut send)?;
        let api = self.api(raw.api)?;
        let vars = match raw.vars {
            Some(table) => {
                let mut vars = serde_json::Map::with_capacity(table.len());
                for (k, v) in table {
                    let path = vec![key("vars"), Seg::Key(k.clone())];
                    vars.insert(k, self.to_json(v, path)?);
                }
                vars
            }
            None => serde_json::Map::new(),
        };
        let message = self.message(raw.message)?;
        let ledger = self.ledger(raw.ledger)?;
        let audience = match raw.audience {
            Some(a) => Some(self.audience(a)?),
            None => None,
        };
        let state = match raw.state {
            Some(s) => self.state(s)?,
            None => StateSpec::default(),
        };
        if audience.is_some() && !ledger.enabled {
            return Err(self.invalid(
                &[key("audience")],
                "[audience] counts messages in the account's ledger, and this campaign turns the ledger off: remove `ledger = false` (or `enabled = false`), or remove [audience]".into(),
            ));
        }

        Ok(Campaign {
            file: file.to_owned(),
            name,
            description: campaign
                .description
                .map(|d| d.trim().to_owned())
                .filter(|d| !d.is_empty()),
            recipients,
            send,
            api,
            vars,
            message,
            ledger,
            audience,
            state,
            file_sha256,
        })
    }

    fn state(&self, raw: RawState) -> Result<StateSpec, CampaignError> {
        let url = match raw.url {
            Some(url) if !crate::state::location::is_postgres_url(&url) => {
                return Err(self.invalid(
                    &[key("state"), key("url")],
                    format!(
                        "`url` in [state] must be a PostgreSQL URL such as \"postgres://app@db.example/campaigns\", found {url:?} (a state file is chosen with --state PATH)"
                    ),
                ));
            }
            Some(url) if crate::state::location::has_password(&url) => {
                return Err(self.invalid(
                    &[key("state"), key("url")],
                    "`url` in [state] holds a password, and a campaign file is shared and committed: remove it from the URL and set the whole URL in CONVERS8_STATE_URL instead".into(),
                ));
            }
            other => other.map(|u| u.trim().to_owned()),
        };
        let lease = match raw.lease {
            None => None,
            Some(text) => {
                let lease = humantime_lease(&text).ok_or_else(|| {
                    self.invalid(
                        &[key("state"), key("lease")],
                        format!(
                            "`lease` in [state] must be a duration from {}s to {}m such as \"30s\" or \"2m\", found {text:?}",
                            crate::state::location::MIN_LEASE.as_secs(),
                            crate::state::location::MAX_LEASE.as_secs() / 60
                        ),
                    )
                })?;
                Some(lease)
            }
        };
        Ok(StateSpec { url, lease })
    }

    fn audience(&self, raw: RawAudience) -> Result<AudienceSpec, CampaignError> {
        let table = [key("audience")];
        let max_messages = raw.max_messages.ok_or_else(|| {
            self.missing_key(
                &table,
                "max_messages",
                "say how many messages one phone may get per period, such as max_messages = 2",
            )
        })?;
        if !(1..=i64::from(u32::MAX)).contains(&max_messages) {
            return Err(self.invalid(
                &[key("audience"), key("max_messages")],
                format!(
                    "`max_messages` in [audience] must be between 1 and {}, found {max_messages}",
                    u32::MAX
                ),
            ));
        }
        let per = raw.per.ok_or_else(|| {
            self.missing_key(
                &table,
                "per",
                "give the period as a number of hours or days, such as per = \"7d\"",
            )
        })?;
        let period = parse_period(&per).ok_or_else(|| {
            self.invalid(
                &[key("audience"), key("per")],
                format!(
                    "`per` in [audience] must be a period such as \"24h\", \"7d\" or \"30d\" (hours or days, at most 366 days), found {per:?}"
                ),
            )
        })?;
        Ok(AudienceSpec {
            max_messages: max_messages as u32,
            per: period,
            per_text: per.trim().to_owned(),
        })
    }

    /// A path written in the file, relative to the file's directory.
    fn relative(&self, path: &str) -> PathBuf {
        match self.file.parent() {
            Some(dir) => dir.join(path),
            None => PathBuf::from(path),
        }
    }

    fn ledger(&self, raw: Option<RawLedger>) -> Result<LedgerSpec, CampaignError> {
        let (enabled, path) = match raw {
            None => (true, None),
            Some(RawLedger::Enabled(enabled)) => (enabled, None),
            Some(RawLedger::Table(t)) => (t.enabled.unwrap_or(true), t.path),
        };
        let path = match path {
            Some(p) if p.trim().is_empty() => {
                return Err(self.invalid(
                    &[key("ledger"), key("path")],
                    "`path` in [ledger] is empty: name the ledger file (relative to this file), or remove the key for the default".into(),
                ));
            }
            Some(p) => Some(self.relative(&p)),
            None => None,
        };
        Ok(LedgerSpec { enabled, path })
    }

    fn recipients(&self, raw: Option<RawRecipients>) -> Result<RecipientsSpec, CampaignError> {
        let raw = raw.ok_or_else(|| CampaignError::MissingTable {
            file: self.file.to_owned(),
            table: "[recipients]",
            hint: "add [recipients] with csv = \"recipients.csv\"",
        })?;
        let table = [key("recipients")];
        let at = |k: &str| [key("recipients"), key(k)];
        let csv = raw.csv.ok_or_else(|| {
            self.missing_key(
                &table,
                "csv",
                "name the recipient CSV, relative to this file",
            )
        })?;
        if csv.trim().is_empty() {
            return Err(self.invalid(
                &at("csv"),
                "`csv` in [recipients] is empty: name the recipient CSV, relative to this file"
                    .into(),
            ));
        }
        // Relative to the campaign file, not to wherever cron happens to run us.
        let csv = match self.file.parent() {
            Some(dir) => dir.join(&csv),
            None => PathBuf::from(&csv),
        };
        let column = |k: &str, value: Option<String>, default: &str| {
            let value = value.unwrap_or_else(|| default.to_owned());
            let value = value.trim().to_owned();
            if value.is_empty() {
                Err(self.invalid(
                    &at(k),
                    format!("`{k}` in [recipients] is empty: name a column of the CSV header"),
                ))
            } else {
                Ok(value)
            }
        };
        let phone_column = column("phone_column", raw.phone_column, DEFAULT_PHONE_COLUMN)?;
        let name_column = column("name_column", raw.name_column, DEFAULT_NAME_COLUMN)?;
        let default_country = match raw.default_country {
            None => None,
            Some(code) => {
                let upper = code.trim().to_ascii_uppercase();
                let parsed = if upper.len() == 2 && upper.bytes().all(|b| b.is_ascii_alphabetic()) {
                    phonenumber::country::Id::from_str(&upper).ok()
                } else {
                    None
                };
                Some(parsed.ok_or_else(|| {
                    self.invalid(
                        &at("default_country"),
                        format!(
                            "unknown country '{code}' for `default_country` in [recipients]: use an ISO 3166-1 alpha-2 code such as KE"
                        ),
                    )
                })?)
            }
        };
        let delimiter = match raw.delimiter {
            None => b',',
            Some(d) => {
                let mut chars = d.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) if c.is_ascii() && !matches!(c, '"' | '\n' | '\r') => c as u8,
                    _ => {
                        return Err(self.invalid(
                            &at("delimiter"),
                            format!(
                                "`delimiter` in [recipients] must be one ASCII character such as \",\", \";\" or \"\\t\", found {d:?}"
                            ),
                        ));
                    }
                }
            }
        };
        let timezone_column = match raw.timezone_column {
            Some(value) => Some(column("timezone_column", Some(value), "")?),
            None => None,
        };
        let fallback_timezone = match raw.fallback_timezone {
            None => None,
            Some(name) => Some(name.trim().parse::<Tz>().map_err(|_| {
                self.invalid(
                    &at("fallback_timezone"),
                    format!(
                        "unknown timezone '{name}' for `fallback_timezone` in [recipients]: use an IANA name such as Africa/Nairobi"
                    ),
                )
            })?),
        };
        let mut exclude = Vec::new();
        for (i, file) in raw.exclude.unwrap_or_default().iter().enumerate() {
            if file.trim().is_empty() {
                return Err(self.invalid(
                    &[key("recipients"), key("exclude"), Seg::Index(i)],
                    format!("entry {} of `exclude` in [recipients] is empty: name a CSV of phones to leave out, relative to this file", i + 1),
                ));
            }
            exclude.push(self.relative(file));
        }
        Ok(RecipientsSpec {
            csv,
            phone_column,
            name_column,
            default_country,
            delimiter,
            timezone_column,
            fallback_timezone,
            exclude,
        })
    }

    /// `timezone = "recipient"` needs a zone for rows that cannot be placed
    /// (`fallback_timezone`), and the keys that place rows mean nothing
    /// without it: both mistakes are refused rather than silently ignored.
    /// The window's zone becomes the fallback zone.
    fn recipient_zones(
        &self,
        recipients: &RecipientsSpec,
        send: &mut SendSpec,
    ) -> Result<(), CampaignError> {
        let per_recipient = send.window.is_some_and(|w| w.per_recipient);
        if !per_recipient {
            for (k, set) in [
                ("timezone_column", recipients.timezone_column.is_some()),
                ("fallback_timezone", recipients.fallback_timezone.is_some()),
            ] {
                if set {
                    return Err(self.invalid(
                        &[key("recipients"), key(k)],
                        format!(
                            "`{k}` in [recipients] is only used with window = {{ ..., timezone = \"recipient\" }} in [send]: set that, or remove `{k}`"
                        ),
                    ));
                }
            }
            return Ok(());
        }
        let fallback = recipients.fallback_timezone.ok_or_else(|| {
            self.missing_key(
                &[key("recipients")],
                "fallback_timezone",
                "with timezone = \"recipient\" in [send] window, name the IANA zone for rows whose own zone is unknown, such as fallback_timezone = \"Africa/Nairobi\"",
            )
        })?;
        if let Some(window) = &mut send.window {
            window.timezone = fallback;
        }
        Ok(())
    }

    fn send(&self, raw: Option<RawSend>) -> Result<SendSpec, CampaignError> {
        let Some(raw) = raw else {
            return Ok(SendSpec::default());
        };
        let at = |k: &str| [key("send"), key(k)];
        let int_in = |k: &str, v: i64, lo: i64, hi: i64| {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(self.invalid(
                    &at(k),
                    format!("`{k}` in [send] must be between {lo} and {hi}, found {v}"),
                ))
            }
        };
        let positive = |k: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(self.invalid(
                    &at(k),
                    format!("`{k}` in [send] must be a number greater than 0, found {v}"),
                ))
            }
        };
        let concurrency = match raw.concurrency {
            Some(v) => int_in("concurrency", v, 1, MAX_CONCURRENCY)? as usize,
            None => DEFAULT_CONCURRENCY,
        };
        let rate_per_second = match raw.rate_per_second {
            Some(v) => Some(positive("rate_per_second", v)?),
            None => None,
        };
        let max_attempts = match raw.max_attempts {
            Some(v) => int_in("max_attempts", v, 1, MAX_MAX_ATTEMPTS)? as u32,
            None => DEFAULT_MAX_ATTEMPTS,
        };
        let timeout_secs = positive(
            "timeout_secs",
            raw.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS),
        )?;
        let timeout = Duration::try_from_secs_f64(timeout_secs).map_err(|_| {
            self.invalid(
                &at("timeout_secs"),
                format!("`timeout_secs` in [send] is too large: {timeout_secs}"),
            )
        })?;
        let daily_limit = match raw.daily_limit {
            Some(v) => Some(int_in("daily_limit", v, 1, i64::from(u32::MAX))? as u32),
            None => None,
        };
        let window = match raw.window {
            Some(w) => Some(self.window(w)?),
            None => None,
        };
        Ok(SendSpec {
            concurrency,
            rate_per_second,
            max_attempts,
            timeout,
            window,
            daily_limit,
        })
    }

    fn window(&self, raw: RawWindow) -> Result<SendWindow, CampaignError> {
        let table = [key("send"), key("window")];
        let at = |k: &str| [key("send"), key("window"), key(k)];
        let time = |k: &'static str, v: Option<String>| {
            let v = v.ok_or_else(|| self.missing_key(&table, k, "write the time as \"HH:MM\""))?;
            parse_hh_mm(&v).ok_or_else(|| {
                self.invalid(
                    &at(k),
                    format!(
                        "`{k}` in [send] window must be a time written \"HH:MM\" (24-hour, such as \"08:00\"), found {v:?}"
                    ),
                )
            })
        };
        let start = time("start", raw.start)?;
        let end = time("end", raw.end)?;
        if start == end {
            return Err(self.invalid(
                &at("end"),
                "`start` and `end` in [send] window are equal: the window would be never or always open; remove `window` to send at any time".into(),
            ));
        }
        let tz_name = raw.timezone.ok_or_else(|| {
            self.missing_key(
                &table,
                "timezone",
                "use an IANA name such as Africa/Nairobi, or \"recipient\" for each recipient's own zone",
            )
        })?;
        if tz_name.trim() == RECIPIENT_ZONE {
            // The zone is filled in from `fallback_timezone` once [recipients] is read.
            return Ok(SendWindow {
                start,
                end,
                timezone: Tz::UTC,
                per_recipient: true,
            });
        }
        let timezone = tz_name.trim().parse::<Tz>().map_err(|_| {
            self.invalid(
                &at("timezone"),
                format!(
                    "unknown timezone '{tz_name}' in [send] window: use an IANA name such as Africa/Nairobi, or \"recipient\""
                ),
            )
        })?;
        Ok(SendWindow {
            start,
            end,
            timezone,
            per_recipient: false,
        })
    }

    fn api(&self, raw: Option<RawApi>) -> Result<ApiSpec, CampaignError> {
        let Some(base_url) = raw.and_then(|a| a.base_url) else {
            return Ok(ApiSpec::default());
        };
        let trimmed = base_url.trim().trim_end_matches('/');
        let ok = reqwest::Url::parse(trimmed)
            .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .unwrap_or(false);
        if !ok {
            return Err(self.invalid(
                &[key("api"), key("base_url")],
                format!(
                    "`base_url` in [api] must be an http(s) URL such as {DEFAULT_BASE_URL}, found {base_url:?}"
                ),
            ));
        }
        Ok(ApiSpec {
            base_url: Some(trimmed.to_owned()),
        })
    }

    fn message(&self, raw: Option<RawMessage>) -> Result<MessageSpec, CampaignError> {
        let raw = raw.ok_or_else(|| CampaignError::MissingTable {
            file: self.file.to_owned(),
            table: "[message]",
            hint: "add [message] with type = \"text\" and a [message.content] table",
        })?;
        let table = [key("message")];
        let kinds = "text, media, interactive, template, location";
        let kind_name = raw.kind.ok_or_else(|| {
            self.missing_key(
                &table,
                "type",
                "use one of text, media, interactive, template, location",
            )
        })?;
        let kind = MessageKind::parse(kind_name.trim()).ok_or_else(|| {
            self.invalid(
                &[key("message"), key("type")],
                format!("unknown message type '{kind_name}' in [message]: use one of {kinds}"),
            )
        })?;
        let content = raw.content.ok_or_else(|| {
            self.missing_key(
                &table,
                "content",
                "add a [message.content] table with the API's content for this type",
            )
        })?;
        let content_path = vec![key("message"), key("content")];
        let content = self.to_json(toml::Value::Table(content), content_path.clone())?;
        if let Err((path, reason)) = check_content(kind, &content) {
            let mut full = content_path;
            full.extend(path);
            let line = self.line_of_path(&full);
            return Err(match reason {
                ContentProblem::Secret(secret) => CampaignError::SecretKey {
                    file: self.file.to_owned(),
                    line,
                    key: secret,
                    table: format!("[{}]", dotted(full.split_last().map_or(&[], |(_, p)| p))),
                },
                ContentProblem::Other(reason) => CampaignError::Content {
                    file: self.file.to_owned(),
                    line,
                    place: dotted(&full),
                    reason: format!("{reason} (for type = \"{kind}\")"),
                },
            });
        }
        Ok(MessageSpec { kind, content })
    }

    /// TOML to JSON. Dates become their TOML text; NaN and infinities have no
    /// JSON form and are refused.
    fn to_json(&self, value: toml::Value, path: Vec<Seg>) -> Result<Value, CampaignError> {
        Ok(match value {
            toml::Value::String(s) => Value::String(s),
            toml::Value::Integer(i) => Value::from(i),
            toml::Value::Float(f) => match serde_json::Number::from_f64(f) {
                Some(n) => Value::Number(n),
                None => {
                    return Err(self.invalid(
                        &path,
                        format!(
                            "{} is {f}, which JSON cannot carry: use a finite number",
                            dotted(&path)
                        ),
                    ));
                }
            },
            toml::Value::Boolean(b) => Value::Bool(b),
            toml::Value::Datetime(d) => Value::String(d.to_string()),
            toml::Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    let mut p = path.clone();
                    p.push(Seg::Index(i));
                    out.push(self.to_json(item, p)?);
                }
                Value::Array(out)
            }
            toml::Value::Table(table) => {
                let mut out = serde_json::Map::with_capacity(table.len());
                for (k, v) in table {
                    let mut p = path.clone();
                    p.push(Seg::Key(k.clone()));
                    out.insert(k, self.to_json(v, p)?);
                }
                Value::Object(out)
            }
        })
    }
}

/// What is wrong at a place in `[message.content]`.
enum ContentProblem {
    /// A credential-like key, which gets the API-key message.
    Secret(String),
    Other(String),
}

/// Checks `content` against its kind's wire type, naming the path of the first
/// problem. This is what `MessageContent::from_json` does, with the path kept.
fn check_content(kind: MessageKind, content: &Value) -> Result<(), (Vec<Seg>, ContentProblem)> {
    fn check<T: serde::de::DeserializeOwned>(v: &Value) -> Result<(), (Vec<Seg>, ContentProblem)> {
        serde_path_to_error::deserialize::<_, T>(v)
            .map(drop)
            .map_err(|e| {
                let mut path = segs(e.path());
                let message = e.into_inner().to_string();
                let reason = content_reason(&mut path, &message);
                (path, reason)
            })
    }
    match kind {
        MessageKind::Text => check::<TextContent>(content),
        MessageKind::Media => check::<MediaContent>(content),
        MessageKind::Interactive => check::<InteractiveContent>(content),
        MessageKind::Template => check::<TemplateContent>(content),
        MessageKind::Location => check::<LocationContent>(content),
    }
}

/// Rewords serde_json's message for a content path. For an unknown key it
/// makes sure the path ends in that key, so the line reported is the key's.
fn content_reason(path: &mut Vec<Seg>, message: &str) -> ContentProblem {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let mut parts = rest.splitn(2, '`');
        let unknown = parts.next().unwrap_or_default().to_owned();
        // serde words the list as "`a`", "`a` or `b`" or "one of `a`, `b`, `c`".
        let expected: Vec<String> = parts
            .next()
            .and_then(|r| r.strip_prefix(", expected "))
            .unwrap_or_default()
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .trim_start_matches("one of ")
            .replace(" or ", ", ")
            .split(", ")
            .map(|k| k.trim().trim_matches('`').to_owned())
            .filter(|k| !k.is_empty())
            .collect();
        // The path points at the unknown key itself: keep it so the line is the key's line.
        if path.last() != Some(&Seg::Key(unknown.clone())) {
            path.push(Seg::Key(unknown.clone()));
        }
        if is_secret_key(&unknown) {
            return ContentProblem::Secret(unknown);
        }
        return ContentProblem::Other(match expected.as_slice() {
            [] => format!("unknown key `{unknown}`"),
            [one] => format!("unknown key `{unknown}` (expected {one})"),
            many => format!(
                "unknown key `{unknown}` (expected one of {})",
                many.join(", ")
            ),
        });
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let missing = rest.split('`').next().unwrap_or_default();
        return ContentProblem::Other(format!("missing key `{missing}`"));
    }
    ContentProblem::Other(match type_mismatch(message) {
        Some((found, expected)) => {
            let hint = if expected == "a string" && !found.starts_with("map") {
                ": quote it"
            } else {
                ""
            };
            format!("must be {expected}, found {found}{hint}")
        }
        None => one_line(message),
    })
}

/// Splits serde's "invalid type: X, expected Y" (with or without serde_json's
/// " at line .. column .." tail) into plain words.
fn type_mismatch(message: &str) -> Option<(String, String)> {
    let rest = message.strip_prefix("invalid type: ")?;
    let (found, expected) = rest.split_once(", expected ")?;
    let expected = expected
        .split(" at line ")
        .next()
        .unwrap_or(expected)
        .trim();
    let expected = match expected {
        "i64" | "u64" | "i32" | "u32" | "usize" => "an integer".to_owned(),
        "f64" | "f32" => "a number".to_owned(),
        e if e.starts_with("struct ") || e == "a map" => "a table".to_owned(),
        e if e.starts_with("a sequence") => "an array".to_owned(),
        e => e.to_owned(),
    };
    let found = match found {
        "map" => "a table".to_owned(),
        "sequence" => "an array".to_owned(),
        f => f.to_owned(),
    };
    Some((found, expected))
}

fn is_secret_key(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_KEYS.contains(&lower.as_str())
}

/// How messages name the table at `path`: `[send]`, `[send] window`, `the top level`.
fn table_name(path: &[Seg]) -> String {
    match path {
        [] => "the top level".to_owned(),
        [Seg::Key(a), Seg::Key(b)] if a == "send" && b == "window" => "[send] window".to_owned(),
        _ => format!("[{}]", dotted(path)),
    }
}

/// A frequency cap's period: a whole number of hours (`"24h"`) or days
/// (`"7d"`), up to a year. Months are left out on purpose: their length varies.
/// A lease as written (`30s`, `2m`), when it is one and not too short.
fn humantime_lease(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = number.parse().ok()?;
    let secs = match unit.trim() {
        "s" => n,
        "m" => n.checked_mul(60)?,
        _ => return None,
    };
    let lease = std::time::Duration::from_secs(secs);
    use crate::state::location::{MAX_LEASE, MIN_LEASE};
    (MIN_LEASE..=MAX_LEASE).contains(&lease).then_some(lease)
}

fn parse_period(text: &str) -> Option<chrono::Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: i64 = number.trim().parse().ok().filter(|n| *n > 0)?;
    let hours = match unit {
        "h" => n,
        "d" => n.checked_mul(24)?,
        _ => return None,
    };
    (hours <= 366 * 24).then(|| chrono::Duration::hours(hours))
}

fn dotted(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
    out
}

fn expected_keys(table: &[Seg]) -> &'static [&'static str] {
    let names: Vec<&str> = table
        .iter()
        .filter_map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
        .collect();
    match names.as_slice() {
        [] => ROOT_KEYS,
        ["campaign"] => CAMPAIGN_KEYS,
        ["recipients"] => RECIPIENTS_KEYS,
        ["send"] => SEND_KEYS,
        ["send", "window"] => WINDOW_KEYS,
        ["api"] => API_KEYS,
        ["message"] => MESSAGE_KEYS,
        ["ledger"] => LEDGER_KEYS,
        ["audience"] => AUDIENCE_KEYS,
        ["state"] => STATE_KEYS,
        _ => &[],
    }
}

/// 1-based line of a byte offset.
pub(super) fn line_of(bytes: &[u8], offset: usize) -> usize {
    let end = offset.min(bytes.len());
    bytes[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

fn one_line(message: &str) -> String {
    message.trim().replace('\n', "; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveTime;

    const MINIMAL: &str = r#"
[campaign]
name = "x"

[recipients]
csv = "r.csv"

[message]
type = "text"
[message.content]
text = "Hi {{name}}"
"#;

    fn load(text: &str) -> Result<Campaign, CampaignError> {
        Campaign::from_toml_str(text, Path::new("campaigns/x/campaign.toml"))
    }

    fn err(text: &str) -> String {
        match load(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn state_reads_a_database_url_and_refuses_a_password_in_the_file() {
        let c = load(&format!(
            "{MINIMAL}[state]\nurl = \"postgres://app@db.example/c\"\nlease = \"2m\"\n"
        ))
        .unwrap();
        assert_eq!(c.state.url.as_deref(), Some("postgres://app@db.example/c"));
        assert_eq!(c.state.lease, Some(Duration::from_secs(120)));
        assert_eq!(load(MINIMAL).unwrap().state, StateSpec::default());
        let with_password = err(&format!(
            "{MINIMAL}[state]\nurl = \"postgres://app:s3cret@db.example/c\"\n"
        ));
        assert!(
            with_password.contains("[state]") && with_password.contains("CONVERS8_STATE_URL"),
            "{with_password}"
        );
        assert!(!with_password.contains("s3cret"), "{with_password}");
        let query_password = err(&format!(
            "{MINIMAL}[state]\nurl = \"postgres://db/c?password=s3cret\"\n"
        ));
        assert!(!query_password.contains("s3cret"), "{query_password}");
        let path = err(&format!("{MINIMAL}[state]\nurl = \"x.state.db\"\n"));
        assert!(path.contains("--state PATH"), "{path}");
        for lease in ["1s", "soon", "30", "-5s"] {
            let e = err(&format!("{MINIMAL}[state]\nlease = \"{lease}\"\n"));
            assert!(e.contains("`lease` in [state]"), "{lease}: {e}");
        }
    }

    #[test]
    fn audience_reads_a_cap_and_names_what_is_wrong_with_one() {
        let c = load(&format!(
            "{MINIMAL}[audience]\nmax_messages = 2\nper = \"7d\"\n"
        ))
        .unwrap();
        let a = c.audience.expect("audience");
        assert_eq!((a.max_messages, a.per), (2, chrono::Duration::days(7)));
        assert_eq!(
            load(&format!(
                "{MINIMAL}[audience]\nmax_messages = 1\nper = \"36h\"\n"
            ))
            .unwrap()
            .audience
            .map(|a| a.per),
            Some(chrono::Duration::hours(36))
        );
        for (body, expected) in [
            (
                "max_messages = 0\nper = \"7d\"",
                "`max_messages` in [audience] must be between 1",
            ),
            (
                "max_messages = 2\nper = \"1 week\"",
                "`per` in [audience] must be a period",
            ),
            (
                "max_messages = 2\nper = \"0d\"",
                "`per` in [audience] must be a period",
            ),
            ("max_messages = 2\nper = \"400d\"", "at most 366 days"),
            ("per = \"7d\"", "missing key `max_messages` in [audience]"),
            ("max_messages = 2", "missing key `per` in [audience]"),
            (
                "max_messages = 2\nper = \"7d\"\nmax = 1",
                "unknown key `max`",
            ),
        ] {
            let e = err(&format!("{MINIMAL}[audience]\n{body}\n"));
            assert!(e.starts_with("campaigns/x/campaign.toml:"), "{e}");
            assert!(e.contains(expected), "{body}: {e}");
        }
        // The cap counts the ledger's messages: no ledger, no cap.
        let e = err(&format!(
            "ledger = false\n{MINIMAL}[audience]\nmax_messages = 2\nper = \"7d\"\n"
        ));
        assert!(e.contains("remove `ledger = false`"), "{e}");
    }

    #[test]
    fn defaults() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.name, "x");
        assert_eq!(c.description, None);
        assert_eq!(c.recipients.csv, PathBuf::from("campaigns/x/r.csv"));
        assert_eq!(c.recipients.phone_column, "phone");
        assert_eq!(c.recipients.name_column, "name");
        assert_eq!(c.recipients.default_country, None);
        assert_eq!(c.recipients.delimiter, b',');
        assert_eq!(c.send, SendSpec::default());
        assert_eq!(c.send.concurrency, 8);
        assert_eq!(c.send.max_attempts, 5);
        assert_eq!(c.send.timeout, Duration::from_secs(30));
        assert_eq!(c.api.base_url, None);
        assert!(c.vars.is_empty());
        assert_eq!(c.message.kind, MessageKind::Text);
        assert_eq!(
            c.message.content,
            serde_json::json!({"text": "Hi {{name}}"})
        );
        assert_eq!(
            c.file_sha256,
            format!("{:x}", Sha256::digest(MINIMAL.as_bytes()))
        );
        assert_eq!(c.file_sha256.len(), 64);
    }

    #[test]
    fn the_design_example_loads() {
        let text = r#"
[campaign]
name = "black-friday-2026"
description = "Black Friday offer to opted-in customers"

[recipients]
csv = "recipients.csv"
phone_column = "phone"
name_column = "name"
default_country = "ke"
delimiter = "\t"

[send]
concurrency = 16
rate_per_second = 20
max_attempts = 5
timeout_secs = 2.5
window = { start = "08:00", end = "20:00", timezone = "Africa/Nairobi" }
daily_limit = 1000

[api]
base_url = "http://127.0.0.1:8080/"

[vars]
shop_url = "https://example.com/bf"
discount = 30
launched = 2026-11-27
tags = ["a", 1.5]

[message]
type = "text"
[message.content]
text = "Hi {{name}}, {{vars.discount}} off today: {{vars.shop_url}}"
"#;
        let c = load(text).unwrap();
        assert_eq!(
            c.description.as_deref(),
            Some("Black Friday offer to opted-in customers")
        );
        assert_eq!(
            c.recipients.default_country,
            Some(phonenumber::country::Id::KE)
        );
        assert_eq!(c.recipients.delimiter, b'\t');
        assert_eq!(c.send.concurrency, 16);
        assert_eq!(c.send.rate_per_second, Some(20.0));
        assert_eq!(c.send.timeout, Duration::from_millis(2500));
        assert_eq!(c.send.daily_limit, Some(1000));
        let w = c.send.window.unwrap();
        assert_eq!(w.timezone, chrono_tz::Africa::Nairobi);
        assert_eq!(w.start, NaiveTime::from_hms_opt(8, 0, 0).unwrap());
        assert_eq!(c.api.base_url.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(c.vars["discount"], serde_json::json!(30));
        assert_eq!(c.vars["launched"], serde_json::json!("2026-11-27"));
        assert_eq!(c.vars["tags"], serde_json::json!(["a", 1.5]));
    }

    #[test]
    fn csv_path_is_relative_to_the_campaign_file() {
        let c = Campaign::from_toml_str(MINIMAL, Path::new("/srv/c/campaign.toml")).unwrap();
        assert_eq!(c.recipients.csv, PathBuf::from("/srv/c/r.csv"));
        let c = Campaign::from_toml_str(MINIMAL, Path::new("campaign.toml")).unwrap();
        assert_eq!(c.recipients.csv, PathBuf::from("r.csv"));
        let abs = MINIMAL.replace("\"r.csv\"", "\"/data/r.csv\"");
        let c = Campaign::from_toml_str(&abs, Path::new("/srv/c/campaign.toml")).unwrap();
        assert_eq!(c.recipients.csv, PathBuf::from("/data/r.csv"));
    }

    #[test]
    fn unknown_key_names_file_line_table_and_the_choices() {
        let text = format!("{MINIMAL}\n[send]\nconcurency = 4\n");
        let line = text
            .lines()
            .position(|l| l.starts_with("concurency"))
            .unwrap()
            + 1;
        let e = err(&text);
        assert!(
            e.starts_with(&format!("campaigns/x/campaign.toml:{line}: unknown key `concurency` in [send] (expected one of concurrency, rate_per_second,")),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}\n[sned]\nconcurrency = 4\n"));
        assert!(e.contains("unknown key `sned` in the top level"), "{e}");
        let e = err(&MINIMAL.replace("name = \"x\"", "name = \"x\"\ntitle = \"y\""));
        assert!(
            e.contains(":4: unknown key `title` in [campaign] (expected one of name, description)"),
            "{e}"
        );
        let e = err(&format!(
            "{MINIMAL}\n[send]\nwindow = {{ start = \"08:00\", end = \"20:00\", tz = \"UTC\" }}\n"
        ));
        assert!(
            e.contains("unknown key `tz` in [send] window (expected one of start, end, timezone)"),
            "{e}"
        );
    }

    #[test]
    fn vars_accept_any_key() {
        let c = load(&format!(
            "{MINIMAL}\n[vars]\nanything = 1\ntoken = \"ok here\"\n"
        ))
        .unwrap();
        assert_eq!(c.vars["token"], serde_json::json!("ok here"));
    }

    #[test]
    fn api_keys_in_the_file_get_their_own_message() {
        let text =
            format!("{MINIMAL}\n[api]\nbase_url = \"https://x.example\"\napi_key = \"sk_live\"\n");
        let line = text.lines().position(|l| l.starts_with("api_key")).unwrap() + 1;
        let e = err(&text);
        assert!(
            e.contains(&format!(":{line}: `api_key` in [api] is not allowed")),
            "{e}"
        );
        assert!(e.contains("CONVERS8_API_KEY"), "{e}");
        let e = err(&format!("token = \"x\"\n{MINIMAL}"));
        assert!(
            e.contains(":1: `token` in the top level is not allowed"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}key = \"abc\"\n"));
        assert!(
            e.contains("`key` in [message.content] is not allowed"),
            "{e}"
        );
        assert!(e.contains("--api-key-file"), "{e}");
    }

    #[test]
    fn wrong_types_name_the_key_and_line() {
        let text = format!("{MINIMAL}\n[send]\nconcurrency = \"16\"\n");
        let line = text
            .lines()
            .position(|l| l.starts_with("concurrency"))
            .unwrap()
            + 1;
        let e = err(&text);
        assert!(
            e.contains(&format!(
                ":{line}: `concurrency` in [send] must be an integer, found string \"16\""
            )),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}\n[send]\nwindow = \"08-20\"\n"));
        assert!(e.contains("`window` in [send] must be a table"), "{e}");
        let e = err(&MINIMAL.replace("name = \"x\"", "name = 3"));
        assert!(
            e.contains(":3: `name` in [campaign] must be a string"),
            "{e}"
        );
    }

    #[test]
    fn ranges_are_checked() {
        for (k, v) in [
            ("concurrency", "0"),
            ("concurrency", "1025"),
            ("max_attempts", "0"),
            ("max_attempts", "101"),
            ("timeout_secs", "0"),
            ("rate_per_second", "-1"),
            ("daily_limit", "0"),
        ] {
            let text = format!("{MINIMAL}\n[send]\n{k} = {v}\n");
            let line = text.lines().count();
            let e = err(&text);
            assert!(
                e.contains(&format!(":{line}: `{k}` in [send] must be")),
                "{e}"
            );
        }
        let c = load(&format!(
            "{MINIMAL}\n[send]\nconcurrency = 1024\nmax_attempts = 100\n"
        ))
        .unwrap();
        assert_eq!((c.send.concurrency, c.send.max_attempts), (1024, 100));
    }

    #[test]
    fn message_type_must_be_known() {
        let e = err(&MINIMAL.replace("type = \"text\"", "type = \"sms\""));
        assert!(
            e.contains(":9: unknown message type 'sms' in [message]: use one of text, media, interactive, template, location"),
            "{e}"
        );
    }

    #[test]
    fn content_must_fit_its_type() {
        let text = r#"
[campaign]
name = "x"
[recipients]
csv = "r.csv"
[message]
type = "interactive"
[message.content]
type = "button"
body = { text = "Pick" }
[[message.content.action.buttons]]
type = "reply"
reply = { id = "a", title = "A" }
[[message.content.action.buttons]]
type = "reply"
reply = { id = "b", titel = "B" }
"#;
        let e = err(text);
        assert!(
            e.contains(":16: message.content.action.buttons[1].reply.titel: unknown key `titel` (expected one of id, title)"),
            "{e}"
        );
        let ok = text.replace("titel", "title");
        assert!(load(&ok).is_ok());

        let e = err(&MINIMAL.replace("text = \"Hi {{name}}\"", "txt = \"Hi\""));
        assert!(
            e.contains(":11: message.content.txt: unknown key `txt`"),
            "{e}"
        );
        let e = err(&MINIMAL.replace("type = \"text\"", "type = \"location\""));
        assert!(
            e.contains("message.content.text: unknown key `text`"),
            "{e}"
        );
        let e = err(&MINIMAL
            .replace("type = \"text\"", "type = \"media\"")
            .replace("text = \"Hi {{name}}\"", "type = \"image\""));
        assert!(
            e.contains(":10: message.content: missing key `url` (for type = \"media\")"),
            "{e}"
        );
        let loc = MINIMAL
            .replace("type = \"text\"", "type = \"location\"")
            .replace(
                "text = \"Hi {{name}}\"",
                "latitude = -1.28\nlongitude = \"36.8\"",
            );
        let e = err(&loc);
        assert!(e.contains(":11: message.content.latitude: must be a string, found floating point `-1.28`: quote it"), "{e}");
        let e = err(&MINIMAL.replace("[message.content]\ntext = \"Hi {{name}}\"\n", ""));
        assert!(e.contains(":8: missing key `content` in [message]"), "{e}");
    }

    #[test]
    fn required_tables_and_keys() {
        let e = err("[recipients]\ncsv = \"r.csv\"\n");
        assert_eq!(
            e,
            "campaigns/x/campaign.toml: missing [campaign] table: add [campaign] with name = \"...\""
        );
        let e = err(&MINIMAL.replace("csv = \"r.csv\"", ""));
        assert!(e.contains(":5: missing key `csv` in [recipients]"), "{e}");
        let e = err(&MINIMAL.replace("name = \"x\"", "name = \"  \""));
        assert!(e.contains(":3: `name` in [campaign] is empty"), "{e}");
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let e = err(&format!("{MINIMAL}\n[send\n"));
        let line = MINIMAL.lines().count() + 2;
        assert!(
            e.starts_with(&format!(
                "campaigns/x/campaign.toml:{line}: TOML syntax error"
            )),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let e = err(&format!("{MINIMAL}\n[campaign]\nname = \"y\"\n"));
        assert!(e.contains("TOML syntax error"), "{e}");
    }

    #[test]
    fn country_timezone_times_delimiter_and_url() {
        let e = err(&MINIMAL.replace(
            "csv = \"r.csv\"",
            "csv = \"r.csv\"\ndefault_country = \"Kenya\"",
        ));
        assert!(
            e.contains(":7: unknown country 'Kenya' for `default_country` in [recipients]"),
            "{e}"
        );
        let e = err(&MINIMAL.replace(
            "csv = \"r.csv\"",
            "csv = \"r.csv\"\ndefault_country = \"XX\"",
        ));
        assert!(e.contains("unknown country 'XX'"), "{e}");

        let window = |s: &str, e: &str, tz: &str| {
            format!(
                "{MINIMAL}\n[send]\nwindow = {{ start = \"{s}\", end = \"{e}\", timezone = \"{tz}\" }}\n"
            )
        };
        let text = window("08:00", "20:00", "Mars/Base");
        let e = err(&text);
        assert!(
            e.ends_with(&format!(
                ":{}: unknown timezone 'Mars/Base' in [send] window: use an IANA name such as Africa/Nairobi, or \"recipient\"",
                text.lines().count()
            )),
            "{e}"
        );
        assert!(
            err(&window("8am", "20:00", "UTC"))
                .contains("`start` in [send] window must be a time written \"HH:MM\"")
        );
        assert!(err(&window("08:00", "25:00", "UTC")).contains("`end` in [send] window"));
        assert!(err(&window("08:00", "08:00", "UTC")).contains("are equal"));
        let c = load(&window("20:00", "24:00", "UTC")).unwrap();
        assert_eq!(c.send.window.unwrap().end, NaiveTime::MIN);

        let e = err(&MINIMAL.replace("csv = \"r.csv\"", "csv = \"r.csv\"\ndelimiter = \";;\""));
        assert!(
            e.contains(":7: `delimiter` in [recipients] must be one ASCII character"),
            "{e}"
        );
        let c = load(&MINIMAL.replace("csv = \"r.csv\"", "csv = \"r.csv\"\ndelimiter = \";\""))
            .unwrap();
        assert_eq!(c.recipients.delimiter, b';');

        for bad in ["ftp://x.example", "not a url", "https://"] {
            let e = err(&format!("{MINIMAL}\n[api]\nbase_url = \"{bad}\"\n"));
            assert!(
                e.contains("`base_url` in [api] must be an http(s) URL"),
                "{e}"
            );
        }
    }

    #[test]
    fn load_reports_missing_files_and_bad_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let e = Campaign::load(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "cannot read campaign file {}: ",
                missing.display()
            )),
            "{e}"
        );
        assert!(e.contains("No such file"), "{e}");

        let latin1 = dir.path().join("latin1.toml");
        std::fs::write(&latin1, b"[campaign]\nname = \"caf\xe9\"\n").unwrap();
        let e = Campaign::load(&latin1).unwrap_err().to_string();
        assert!(
            e.ends_with(":2: the campaign file is not valid UTF-8: save it as UTF-8"),
            "{e}"
        );

        let good = dir.path().join("campaign.toml");
        let with_bom = format!("\u{feff}{MINIMAL}");
        std::fs::write(&good, &with_bom).unwrap();
        let c = Campaign::load(&good).unwrap();
        assert_eq!(c.recipients.csv, dir.path().join("r.csv"));
        assert_eq!(c.file, good);
        assert_eq!(
            c.file_sha256,
            format!("{:x}", Sha256::digest(with_bom.as_bytes()))
        );
    }

    #[test]
    fn a_window_in_recipients_hours_needs_a_fallback_zone() {
        let recipient =
            "[send]\nwindow = { start = \"09:00\", end = \"20:00\", timezone = \"recipient\" }\n";
        let e = err(&format!("{MINIMAL}\n{recipient}"));
        assert!(
            e.contains("missing key `fallback_timezone` in [recipients]"),
            "{e}"
        );
        let text = MINIMAL.replace(
            "csv = \"r.csv\"",
            "csv = \"r.csv\"\ntimezone_column = \"tz\"\nfallback_timezone = \"Africa/Nairobi\"",
        );
        let c = load(&format!("{text}\n{recipient}")).unwrap();
        let w = c.send.window.unwrap();
        assert!(w.per_recipient);
        // Rows whose zone is unknown are read in the fallback zone.
        assert_eq!(w.timezone, chrono_tz::Africa::Nairobi);
        assert_eq!(c.recipients.timezone_column.as_deref(), Some("tz"));
        // The keys that place rows mean nothing with a window in one zone.
        let e = err(&format!(
            "{text}\n[send]\nwindow = {{ start = \"09:00\", end = \"20:00\", timezone = \"UTC\" }}\n"
        ));
        assert!(
            e.contains("`timezone_column` in [recipients] is only used with window"),
            "{e}"
        );
        let e = err(&format!(
            "{}\n{recipient}",
            MINIMAL.replace(
                "csv = \"r.csv\"",
                "csv = \"r.csv\"\nfallback_timezone = \"Moon/Base\""
            )
        ));
        assert!(
            e.contains("unknown timezone 'Moon/Base' for `fallback_timezone`"),
            "{e}"
        );
    }

    #[test]
    fn known_keys_match_the_structs() {
        // A file using every listed key must load: catches a list that names a
        // key the structs do not accept.
        let text = r#"
[campaign]
name = "x"
description = "d"
[recipients]
csv = "r.csv"
phone_column = "p"
name_column = "n"
default_country = "KE"
delimiter = ","
timezone_column = "tz"
fallback_timezone = "UTC"
exclude = ["x.csv"]
[send]
concurrency = 1
rate_per_second = 1
max_attempts = 1
timeout_secs = 1
window = { start = "08:00", end = "20:00", timezone = "recipient" }
daily_limit = 1
[api]
base_url = "https://x.example"
[vars]
[message]
type = "text"
content = { text = "t" }
[ledger]
enabled = true
path = "l.db"
[audience]
max_messages = 2
per = "7d"
[state]
url = "postgres://app@db.example/campaigns"
lease = "30s"
"#;
        load(text).unwrap();
        for list in [
            ROOT_KEYS,
            CAMPAIGN_KEYS,
            RECIPIENTS_KEYS,
            SEND_KEYS,
            WINDOW_KEYS,
            API_KEYS,
            MESSAGE_KEYS,
            LEDGER_KEYS,
            AUDIENCE_KEYS,
            STATE_KEYS,
        ] {
            for k in list {
                assert!(
                    text.contains(&format!("{k} =")) || text.contains(&format!("[{k}]")),
                    "{k}"
                );
            }
        }
    }
}
