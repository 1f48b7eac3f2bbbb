//! What several commands share: the campaign argument and how it is loaded,
//! where the state file is (a `--sandbox` rehearsal's too), how the API key
//! (from a file, stdin or the environment) and base URL are found, and how
//! the program names itself in hints ([`program`]). Flags become checked
//! values here; nothing below the CLI sees a flag.

use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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

    /// The state: a file, or a postgres:// URL of a database shared by
    /// every runner [default: $CONVERS8_STATE_URL, else [state] url, else
    /// <campaign file stem>.state.db beside the campaign].
    #[arg(long, value_name = "PATH|URL")]
    pub state: Option<String>,
}

/// The state's URL when `--state` is not given (it holds the password, if
/// any, so it belongs in the environment rather than the campaign file).
pub const STATE_URL_ENV: &str = "CONVERS8_STATE_URL";

/// A campaign's state in a database is kept apart from its `--sandbox`
/// rehearsals by this suffix on the campaign's name.
const SANDBOX_CAMPAIGN_SUFFIX: &str = " (sandbox)";

impl CampaignArgs {
    pub fn load(&self) -> anyhow::Result<Campaign> {
        Ok(Campaign::load(&self.campaign)?)
    }

    /// `--state` or `$CONVERS8_STATE_URL`, as given.
    fn given_state(&self) -> Option<String> {
        self.state.clone().or_else(|| {
            std::env::var(STATE_URL_ENV)
                .ok()
                .filter(|s| !s.trim().is_empty())
        })
    }

    /// The default state file beside the campaign (a `--sandbox`
    /// rehearsal's own when `sandbox` is set).
    fn default_file(&self, sandbox: bool) -> PathBuf {
        let path = state::default_state_path(&self.campaign);
        if sandbox {
            sandbox_state_path(&path)
        } else {
            path
        }
    }

    /// The state as the operator named it, or the default file, without
    /// reading the campaign (for messages when the campaign cannot be read).
    pub fn state_shown(&self, sandbox: bool) -> String {
        match self.given_state() {
            Some(text) if state::location::is_postgres_url(&text) => {
                state::PgTarget::new(&text, "").shown().to_owned()
            }
            Some(text) => text,
            None => self.default_file(sandbox).display().to_string(),
        }
    }

    /// Where the campaign's state is: `--state`, else `$CONVERS8_STATE_URL`,
    /// else the campaign's `[state] url`, else the file beside the campaign.
    /// `campaign` is the loaded campaign when the caller has it; a database
    /// needs its name (one database holds many campaigns).
    pub fn location(
        &self,
        campaign: Option<&Campaign>,
        sandbox: bool,
    ) -> anyhow::Result<state::StateLocation> {
        let loaded;
        let campaign = match campaign {
            Some(c) => Some(c),
            // Only a database needs the campaign; a file state is read even
            // when the campaign file is gone.
            None if self.campaign.exists() => match self.load() {
                Ok(c) => {
                    loaded = c;
                    Some(&loaded)
                }
                Err(_)
                    if self
                        .given_state()
                        .is_some_and(|t| !state::location::is_postgres_url(&t)) =>
                {
                    None
                }
                Err(e) if self.given_state().is_some() => return Err(e),
                Err(_) => None,
            },
            None => None,
        };
        let text = self
            .given_state()
            .or_else(|| campaign.and_then(|c| c.state.url.clone()));
        match text {
            Some(text) if state::location::is_postgres_url(&text) => {
                let campaign = match campaign {
                    Some(c) => c,
                    None => anyhow::bail!(
                        "no campaign file at {}: a PostgreSQL state holds many campaigns, and the campaign file names this one",
                        self.campaign.display()
                    ),
                };
                let mut name = campaign.name.clone();
                if sandbox {
                    name.push_str(SANDBOX_CAMPAIGN_SUFFIX);
                }
                let location = state::StateLocation::parse(&text, &name);
                Ok(match campaign.state.lease {
                    Some(lease) => location.with_lease(lease),
                    None => location,
                })
            }
            Some(text) => Ok(state::StateLocation::File(PathBuf::from(text))),
            None => Ok(state::StateLocation::File(self.default_file(sandbox))),
        }
    }

    /// The state file, a `--sandbox` rehearsal's when `sandbox` is set:
    /// `--state` when given, else beside the campaign. `None` for a database.
    pub fn state_path_for(&self, sandbox: bool) -> Option<PathBuf> {
        match self.location(None, sandbox) {
            Ok(state::StateLocation::File(path)) => Some(path),
            _ => None,
        }
    }

