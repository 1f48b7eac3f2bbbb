//! The PostgreSQL state: many campaigns in one database, and any number of
//! runners, on any machines, draining one campaign at once.
//!
//! [`PgStore`] implements the same seam as the SQLite file ([`StateRead`],
//! [`StateStore`]) with the same contract, plus what sharing needs:
//! - claims take rows `FOR UPDATE SKIP LOCKED`, marked `sending` with this
//!   runner's id and a claim token and committed before any request leaves
//!   ([`writes`](self));
//! - each runner holds a lease it renews on its own connection; a runner
//!   that cannot renew stops sending before the lease can have run out, and
//!   the `sending` rows of a runner whose lease ran out become `uncertain`
//!   (`runner_lost`), never `pending` ([`lease`]);
//! - the campaign's rate is one row every runner reserves slots from
//!   ([`pace`]).
//!
//! Each connection is owned by a thread of its own ([`link`]).

mod lease;
pub(crate) mod link;
mod pace;
mod reads;
pub mod schema;
#[cfg(test)]
mod tests;
mod writes;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use postgres::Client;

use super::location::PgTarget;
use super::runner::SendGate;
use super::{RetrySelection, StateError};
use lease::Runner;
use link::Link;

/// How long connecting may take before the store gives up, unless the URL
/// says (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The least time a session may sit idle inside a transaction before the
/// server ends it (see [`connect`]): a plan's transaction pauses while rows
/// are read and rendered.
const MIN_IDLE_IN_TRANSACTION: Duration = Duration::from_secs(10);

/// Advisory lock space of a campaign's setup (planning, rescue), so runners
/// starting together plan it once ("C8" and the campaign's id).
const SETUP_LOCK_SPACE: i32 = 0x4338;

/// A campaign's state in PostgreSQL.
pub struct PgStore {
    link: Arc<Link>,
    target: PgTarget,
    campaign_id: i64,
    /// A run's lease, heartbeat and gate; `None` for a reader.
    runner: Option<Runner>,
    /// Whether this handle holds the campaign's setup lock (from opening for
    /// a run until its setup ends).
    setup_locked: bool,
    /// The connection epoch the setup lock was taken in: a session lock
    /// goes with its connection, so a plan must begin in that same epoch.
    setup_epoch: u64,
    /// Whether the run started sending ([`super::StateStore::start_run`]).
    started: bool,
    resend: Option<RetrySelection>,
    resend_since: String,
    zones: Option<Vec<String>>,
    /// The claim token of each row this handle has in flight: an outcome
    /// settles its row only if the row still carries that token.
    tokens: HashMap<i64, i64>,
    /// No pending row below this id was left when this handle last looked:
    /// claims start here, off the dead tuples at the head of the queue.
    low_water: i64,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .field("campaign_id", &self.campaign_id)
            .finish()
    }
}

impl PgStore {
    /// Opens the campaign for a run: migrates the database if needed,
    /// creates the campaign if it is new, takes the campaign's setup lock
    /// (held until [`super::StateStore::end_setup`], so runners starting
    /// together plan once), registers this runner with a lease and starts
    /// renewing it. No file lock: other runners may be sending already.
    pub fn open_for_run(target: &PgTarget) -> Result<PgStore, StateError> {
        let link = Arc::new(Link::open(target, "state")?);
        let shown = target.shown().to_owned();
        let migrated = link
            .call("migrating the schema", |c| schema::migrate(c.client()))
            .map_err(|e| match e {
                // The first run on a database creates the schema.
                StateError::Postgres {
                    location,
                    operation,
                    reason,
                } if reason.ends_with("(42501)") => StateError::Postgres {
                    location,
                    operation,
                    reason: format!(
                        "{reason}: this role may not create the schema convers8; grant it CREATE on the database, or let a role that may make the first `run --dry-run`"
                    ),
                },
                other => other,
            })?;
        if let Err(found) = migrated {
            return Err(StateError::TooNew {
                path: shown,
                found,
                known: schema::latest_version(),
            });
        }
        let name = target.campaign.clone();
        let campaign_id = link.call("creating the campaign", move |c| {
            c.execute(
                "INSERT INTO convers8.campaigns (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
                &[&name],
            )?;
            let row = c.query_one(
                "SELECT id FROM convers8.campaigns WHERE name = $1",
                &[&name],
            )?;
            Ok(row.get::<_, i64>(0))
        })?;
        let setup_epoch = take_setup_lock(&link, campaign_id, &target.campaign)?;
        let runner = Runner::register(target, &link, campaign_id)?;
        let mut store = PgStore::handle(link, target, campaign_id);
        store.runner = Some(runner);
        store.setup_locked = true;
        store.setup_epoch = setup_epoch;
        Ok(store)
    }

    /// Opens an existing campaign for reading only (runners may be sending).
    pub fn open_for_reading(target: &PgTarget) -> Result<PgStore, StateError> {
        let link = Arc::new(Link::open(target, "read")?);
        let shown = target.shown().to_owned();
        let version = link.call("reading the schema version", |c| {
            schema::version(c.client())
        })?;
        if version > schema::latest_version() {
            return Err(StateError::TooNew {
                path: shown,
                found: version,
                known: schema::latest_version(),
            });
        }
        let missing = || StateError::NoCampaign {
            location: shown.clone(),
            campaign: target.campaign.clone(),
        };
        if version < schema::STATE_TABLES_VERSION {
            return Err(missing());
        }
        let name = target.campaign.clone();
        let campaign_id = link
            .call("finding the campaign", move |c| {
                c.query_opt(
                    "SELECT id FROM convers8.campaigns WHERE name = $1 AND planned_at IS NOT NULL",
                    &[&name],
                )
                .map(|row| row.map(|r| r.get::<_, i64>(0)))
            })?
            .ok_or_else(missing)?;
        Ok(PgStore::handle(link, target, campaign_id))
    }

