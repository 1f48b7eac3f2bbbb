//! A runner's lease, its heartbeat, and the rescue of rows a lost runner
//! left `sending`.
//!
//! Every runner has a row in `runners` with `lease_until`, set from the
//! database's `now()` (never a runner's clock). A heartbeat thread renews it
//! every third of the lease on a connection of its own, so a long claim or
//! plan never delays it. Each renewal keeps the run's [`SendGate`] open for
//! two thirds of a lease, counted by this process's monotonic clock from the
//! moment the renewal was sent: a runner that cannot renew (network gone,
//! process stopped) stops sending a third of a lease before the database
//! could call it dead. A renewal the database refuses (the runner was
//! declared dead meanwhile) closes the gate for good.
//!
//! Rescue turns the `sending` rows of runners whose lease ran out into
//! `uncertain` (`runner_lost`), never `pending`: their requests may have
//! been delivered. Every runner rescues at start and at each heartbeat.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::link::Link;
use crate::state::location::PgTarget;
use crate::state::runner::SendGate;
use crate::state::{StateError, timestamp};

/// A registered runner: its id, its gate, and its heartbeat.
pub(super) struct Runner {
    pub(super) id: i64,
    pub(super) gate: SendGate,
    stop: Option<mpsc::Sender<()>>,
    heartbeat: Option<JoinHandle<()>>,
}

/// How long a renewal keeps the gate open: two thirds of the lease.
fn gate_span(lease: Duration) -> Duration {
    lease * 2 / 3
}

impl Runner {
    /// Registers this process as a live runner of the campaign and starts
    /// its heartbeat.
    pub(super) fn register(
        target: &PgTarget,
        link: &Link,
        campaign_id: i64,
    ) -> Result<Runner, StateError> {
        let lease = target.lease;
        let lease_secs = lease.as_secs_f64();
        let host = host_name();
        let pid = std::process::id() as i32;
        let space = process_space();
        let asked = Instant::now();
        let id = link.call("registering this runner", move |c| {
            c.query_one(
                "INSERT INTO convers8.runners
                   (campaign_id, host, pid, lease_until, state, process_space)
                 VALUES ($1, $2, $3, now() + make_interval(secs => $4), 'live', $5)
                 RETURNING id",
                &[&campaign_id, &host, &pid, &lease_secs, &space],
            )
            .map(|row| row.get::<_, i64>(0))
        })?;
        let gate = SendGate::open_for(Duration::ZERO);
        gate.extend_from(asked, gate_span(lease));
        let heartbeat_link = Link::open(target, "lease")?;
        let (stop, stopped) = mpsc::channel();
        let beat_gate = gate.clone();
        let heartbeat = std::thread::Builder::new()
            .name("pg-heartbeat".into())
            .spawn(move || heartbeat(heartbeat_link, stopped, beat_gate, id, campaign_id, lease))
            .map_err(|e| StateError::Postgres {
                location: target.shown().to_owned(),
                operation: "starting the heartbeat",
                reason: e.to_string(),
            })?;
        Ok(Runner {
            id,
            gate,
            stop: Some(stop),
            heartbeat: Some(heartbeat),
        })
    }

    /// Stops the heartbeat and marks the runner finished, unless it still
    /// has rows in flight: those are left for the lease to run out and the
    /// rescue to make `uncertain`. Best effort: a runner that cannot say it
    /// finished is rescued like a dead one, which loses nothing.
    pub(super) fn finish(mut self, link: &Link) {
        self.stop.take();
        if let Some(beat) = self.heartbeat.take() {
            let _ = beat.join();
        }
        let id = self.id;
        let _ = link.call("marking this runner finished", move |c| {
            c.execute(
                "UPDATE convers8.runners SET state = 'finished', ended_at = now()
                 WHERE id = $1 AND state = 'live'
                   AND NOT EXISTS (SELECT 1 FROM convers8.recipients
                                   WHERE runner_id = $1 AND state = 'sending')",
                &[&id],
            )
        });
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(beat) = self.heartbeat.take() {
            let _ = beat.join();
        }
    }
}

