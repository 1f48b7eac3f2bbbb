//! The campaign file: reading `campaign.toml` into one checked [`Campaign`].
//!
//! This module owns the model — the file's keys as typed values, with their
//! defaults. Reading and checking the file, with errors that name the file,
//! the line and the key, is `diagnostics`'s job; the send window's clock
//! arithmetic is `window`'s. None of it reads the CSV, renders templates
//! (the content is only checked to have the shape of its `type`), looks at the
//! environment, or accepts an API key: the key comes from `CONVERS8_API_KEY`
//! or `--api-key-file`, never from a file that gets copied around and
//! committed.

mod diagnostics;
mod window;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::api::model::MessageKind;
pub use diagnostics::CampaignError;
pub use window::SendWindow;

/// Where messages go when neither the command line, the environment nor the file says otherwise.
pub use crate::api::client::DEFAULT_BASE_URL;

const DEFAULT_PHONE_COLUMN: &str = "phone";
const DEFAULT_NAME_COLUMN: &str = "name";
const DEFAULT_CONCURRENCY: usize = 8;
const MAX_CONCURRENCY: i64 = 1024;
const DEFAULT_MAX_ATTEMPTS: u32 = 5;
const MAX_MAX_ATTEMPTS: i64 = 100;
const DEFAULT_TIMEOUT_SECS: f64 = 30.0;

/// A campaign file, read and checked. Everything the planner and the runner
/// need from the file, with defaults filled in.
#[derive(Debug, Clone)]
pub struct Campaign {
    /// The campaign file as given.
    pub file: PathBuf,
    pub name: String,
    pub description: Option<String>,
    pub recipients: RecipientsSpec,
    pub send: SendSpec,
    pub api: ApiSpec,
    /// `[vars]`, TOML values converted to JSON (dates become strings).
    pub vars: serde_json::Map<String, Value>,
    pub message: MessageSpec,
    /// `[ledger]` (or `ledger = false`).
    pub ledger: LedgerSpec,
    /// `[audience]`: the frequency cap per phone, across campaigns.
    pub audience: Option<AudienceSpec>,
    /// `[state]`: where the state lives when not in a file beside the campaign.
    pub state: StateSpec,
    /// Lowercase hex SHA-256 of the campaign file's bytes.
    pub file_sha256: String,
}

/// `[state]`: a PostgreSQL database for the campaign's state, shared by
/// every runner (`--state` and `CONVERS8_STATE_URL` override it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateSpec {
    /// A `postgres://` URL without a password.
    pub url: Option<String>,
    /// How long a runner's claim outlives its last renewal.
    pub lease: Option<std::time::Duration>,
}

/// `[recipients]`: where the CSV is and how to read it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipientsSpec {
    /// Resolved relative to the campaign file's directory.
    pub csv: PathBuf,
    pub phone_column: String,
    pub name_column: String,
    pub default_country: Option<phonenumber::country::Id>,
    pub delimiter: u8,
    /// The CSV column holding each row's IANA zone, for a window in each
    /// recipient's own zone. An empty cell falls back to the phone's country.
    pub timezone_column: Option<String>,
    /// The zone of rows whose own zone is unknown (a per-recipient window only).
    pub fallback_timezone: Option<chrono_tz::Tz>,
    /// `exclude`: CSVs of phones this campaign never sends to (suppressed,
    /// `excluded`), resolved relative to the campaign file.
    pub exclude: Vec<PathBuf>,
}

/// `[ledger]`: whether this campaign records its messages in the account's
/// ledger, and which ledger (see [`crate::ledger::location`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerSpec {
    /// `false` for `ledger = false` or `[ledger] enabled = false`.
    pub enabled: bool,
    /// `[ledger] path`, resolved relative to the campaign file.
    pub path: Option<PathBuf>,
}

impl Default for LedgerSpec {
    fn default() -> Self {
        LedgerSpec {
            enabled: true,
            path: None,
        }
    }
}

/// `[audience]`: at most `max_messages` messages to one phone in any `per`,
/// counting every campaign that shares the ledger (this one included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudienceSpec {
    pub max_messages: u32,
    pub per: chrono::Duration,
    /// `per` as written (`"7d"`), for messages.
    pub per_text: String,
}

/// `[send]`: pacing and the attempt budget.
#[derive(Debug, Clone, PartialEq)]
pub struct SendSpec {
    pub concurrency: usize,
    pub rate_per_second: Option<f64>,
    pub max_attempts: u32,
    pub timeout: Duration,
    pub window: Option<SendWindow>,
    pub daily_limit: Option<u32>,
}

/// `[api]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApiSpec {
    /// As written in the file, without a trailing `/`; `None` when absent.
    pub base_url: Option<String>,
}

/// `[message]`: the kind and its content, every string of which is a template.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageSpec {
    pub kind: MessageKind,
    /// `[message.content]` as JSON, templates not yet rendered.
    pub content: Value,
}

impl Campaign {
    /// Reads and checks the campaign file at `path`.
    pub fn load(path: &Path) -> Result<Campaign, CampaignError> {
        let bytes = std::fs::read(path).map_err(|source| CampaignError::Read {
            path: path.to_owned(),
            source,
        })?;
        let text = std::str::from_utf8(&bytes).map_err(|e| CampaignError::NotUtf8 {
            file: path.to_owned(),
            line: diagnostics::line_of(&bytes, e.valid_up_to()),
        })?;
        Campaign::from_toml_str(text, path)
    }

    /// Checks campaign TOML already in memory. `file` names it in messages,
    /// anchors the relative CSV path and is kept as [`Campaign::file`].
    pub fn from_toml_str(text: &str, file: &Path) -> Result<Campaign, CampaignError> {
        let file_sha256 = format!("{:x}", Sha256::digest(text.as_bytes()));
        // Editors on Windows like to start files with a BOM; TOML does not allow one.
        // It holds no newline, so stripping it leaves line numbers as they are.
        let body = text.strip_prefix('\u{feff}').unwrap_or(text);
        diagnostics::check(body, file, file_sha256)
    }
}

impl Default for SendSpec {
    fn default() -> Self {
        SendSpec {
            concurrency: DEFAULT_CONCURRENCY,
            rate_per_second: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS as u64),
            window: None,
            daily_limit: None,
        }
    }
}