    /// Opens the state read-only, saying how to create it when it is missing.
    /// When neither the state nor the campaign file exists, the campaign
    /// path is the likelier typo, so the error names it.
    pub fn open_state(&self, sandbox: bool) -> anyhow::Result<Box<dyn state::StateRead>> {
        let location = self.location(None, sandbox)?;
        match state::open_for_reading(&location) {
            Err(state::StateError::Missing { .. })
                if self.state.is_none() && !self.campaign.exists() =>
            {
                anyhow::bail!(
                    "no campaign file at {} (and no state file beside it): check the path",
                    self.campaign.display()
                )
            }
            Err(state::StateError::Missing { path }) => {
                let run = format!(
                    "{}{}",
                    rerun_command("run", &self.campaign, self.state.as_deref()),
                    if sandbox { " --sandbox" } else { "" }
                );
                anyhow::bail!(
                    "no state file at {path}: run the campaign first (`{run}`, or with --dry-run to plan only)"
                )
            }
            other => Ok(other?),
        }
    }
}

/// Where a `--sandbox` rehearsal keeps its state: `<stem>.sandbox.state.db`
/// beside the campaign, so a real run never mistakes it for sends. `run`,
/// `status` and `report` share this rule.
pub fn sandbox_state_path(default: &Path) -> PathBuf {
    let name = default
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .replace(".state.db", ".sandbox.state.db")
        })
        .unwrap_or_else(|| "campaign.sandbox.state.db".to_owned());
    default.with_file_name(name)
}

/// How to reach the API.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ApiArgs {
    /// The API's base URL [default: $CONVERS8_BASE_URL, else [api] base_url, else the production server].
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,

    /// Read the API key from this file (first line) instead of $CONVERS8_API_KEY; - reads stdin.
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
            if path.as_os_str() == "-" {
                return stdin_key().map(Some);
            }
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

/// `--api-key-file -`: the first line of stdin, read once however often
/// the key is asked for (a retry checks the key, then runs).
fn stdin_key() -> anyhow::Result<ApiKey> {
    static KEY: OnceLock<Result<ApiKey, String>> = OnceLock::new();
    KEY.get_or_init(|| read_stdin_key().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn read_stdin_key() -> anyhow::Result<ApiKey> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        // A key typed here would be echoed on the screen and kept in scrollback.
        anyhow::bail!(
            "--api-key-file -: stdin is a terminal; pipe the key in instead (e.g. `pass show convers8 | convers8-campaign run CAMPAIGN --api-key-file -`) or name a file"
        );
    }
    let mut line = String::new();
    // A key is a few dozen bytes: a line longer than this is not one.
    let read = stdin
        .lock()
        .take(64 * 1024)
        .read_line(&mut line)
        .context("--api-key-file -: cannot read the API key from stdin")?;
    if read == 0 {
        anyhow::bail!("--api-key-file -: stdin is empty: pipe the API key in on its first line");
    }
    Ok(ApiKey::new(line, "stdin (--api-key-file -)")?)
}

/// The command a user types to run `subcommand` on the campaign again (for
/// "to continue:" and other hints), named as this program was invoked.
pub fn rerun_command(subcommand: &str, campaign: &Path, state: Option<&str>) -> String {
    let mut cmd = format!("{} {subcommand} {}", program(), shell_quote(campaign));
    if let Some(state) = state {
        // A URL's password never goes into a hint (or a log that keeps it).
        let shown = if state::location::is_postgres_url(state) {
            state::PgTarget::new(state, "").shown().to_owned()
        } else {
            state.to_owned()
        };
        cmd.push_str(&format!(" --state {}", shell_quote(Path::new(&shown))));
    }
    cmd
}

/// The name this program goes by in hints, as the user can type it again:
/// `cargo run --release --` when `cargo run --release` started it, the bare
/// name when it was found on `PATH`, else the path it was started by.
pub fn program() -> &'static str {
    static PROGRAM: OnceLock<String> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        describe_program(&Invocation {
            argv0: std::env::args_os().next(),
            exe: std::env::current_exe().ok(),
            cargo: std::env::var_os("CARGO").is_some() && !parent_is_cargo_build(),
            manifest_dir: std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from),
            cwd: std::env::current_dir().ok(),
            path: std::env::var_os("PATH"),
        })
    })
}

/// The program's name when nothing better is known.
const NAME: &str = "convers8-campaign";