/// Renews the lease every third of it until told to stop; rescues the rows
/// of runners whose lease ran out at each beat.
fn heartbeat(
    link: Link,
    stop: mpsc::Receiver<()>,
    gate: SendGate,
    id: i64,
    campaign_id: i64,
    lease: Duration,
) {
    let every = lease / 3;
    // After a failed renewal, try again soon: waiting a whole third would
    // land the retry just as the gate shuts.
    let soon = (every / 10).max(Duration::from_millis(100));
    let mut wait = every;
    let lease_secs = lease.as_secs_f64();
    loop {
        match stop.recv_timeout(wait) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Told to stop, or the store is gone.
            _ => return,
        }
        let asked = Instant::now();
        let renewed = link.call("renewing the lease", move |c| {
            c.query_opt(
                "UPDATE convers8.runners SET lease_until = now() + make_interval(secs => $2)
                 WHERE id = $1 AND state = 'live' RETURNING 1",
                &[&id, &lease_secs],
            )
            .map(|row| row.is_some())
        });
        match renewed {
            Ok(true) => {
                gate.extend_from(asked, gate_span(lease));
                // The next renewal a third of a lease after this one was
                // asked, however long this one and the rescue below take.
                wait = every;
            }
            Ok(false) => {
                // Declared dead while it could not renew: its rows are
                // someone else's `uncertain` now. It must never send again.
                gate.close();
                tracing::warn!(
                    runner = id,
                    "this runner's lease was lost: it stops sending"
                );
                return;
            }
            Err(e) => {
                // The gate runs out by itself if this goes on.
                tracing::warn!(runner = id, error = %e, "could not renew the lease");
                wait = soon;
                continue;
            }
        }
        if let Err(e) = rescue(&link, campaign_id, lease / 6) {
            tracing::warn!(error = %e, "could not rescue the rows of lost runners");
        }
        wait = wait.saturating_sub(asked.elapsed());
    }
}

/// Marks the live runners of the campaign whose lease ran out dead, and
/// turns every row a dead runner left `sending` into `uncertain`
/// (`runner_lost`). Returns how many rows it rescued.
///
/// `patience` bounds the wait for a row lock: a runner frozen in the middle
/// of a claim holds its rows' locks (until the server ends its session), and
/// the heartbeat that rescues must not be held up past its next renewal.
pub(super) fn rescue(link: &Link, campaign_id: i64, patience: Duration) -> Result<u64, StateError> {
    let now = timestamp(Utc::now());
    let lock_timeout = format!("SET LOCAL lock_timeout = {}", patience.as_millis().max(1));
    let space = process_space();
    link.call("rescuing the rows of lost runners", move |c| {
        // Declared dead in a transaction of its own, so the runner can never
        // renew again even if its rows cannot be rescued this time.
        c.execute(
            "UPDATE convers8.runners SET state = 'dead', ended_at = now()
             WHERE campaign_id = $1 AND state = 'live' AND lease_until < now()",
            &[&campaign_id],
        )?;
        // A runner of this machine (this boot, this pid namespace) whose
        // process is gone is dead now, lease or not: a run started again
        // after a crash settles its rows at once, as it would on a file.
        // A pid that exists may be another process by now: that one waits
        // for its lease, which only costs time.
        if let Some(space) = &space {
            let gone: Vec<i64> = c
                .query(
                    "SELECT id, pid FROM convers8.runners
                     WHERE campaign_id = $1 AND state = 'live' AND process_space = $2",
                    &[&campaign_id, space],
                )?
                .iter()
                .filter(|r| !pid_exists(r.get::<_, i32>(1)))
                .map(|r| r.get(0))
                .collect();
            if !gone.is_empty() {
                c.execute(
                    "UPDATE convers8.runners SET state = 'dead', ended_at = now()
                     WHERE id = ANY($1) AND state = 'live'",
                    &[&gone],
                )?;
            }
        }
        let mut tx = c.transaction()?;
        // A runner stopped in the middle of its own transaction holds row
        // locks (until the server ends its session, see `connect`): give up
        // for now rather than wait on it.
        tx.batch_execute(&lock_timeout)?;
        let rescued = tx.execute(
            "UPDATE convers8.recipients r SET state = 'uncertain', error_code = 'runner_lost',
               error_details = format('runner %s (pid %s on %s) stopped renewing its lease while '
                 'this message was being sent; it may have been delivered', d.id, d.pid, d.host),
               updated_at = $2
             FROM convers8.runners d
             WHERE r.campaign_id = $1 AND r.state = 'sending' AND d.id = r.runner_id
               AND d.state IN ('dead', 'finished')",
            &[&campaign_id, &now],
        )?;
        tx.commit()?;
        Ok(rescued)
    })
}

/// Where this process's pid is meaningful: this boot of this machine (its
/// kernel's boot id) and this pid namespace. `None` where that cannot be
/// told (not Linux): runners there wait for each other's leases.
fn process_space() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!("{}/{}", boot.trim(), namespace.display()))
}

/// Whether a process with this pid exists in this pid namespace (Linux).
fn pid_exists(pid: i32) -> bool {
    pid > 0 && std::path::Path::new("/proc").join(pid.to_string()).exists()
}

/// This machine's name, for `runners.host` (what an operator reading the
/// table needs to find the process).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}
