//! Where a campaign's state lives, as the operator named it: an SQLite file
//! (a path, the default) or a campaign in a PostgreSQL database (a
//! `postgres://` URL). Parsing the name is all this module does; the stores
//! open what it names (see [`super::store::open_for_run`]).
//!
//! A URL may carry a password. It is kept only to connect: everything shown
//! to the operator (messages, logs, the ledger's name for the state) uses
//! [`PgTarget::shown`], the URL without it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a runner's lease lasts unless the operator says otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The shortest lease accepted: renewed every third of it, a shorter one
/// would be lost to an ordinary pause of a loaded machine.
pub const MIN_LEASE: Duration = Duration::from_secs(3);

/// The longest lease accepted: a lost runner's rows wait this long to be
/// rescued.
pub const MAX_LEASE: Duration = Duration::from_secs(3600);

/// A campaign's state: one SQLite file, or one campaign in a database.
#[derive(Clone, PartialEq, Eq)]
pub enum StateLocation {
    File(PathBuf),
    Postgres(PgTarget),
}

/// A campaign in a PostgreSQL database.
#[derive(Clone, PartialEq, Eq)]
pub struct PgTarget {
    /// The URL as given, password included: only ever passed to the driver.
    url: String,
    /// The URL without its password, for every message.
    shown: String,
    /// The campaign's name: one database holds many campaigns.
    pub campaign: String,
    /// How long this runner's claim on its rows outlives its last renewal.
    pub lease: Duration,
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTarget")
            .field("url", &self.shown)
            .field("campaign", &self.campaign)
            .field("lease", &self.lease)
            .finish()
    }
}

impl fmt::Debug for StateLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateLocation::File(path) => f.debug_tuple("File").field(path).finish(),
            StateLocation::Postgres(target) => f.debug_tuple("Postgres").field(target).finish(),
        }
    }
}

impl fmt::Display for StateLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateLocation::File(path) => write!(f, "{}", path.display()),
            StateLocation::Postgres(target) => f.write_str(target.display_name()),
        }
    }
}

/// Whether `text` names a PostgreSQL database rather than a file.
pub fn is_postgres_url(text: &str) -> bool {
    let lower = text.trim_start().to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

impl StateLocation {
    /// A file path, or (for a `postgres://` URL) campaign `campaign` in that
    /// database, with the default lease.
    pub fn parse(text: &str, campaign: &str) -> StateLocation {
        if is_postgres_url(text) {
            StateLocation::Postgres(PgTarget::new(text.trim(), campaign))
        } else {
            StateLocation::File(PathBuf::from(text))
        }
    }

    /// The file, for an SQLite state.
    pub fn file(&self) -> Option<&Path> {
        match self {
            StateLocation::File(path) => Some(path),
            StateLocation::Postgres(_) => None,
        }
    }

    /// Sets the lease of a PostgreSQL state (a file has none).
    pub fn with_lease(mut self, lease: Duration) -> StateLocation {
        if let StateLocation::Postgres(target) = &mut self {
            target.lease = lease;
        }
        self
    }
}

impl PgTarget {
    pub fn new(url: &str, campaign: &str) -> PgTarget {
        // The driver knows the scheme in lower case only.
        let url = match url.find("://") {
            Some(i) => format!("{}{}", url[..i].to_ascii_lowercase(), &url[i..]),
            None => url.to_owned(),
        };
        let url = url.as_str();
        PgTarget {
            url: url.to_owned(),
            shown: without_password(url),
            campaign: campaign.to_owned(),
            lease: DEFAULT_LEASE,
        }
    }

    /// The URL to connect with (holds the password, if any: never show it).
    pub(crate) fn connect_url(&self) -> &str {
        &self.url
    }

    /// Whether the URL carries a password (which [`PgTarget::shown`] leaves out).
    pub fn has_password(&self) -> bool {
        self.url != self.shown
    }

    /// The URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// How messages name this state: the database and the campaign in it.
    pub fn display_name(&self) -> &str {
        &self.shown
    }

    /// A stable name of this campaign's state, for the ledger.
    pub fn identity(&self) -> String {
        format!("{}#{}", self.shown, self.campaign)
    }
}

/// Whether a URL carries a password (in its user part or its query).
pub fn has_password(url: &str) -> bool {
    without_password(url.trim()) != url.trim()
}

/// `postgres://user:secret@host/db?password=x` without `secret` and `x`,
/// read the way the driver reads a URL: the credentials are everything
/// before the first `@` (a password may hold an unencoded `/` or `?`), and
/// a parameter's name is percent-decoded (`pass%77ord` is `password`).
fn without_password(url: &str) -> String {
    let Some(i) = url.find("://") else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_at(i + 3);
    let rest = match rest.find('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{user}{}", &rest[at..])
        }
        None => rest.to_owned(),
    };
    let rest = match rest.split_once('?') {
        Some((path, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| {
                    let key = pair.split('=').next().unwrap_or_default();
                    !percent_decoded(key).eq_ignore_ascii_case("password")
                })
                .collect();
            if kept.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{}", kept.join("&"))
            }
        }
        None => rest,
    };
    format!("{scheme}{rest}")
}

/// `%XX` escapes decoded (an invalid one is kept as written).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_shown_url() {
        for (url, shown) in [
            (
                "postgres://app:s3cret@db.example:5432/campaigns",
                "postgres://app@db.example:5432/campaigns",
            ),
            (
                "postgresql://app@localhost/c?password=s3cret&sslmode=require",
                "postgresql://app@localhost/c?sslmode=require",
            ),
            (
                "postgres://localhost/c?PASSWORD=s3cret",
                "postgres://localhost/c",
            ),
            ("postgres://a:b:c@h/d", "postgres://a@h/d"),
            ("postgres://h/d", "postgres://h/d"),
            // The driver reads up to the first `@` as the credentials.
            ("postgres://app:s3cret/x?y@db/c", "postgres://app@db/c"),
            ("postgres://db/c?pass%77ord=s3cret", "postgres://db/c"),
        ] {
            let target = PgTarget::new(url, "spring");
            assert_eq!(target.shown(), shown);
            assert!(!format!("{target:?}").contains("s3cret"));
            assert_eq!(target.identity(), format!("{shown}#spring"));
        }
    }

    #[test]
    fn a_url_selects_postgres_and_anything_else_is_a_file() {
        assert!(matches!(
            StateLocation::parse("postgres://h/d", "c"),
            StateLocation::Postgres(_)
        ));
        assert!(matches!(
            StateLocation::parse("POSTGRESQL://h/d", "c"),
            StateLocation::Postgres(_)
        ));
        assert_eq!(
            StateLocation::parse("x/postgres.db", "c"),
            StateLocation::File(PathBuf::from("x/postgres.db"))
        );
    }
}
