//! What several commands share: the campaign argument and how it is loaded,
//! where the state file is, and how the API key and base URL are found.
//! Flags become checked values here; nothing below the CLI sees a flag.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::output::say;
use convers8_campaign::api::client::{BASE_URL_ENV, DEFAULT_BASE_URL};
use convers8_campaign::api::{ApiKey, ClientConfig};
use convers8_campaign::campaign::Campaign;
use convers8_campaign::state;

/// The campaign file and its state.
#[derive(Debug, Clone, clap::Args)]
pub struct CampaignArgs {
    /// The campaign file (TOML).
    #[arg(value_name = "CAMPAIGN")]
    pub campaign: PathBuf,

    /// The state file [default: <campaign file stem>.state.db beside the campaign].
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,
}

impl CampaignArgs {
    pub fn load(&self) -> anyhow::Result<Campaign> {
        Ok(Campaign::load(&self.campaign)?)
    }

    pub fn state_path(&self) -> PathBuf {
        self.state
            .clone()
            .unwrap_or_else(|| state::default_state_path(&self.campaign))
    }
}

/// How to reach the API.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ApiArgs {
    /// The API's base URL [default: $CONVERS8_BASE_URL, else [api] base_url, else the production server].
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,

    /// Read the API key from this file (first line) instead of $CONVERS8_API_KEY.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Allow a plain http:// base URL to a host other than this machine (the key travels unencrypted).
    #[arg(long)]
    pub allow_insecure_http: bool,
}

impl ApiArgs {
    /// The base URL by precedence: flag, environment, campaign file, default.
    pub fn base_url(&self, campaign_base: Option<&str>) -> String {
        self.base_url
            .clone()
            .or_else(|| {
                std::env::var(BASE_URL_ENV)
                    .ok()
                    .filter(|s| !s.trim().is_empty())
            })
            .or_else(|| campaign_base.map(str::to_owned))
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned())
    }

    /// The key from `--api-key-file`, else the environment; `None` when neither has one.
    pub fn api_key(&self) -> anyhow::Result<Option<ApiKey>> {
        if let Some(path) = &self.api_key_file {
            return Ok(Some(ApiKey::from_file(path)?));
        }
        Ok(ApiKey::from_env()?)
    }

    /// A client configuration, or `None` when no key is available.
    pub fn client_config(
        &self,
        campaign_base: Option<&str>,
        timeout: std::time::Duration,
    ) -> anyhow::Result<Option<ClientConfig>> {
        let Some(key) = self.api_key()? else {
            return Ok(None);
        };
        let mut config = ClientConfig::new(self.base_url(campaign_base), key);
        config.timeout = timeout;
        config.connect_timeout = timeout.min(std::time::Duration::from_secs(10));
        config.allow_insecure_http = self.allow_insecure_http;
        // Refused before any planning or locking, not when the first request is due.
        config.check()?;
        Ok(Some(config))
    }

    /// Warns when the key is about to go where the campaign file says rather
    /// than to the Convers8 API: a campaign file from someone else could send
    /// your key to their server.
    pub fn warn_if_campaign_redirects(&self, campaign: &Campaign) {
        let Some(base) = campaign.api.base_url.as_deref() else {
            return;
        };
        let overridden = self.base_url.is_some()
            || std::env::var(BASE_URL_ENV).is_ok_and(|v| !v.trim().is_empty());
        if !overridden && !convers8_campaign::api::is_production(base) {
            say!("warning: {}", foreign_base_url(campaign, base));
        }
    }

    /// Like [`ApiArgs::client_config`], but a missing key is an error.
    pub fn require_client_config(
        &self,
        campaign_base: Option<&str>,
        timeout: std::time::Duration,
    ) -> anyhow::Result<ClientConfig> {
        self.client_config(campaign_base, timeout)?
            .ok_or(convers8_campaign::api::client::KeyError::Missing)
            .context("cannot call the API")
    }
}

/// What to say about a campaign file whose `[api] base_url` is not the
/// Convers8 API.
pub fn foreign_base_url(campaign: &Campaign, base: &str) -> String {
    format!(
        "{} sends the API key to {base} ([api] base_url), not to the Convers8 API at {DEFAULT_BASE_URL}: use it only if you trust that server (--base-url overrides it)",
        campaign.file.display()
    )
}

/// The command a user types to run `args` again (for "resume with" hints).
pub fn rerun_command(subcommand: &str, campaign: &Path, state: Option<&Path>) -> String {
    let mut cmd = format!("convers8-campaign {subcommand} {}", shell_quote(campaign));
    if let Some(state) = state {
        cmd.push_str(&format!(" --state {}", shell_quote(state)));
    }
    cmd
}

fn shell_quote(path: &Path) -> String {
    let text = path.display().to_string();
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./+:@".contains(c))
    {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}