    /// A handle on a campaign that holds nothing yet: no runner, no lock,
    /// no claims.
    fn handle(link: Arc<Link>, target: &PgTarget, campaign_id: i64) -> PgStore {
        PgStore {
            link,
            target: target.clone(),
            campaign_id,
            runner: None,
            setup_locked: false,
            setup_epoch: 0,
            started: false,
            resend: None,
            resend_since: String::new(),
            zones: None,
            tokens: HashMap::new(),
            low_water: 0,
        }
    }

    /// The gate a run checks before every request (see [`SendGate`]).
    pub fn gate(&self) -> Option<SendGate> {
        self.runner.as_ref().map(|r| r.gate.clone())
    }

    /// This runner's id in the `runners` table.
    pub fn runner_id(&self) -> Option<i64> {
        self.runner.as_ref().map(|r| r.id)
    }

    /// Fails once this runner's lease is lost: nothing more is claimed.
    fn check_lease(&self) -> Result<(), StateError> {
        match &self.runner {
            Some(r) if r.gate.is_lost() => Err(self.lease_lost(r.id)),
            _ => Ok(()),
        }
    }

    fn lease_lost(&self, runner: i64) -> StateError {
        StateError::LeaseLost {
            location: self.target.shown().to_owned(),
            runner,
        }
    }

    /// Gives the setup lock back (the run starts sending; another runner
    /// may plan or rescue now).
    fn release_setup_lock(&mut self) -> Result<(), StateError> {
        if !self.setup_locked {
            return Ok(());
        }
        let id = self.campaign_id as i32;
        self.link
            .call("releasing the campaign's setup lock", move |c| {
                c.execute(
                    "SELECT pg_advisory_unlock($1, $2::integer)",
                    &[&SETUP_LOCK_SPACE, &id],
                )
            })?;
        self.setup_locked = false;
        Ok(())
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(runner) = self.runner.take() {
            runner.finish(&self.link);
        }
    }
}

/// Takes the campaign's setup lock (see [`SETUP_LOCK_SPACE`]), saying so
/// while another runner holds it; returns the connection epoch it lives in.
fn take_setup_lock(link: &Link, campaign_id: i64, campaign: &str) -> Result<u64, StateError> {
    let key = campaign_id as i32;
    let mut told = false;
    loop {
        let (got, epoch) = link.call_in(
            "waiting for the campaign's setup lock",
            None,
            move |c, epoch| {
                c.query_one(
                    "SELECT pg_try_advisory_lock($1, $2::integer)",
                    &[&SETUP_LOCK_SPACE, &key],
                )
                .map(|r| (r.get::<_, bool>(0), epoch))
            },
        )?;
        if got {
            return Ok(epoch);
        }
        if !told {
            tracing::info!(
                "another runner is planning or checking campaign {campaign:?}: waiting for it"
            );
            told = true;
        }
        std::thread::sleep(SETUP_LOCK_POLL);
    }
}

/// How often a runner asks again for a setup lock another runner holds.
const SETUP_LOCK_POLL: Duration = Duration::from_millis(200);

/// Connects to the target with TLS when the server offers it (`sslmode`
/// as the URL says; `prefer` by default, like libpq).
pub(crate) fn connect(target: &PgTarget) -> Result<Client, StateError> {
    let shown = target.shown();
    let fail = |operation, reason: String| StateError::Postgres {
        location: shown.to_owned(),
        operation,
        reason,
    };
    let mut config = postgres::Config::from_str(target.connect_url())
        .map_err(|e| fail("reading the URL", e.to_string()))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.application_name("convers8-campaign");
    // A claim must be durable before any of its requests leaves, whatever
    // the server's default: with `synchronous_commit = off` a crash of the
    // server can lose a committed claim, and its rows, already sent, would
    // be pending again. And a runner frozen in the middle of a transaction
    // (SIGSTOP, a paused VM) must not hold its rows' locks for ever: the
    // server ends such a session after a lease, so its claim is undone
    // (nothing of it was sent) and the others can rescue the rest.
    let idle = target.lease.max(MIN_IDLE_IN_TRANSACTION).as_millis();
    config.options(&format!(
        "-c synchronous_commit=on -c idle_in_transaction_session_timeout={idle}"
    ));
    // A path to the server that dies silently (no reset) is noticed within
    // a lease, not after the kernel's quarter of an hour.
    config.keepalives_idle(target.lease / 3);
    config.tcp_user_timeout(target.lease);
    let tls = tls_connector().map_err(|reason| fail("setting up TLS", reason))?;
    config
        .connect(tls)
        .map_err(|e| pg_error(shown, "connecting", &e))
}

/// rustls with the machine's trusted roots, as the API client uses.
fn tls_connector() -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        // A certificate the store cannot parse is skipped, as libpq would.
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A driver error as one line: the server's own message when it sent one.
pub(crate) fn pg_error(shown: &str, operation: &'static str, e: &postgres::Error) -> StateError {
    let reason = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    };
    StateError::Postgres {
        location: shown.to_owned(),
        operation,
        reason,
    }
}
