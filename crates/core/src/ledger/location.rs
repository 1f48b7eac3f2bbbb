//! Where the ledger is: the one place that decides it.
//!
//! A campaign's `[ledger] path` (relative to the campaign file) wins, then
//! the environment's `CONVERS8_LEDGER` (a path, or a `postgres://` URL),
//! then, for a campaign whose state is in PostgreSQL, the tables in that same
//! database (so runners on every machine share one ledger), then the
//! per-user file under the XDG state directory. Rehearsals (`run --sandbox`)
//! never use any of these: their ledger sits beside the sandbox state, so a
//! rehearsal never counts against the real account. Nothing here opens or
//! creates anything.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::state::location::{PgTarget, StateLocation, is_postgres_url};

/// Where a ledger is: a file, or the `convers8` schema of a database.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum LedgerLocation {
    File(PathBuf),
    Postgres(PgTarget),
}

impl LedgerLocation {
    /// A `postgres://` (or `postgresql://`) URL names a database; anything
    /// else a file.
    pub fn parse(text: &OsStr) -> LedgerLocation {
        match text.to_str().filter(|t| is_postgres_url(t)) {
            Some(url) => LedgerLocation::Postgres(PgTarget::new(url, "")),
            None => LedgerLocation::File(PathBuf::from(text)),
        }
    }

    /// The file, for a ledger that is one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            LedgerLocation::File(path) => Some(path),
            LedgerLocation::Postgres(_) => None,
        }
    }

    pub fn is_database(&self) -> bool {
        matches!(self, LedgerLocation::Postgres(_))
    }
}

/// A file's path, or a database's URL without its password.
impl fmt::Display for LedgerLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerLocation::File(path) => write!(f, "{}", path.display()),
            LedgerLocation::Postgres(target) => f.write_str(target.shown()),
        }
    }
}

/// The environment variable that names the ledger when the campaign does not.
pub const LEDGER_ENV: &str = "CONVERS8_LEDGER";

/// The per-user ledger: `$XDG_STATE_HOME/convers8-campaign/ledger.db`, else
/// `$HOME/.local/state/convers8-campaign/ledger.db`. `None` when neither
/// variable is set to an absolute path (XDG says relative ones are ignored).
pub fn default_path_from(
    xdg_state_home: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let absolute = |v: Option<OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    let base = absolute(xdg_state_home)
        .or_else(|| absolute(home).map(|h| h.join(".local").join("state")))?;
    Some(base.join("convers8-campaign").join("ledger.db"))
}

/// [`default_path_from`] with this process's environment.
pub fn default_path() -> Option<PathBuf> {
    default_path_from(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME"))
}

/// The ledger the environment names: `CONVERS8_LEDGER` (a path or a URL).
pub fn from_env() -> Option<LedgerLocation> {
    std::env::var_os(LEDGER_ENV)
        .filter(|v| !v.is_empty())
        .map(|v| LedgerLocation::parse(&v))
}

/// The ledger without a campaign (the `optout` commands): `CONVERS8_LEDGER`,
/// else the per-user file.
pub fn account() -> Option<LedgerLocation> {
    from_env().or_else(|| default_path().map(LedgerLocation::File))
}

/// A campaign's ledger: its `[ledger] path` when it has one, else
/// `CONVERS8_LEDGER`, else the database of a state in PostgreSQL, else the
/// per-user file.
pub fn for_campaign(configured: Option<&Path>, state: &StateLocation) -> Option<LedgerLocation> {
    if let Some(path) = configured {
        return Some(LedgerLocation::File(path.to_owned()));
    }
    from_env()
        .or_else(|| state_database(state))
        .or_else(|| default_path().map(LedgerLocation::File))
}

/// The ledger in the database of a state in PostgreSQL.
pub fn state_database(state: &StateLocation) -> Option<LedgerLocation> {
    match state {
        StateLocation::Postgres(target) => Some(LedgerLocation::Postgres(PgTarget::new(
            target.connect_url(),
            "",
        ))),
        StateLocation::File(_) => None,
    }
}

/// A rehearsal's own ledger beside its sandbox state:
/// `c/bf.sandbox.state.db` has `c/bf.sandbox.ledger.db`.
pub fn for_sandbox_state(state: &Path) -> PathBuf {
    let name = state
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(".state.db")
        .or_else(|| name.strip_suffix(".db"))
        .unwrap_or(&name);
    state.with_file_name(format!("{stem}.ledger.db"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdg_state_home_wins_and_home_is_the_fallback() {
        assert_eq!(
            default_path_from(Some("/x/state".into()), Some("/home/a".into())),
            Some(PathBuf::from("/x/state/convers8-campaign/ledger.db"))
        );
        assert_eq!(
            default_path_from(None, Some("/home/a".into())),
            Some(PathBuf::from(
                "/home/a/.local/state/convers8-campaign/ledger.db"
            ))
        );
        // A relative XDG_STATE_HOME is ignored, as the XDG spec says.
        assert_eq!(
            default_path_from(Some("rel".into()), Some("/home/a".into())),
            Some(PathBuf::from(
                "/home/a/.local/state/convers8-campaign/ledger.db"
            ))
        );
        assert_eq!(default_path_from(None, None), None);
    }

    #[test]
    fn a_sandbox_ledger_sits_beside_its_state() {
        assert_eq!(
            for_sandbox_state(Path::new("c/bf.sandbox.state.db")),
            PathBuf::from("c/bf.sandbox.ledger.db")
        );
        assert_eq!(
            for_sandbox_state(Path::new("mine.db")),
            PathBuf::from("mine.ledger.db")
        );
    }
}