/// What [`program`] looks at, gathered so the rule can be tested.
#[derive(Debug, Default)]
struct Invocation {
    argv0: Option<OsString>,
    /// This executable's own path.
    exe: Option<PathBuf>,
    /// `$CARGO` is set (cargo sets it for what `cargo run` starts), and the
    /// parent process is not itself a cargo build (a test harness).
    cargo: bool,
    /// `$CARGO_MANIFEST_DIR`: the package `cargo run` ran.
    manifest_dir: Option<PathBuf>,
    cwd: Option<PathBuf>,
    /// `$PATH`.
    path: Option<OsString>,
}

fn describe_program(how: &Invocation) -> String {
    if how.cargo
        && let Some(cargo) = how
            .exe
            .as_deref()
            .and_then(|exe| cargo_run_prefix(exe, how.manifest_dir.as_deref(), how.cwd.as_deref()))
    {
        return cargo;
    }
    let Some(argv0) = how.argv0.as_deref().filter(|a| !a.is_empty()) else {
        return NAME.to_owned();
    };
    let typed = Path::new(argv0);
    // No slash: the shell found it on PATH under this name.
    if !argv0.to_string_lossy().contains('/') {
        return shell_quote(typed);
    }
    // A path: its bare name when PATH finds this same file under it.
    if let (Some(name), Some(path)) = (typed.file_name(), how.path.as_deref())
        && let Some(found) = std::env::split_paths(path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
        && same_file(&found, how.exe.as_deref().unwrap_or(typed))
    {
        return shell_quote(Path::new(name));
    }
    shell_quote(typed)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `cargo run [--release | --profile P] [--target T] [--manifest-path M] --`
/// when `exe` sits in a cargo target directory (`<target>/[<triple>/]<profile>/`,
/// recognised by the `CACHEDIR.TAG` cargo writes there).
fn cargo_run_prefix(exe: &Path, manifest_dir: Option<&Path>, cwd: Option<&Path>) -> Option<String> {
    let profile_dir = exe.parent()?;
    let profile = profile_dir.file_name()?.to_str()?;
    if matches!(profile, "deps" | "examples" | "build" | "incremental") {
        return None;
    }
    let mut target_dir = profile_dir.parent()?;
    let mut triple = None;
    if !is_cargo_target_dir(target_dir) {
        let name = target_dir.file_name()?.to_str()?;
        // Target triples have dashes: x86_64-unknown-linux-gnu.
        if !name.contains('-') {
            return None;
        }
        triple = Some(name);
        target_dir = target_dir.parent()?;
        if !is_cargo_target_dir(target_dir) {
            return None;
        }
    }
    let mut cmd = String::from("cargo run");
    match profile {
        "debug" => {}
        "release" => cmd.push_str(" --release"),
        other => cmd.push_str(&format!(" --profile {}", shell_quote(Path::new(other)))),
    }
    if let Some(triple) = triple {
        cmd.push_str(&format!(" --target {triple}"));
    }
    // cargo looks for the manifest from the current directory up.
    if let Some(dir) = manifest_dir
        && !cwd.is_some_and(|cwd| cwd.starts_with(dir))
    {
        cmd.push_str(&format!(
            " --manifest-path {}",
            shell_quote(&dir.join("Cargo.toml"))
        ));
    }
    cmd.push_str(" --");
    Some(cmd)
}

fn is_cargo_target_dir(dir: &Path) -> bool {
    dir.join("CACHEDIR.TAG").is_file() || dir.join(".rustc_info.json").is_file()
}

/// Whether the parent process is a program of a cargo build (a test harness
/// under `target/…/deps`): it passes cargo's environment on without being
/// `cargo run`. (`cargo run` replaces itself with this program, so its
/// parent is the shell.) Known on Linux only.
fn parent_is_cargo_build() -> bool {
    #[cfg(target_os = "linux")]
    {
        let parent = std::os::unix::process::parent_id();
        let Ok(exe) = std::fs::read_link(format!("/proc/{parent}/exe")) else {
            return false;
        };
        exe.ancestors().skip(1).any(is_cargo_target_dir)
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// A path as a shell word: as it is when it needs no quoting, else in single quotes.
pub fn shell_quote(path: &Path) -> String {
    let text = path.display().to_string();
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./+:@".contains(c))
    {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// How a run of `campaign` uses the ledger: a rehearsal's own one beside its
/// sandbox state, else the campaign's `[ledger] path`, `CONVERS8_LEDGER`,
/// the database of a state in PostgreSQL, or the per-user file; recording
/// unless the campaign opts out.
pub fn ledger_use(
    campaign: &Campaign,
    sandbox: bool,
    state: &state::StateLocation,
) -> anyhow::Result<convers8_campaign::engine::LedgerUse> {
    use convers8_campaign::engine::LedgerUse;
    use convers8_campaign::ledger::{LedgerError, LedgerLocation, location};
    let chosen = if sandbox {
        // A rehearsal with its state in a database keeps a ledger of its
        // own beside the campaign, apart from a file rehearsal's (each would
        // take the other's messages for a second campaign by accident).
        let beside = match state {
            state::StateLocation::File(path) => path.clone(),
            state::StateLocation::Postgres(_) => {
                let file = sandbox_state_path(&state::default_state_path(&campaign.file));
                file.with_file_name(
                    file.file_name()
                        .map(|n| {
                            n.to_string_lossy()
                                .replace(".state.db", ".postgres.state.db")
                        })
                        .unwrap_or_default(),
                )
            }
        };
        Some(LedgerLocation::File(location::for_sandbox_state(&beside)))
    } else {
        location::for_campaign(campaign.ledger.path.as_deref(), state)
    };
    if let Some(chosen) = &chosen
        && !sandbox
        && Some(chosen) == location::state_database(state).as_ref()
    {
        check_machine_opt_outs(chosen)?;
    }
    Ok(match (chosen, campaign.ledger.enabled) {
        (Some(at), true) => LedgerUse::Record(at),
        (Some(at), false) => LedgerUse::HonourOnly(at),
        (None, false) => LedgerUse::Off,
        (None, true) => return Err(LedgerError::NoLocation.into()),
    })
}

/// A run whose ledger became its state's database by default must not
/// forget the opt-outs this machine's per-user ledger file holds: it stops,
/// saying how to copy them over, until the database has them all.
fn check_machine_opt_outs(
    database: &convers8_campaign::ledger::LedgerLocation,
) -> anyhow::Result<()> {
    use convers8_campaign::ledger::{self, LedgerLocation, location};
    let Some(file) = location::default_path() else {
        return Ok(());
    };
    let Some(machine) = ledger::open_existing(&LedgerLocation::File(file.clone()))? else {
        return Ok(());
    };
    let on_file = machine.opt_outs()?;
    if on_file.is_empty() {
        return Ok(());
    }
    let phones: Vec<&str> = on_file.iter().map(|o| o.phone.as_str()).collect();
    let in_database = match ledger::open_existing(database)? {
        Some(shared) => shared.opted_out(&phones)?,
        None => vec![false; phones.len()],
    };
    let missing = in_database.iter().filter(|on| !**on).count();
    let has_password = matches!(
        database,
        LedgerLocation::Postgres(target) if target.has_password()
    );
    if missing > 0 {
        anyhow::bail!(
            "this machine's ledger file {} holds {} the ledger in the database {database} does not, and a campaign kept in a database records in its database's ledger: copy them first with `{} optout import --from-ledger {} --ledger {}`{} (or keep using the file: CONVERS8_LEDGER={})",
            file.display(),
            super::output::plural(missing as u64, "opt-out"),
            program(),
            shell_quote(&file),
            shell_quote(Path::new(&database.to_string())),
            if has_password {
                " with the URL's password put back"
            } else {
                ""
            },
            shell_quote(&file),
        );
    }
    Ok(())
}

/// Who `validate`, `preview` and `send-test` leave out: the opt-outs of the
/// campaign's ledger (read if it exists, never created) and its exclude files.
pub fn suppressions(
    campaign: &Campaign,
    state: &state::StateLocation,
) -> anyhow::Result<convers8_campaign::ledger::screen::Suppressions> {
    use convers8_campaign::ledger::{self, location, screen::Suppressions};
    let chosen = location::for_campaign(campaign.ledger.path.as_deref(), state);
    if let Some(at) = &chosen
        && Some(at) == location::state_database(state).as_ref()
    {
        check_machine_opt_outs(at)?;
    }
    let ledger = match chosen {
        Some(at) => ledger::open_existing(&at)?,
        None => None,
    };
    Ok(Suppressions::load(campaign, ledger.as_deref())?)
}

/// The state a command without `--state` reads `campaign` from:
/// `$CONVERS8_STATE_URL`, else `[state] url`, else the file beside it.
pub fn implied_state(campaign: &Campaign) -> anyhow::Result<state::StateLocation> {
    CampaignArgs {
        campaign: campaign.file.clone(),
        state: None,
    }
    .location(Some(campaign), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake cargo target directory: `<tmp>/target/<profile>/convers8-campaign`.
    fn built(profile: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::create_dir_all(target.join(profile)).unwrap();
        std::fs::write(
            target.join("CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55",
        )
        .unwrap();
        let exe = target.join(profile).join(NAME);
        std::fs::write(&exe, "").unwrap();
        (dir, exe)
    }

    #[test]
    fn cargo_run_users_get_a_cargo_run_line() {
        let (dir, exe) = built("release");
        let how = Invocation {
            argv0: Some("target/release/convers8-campaign".into()),
            exe: Some(exe.clone()),
            cargo: true,
            manifest_dir: Some(dir.path().to_owned()),
            cwd: Some(dir.path().to_owned()),
            path: None,
        };
        assert_eq!(describe_program(&how), "cargo run --release --");

        // From another directory, cargo needs the manifest.
        let elsewhere = Invocation {
            cwd: Some(PathBuf::from("/")),
            ..how
        };
        assert_eq!(
            describe_program(&elsewhere),
            format!(
                "cargo run --release --manifest-path {} --",
                dir.path().join("Cargo.toml").display()
            )
        );

        let (dir, exe) = built("debug");
        let how = Invocation {
            argv0: Some("target/debug/convers8-campaign".into()),
            exe: Some(exe),
            cargo: true,
            manifest_dir: Some(dir.path().to_owned()),
            cwd: Some(dir.path().join("campaigns")),
            path: None,
        };
        assert_eq!(describe_program(&how), "cargo run --");

        let (_dir, exe) = built("fast");
        let how = Invocation {
            exe: Some(exe),
            cargo: true,
            ..Invocation::default()
        };
        assert_eq!(describe_program(&how), "cargo run --profile fast --");
    }

    #[test]
    fn others_get_the_name_they_typed() {
        // Found on PATH.
        let how = Invocation {
            argv0: Some(NAME.into()),
            ..Invocation::default()
        };
        assert_eq!(describe_program(&how), NAME);

        // A path that PATH also finds: the bare name.
        let (dir, exe) = built("release");
        let how = Invocation {
            argv0: Some(exe.clone().into()),
            exe: Some(exe.clone()),
            cargo: false,
            path: Some(exe.parent().unwrap().as_os_str().to_owned()),
            ..Invocation::default()
        };
        assert_eq!(describe_program(&how), NAME);

        // A path PATH does not find: the path, quoted for a shell when needed.
        let how = Invocation {
            argv0: Some("./target/release/convers8-campaign".into()),
            exe: Some(exe.clone()),
            path: Some("/nonexistent".into()),
            ..Invocation::default()
        };
        assert_eq!(describe_program(&how), "./target/release/convers8-campaign");
        let how = Invocation {
            argv0: Some("/opt/my tools/convers8-campaign".into()),
            ..Invocation::default()
        };
        assert_eq!(describe_program(&how), "'/opt/my tools/convers8-campaign'");

        // $CARGO set, but not a cargo build (an installed binary): its name.
        let how = Invocation {
            argv0: Some(NAME.into()),
            exe: Some(PathBuf::from("/usr/local/bin/convers8-campaign")),
            cargo: true,
            ..Invocation::default()
        };
        assert_eq!(describe_program(&how), NAME);
        drop(dir);
    }

    #[test]
    fn the_sandbox_state_sits_beside_the_campaign() {
        assert_eq!(
            sandbox_state_path(Path::new("c/black-friday.state.db")),
            PathBuf::from("c/black-friday.sandbox.state.db")
        );
        let args = CampaignArgs {
            campaign: PathBuf::from("c/bf.toml"),
            state: None,
        };
        assert_eq!(
            args.state_path_for(true),
            Some(PathBuf::from("c/bf.sandbox.state.db"))
        );
        assert_eq!(
            args.state_path_for(false),
            Some(PathBuf::from("c/bf.state.db"))
        );
        let args = CampaignArgs {
            state: Some("mine.db".to_owned()),
            ..args
        };
        assert_eq!(args.state_path_for(true), Some(PathBuf::from("mine.db")));
        let args = CampaignArgs {
            state: Some("postgres://app:s3cret@db/c".to_owned()),
            ..args
        };
        assert_eq!(args.state_path_for(false), None, "a database has no file");
        assert_eq!(args.state_shown(false), "postgres://app@db/c");
        assert!(
            !rerun_command("run", Path::new("c/bf.toml"), args.state.as_deref()).contains("s3cret")
        );
    }
}
