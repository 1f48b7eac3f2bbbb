//! Where the ledger is: the one place that decides it.
//!
//! A campaign's `[ledger] path` (relative to the campaign file) wins, then
//! the environment's `CONVERS8_LEDGER`, then the per-user default under the
//! XDG state directory. Rehearsals (`run --sandbox`) never use any of these:
//! their ledger sits beside the sandbox state, so a rehearsal never counts
//! against the real account. Nothing here opens or creates a file.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

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

/// The ledger without a campaign (the `optout` commands): `CONVERS8_LEDGER`,
/// else the per-user default.
pub fn account_path() -> Option<PathBuf> {
    std::env::var_os(LEDGER_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(default_path)
}

/// A campaign's ledger: its `[ledger] path` when it has one, else
/// [`account_path`].
pub fn for_campaign(configured: Option<&Path>) -> Option<PathBuf> {
    configured.map(Path::to_owned).or_else(account_path)
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
