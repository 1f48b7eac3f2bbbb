//! What only a state shared by several runners must get right, beyond the
//! contract both stores keep (see `state/tests.rs`): a re-plan racing a
//! claim, a setup lock lost with its connection, a runner declared dead, and
//! a lost runner's late answers. Each test takes a fresh database of the
//! server named by `CONVERS8_TEST_PG_URL` (skipped, saying so, without one).

use crate::state::test_support::{TestStore, plan_info, sendable};
use crate::state::{Outcome, PlanWrite, RowOutcome, StateError, StateStore, write_plan};

/// A run handle on campaign `t` with `n` sendable rows planned.
fn planned(store: &TestStore, n: u64) -> Box<dyn StateStore> {
    let mut run = store.open_for_run();
    plan(run.as_mut(), PlanWrite::Fresh, n).expect("plan");
    run
}

fn plan(run: &mut dyn StateStore, mode: PlanWrite, n: u64) -> Result<(), StateError> {
    write_plan(run, mode, |sink| {
        for row in 1..=n {
            sink.insert(&sendable(row))?;
        }
        Ok::<_, StateError>(((), plan_info("t", n)))
    })
}

fn outcome(id: i64, outcome: Outcome, attempts: u32) -> RowOutcome {
    RowOutcome {
        id,
        attempts,
        at: chrono::Utc::now(),
        outcome,
    }
}

#[test]
fn a_replan_refuses_once_another_runner_claimed_rows() {
    let Some(store) = TestStore::postgres() else {
        return;
    };
    let mut a = planned(&store, 3);
    a.start_run().expect("start");
    let claimed = a.claim(1).expect("claim");
    assert_eq!(claimed.len(), 1);
    // B decided to plan again before A's claim was visible (its "nothing
    // was sent" check came first): the replacement itself must see it.
    let mut b = store.open_for_run();
    let refused = plan(b.as_mut(), PlanWrite::Replace, 3).expect_err("refused");
    assert!(
        refused
            .to_string()
            .contains("another runner started sending"),
        "{refused}"
    );
    drop(b);
    let counts = store.open_for_reading().counts().expect("counts");
    assert_eq!((counts.sending, counts.pending), (1, 2), "nothing changed");
}

#[test]
fn a_plan_refuses_once_the_setup_lock_went_with_its_connection() {
    let Some(store) = TestStore::postgres() else {
        return;
    };
    let mut a = store.open_for_run();
    // The session holding the campaign's setup lock ends (a reset, a
    // failover): another runner may take the lock and plan now. Only this
    // test's database: pg_locks is the whole server's, and the tests running
    // beside this one hold setup locks of their own.
    store.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_locks
         WHERE locktype = 'advisory' AND classid = 17208 AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    );
    let refused = plan(a.as_mut(), PlanWrite::Fresh, 3).expect_err("refused");
    assert!(refused.to_string().contains("setup lock"), "{refused}");
    drop(a);
    // Nothing was planned: the next runner plans it whole.
    let mut b = planned(&store, 3);
    b.start_run().expect("start");
    assert_eq!(b.counts().expect("counts").pending, 3);
}

#[test]
fn a_runner_declared_dead_claims_nothing() {
    let Some(store) = TestStore::postgres() else {
        return;
    };
    let mut a = planned(&store, 3);
    a.start_run().expect("start");
    // Another runner saw its lease run out (a stall) and declared it dead.
    store.sql("UPDATE convers8.runners SET state = 'dead'");
    let refused = a.claim(2).expect_err("no claim");
    assert!(matches!(refused, StateError::LeaseLost { .. }), "{refused}");
    assert_eq!(a.counts().expect("counts").pending, 3);
}

#[test]
fn a_lost_runners_late_answers_settle_only_its_own_rows() {
    let Some(store) = TestStore::postgres() else {
        return;
    };
    let mut a = planned(&store, 4);
    a.start_run().expect("start");
    let claimed = a.claim(3).expect("claim");
    assert_eq!(claimed.len(), 3);
    // A stalls past its lease; B starts and rescues its rows.
    store.sql("UPDATE convers8.runners SET lease_until = now() - interval '1 second'");
    let mut b = store.open_for_run();
    assert_eq!(b.mark_interrupted_uncertain().expect("rescue"), 3);
    b.start_run().expect("start");
    // B resends one of them on purpose (`retry --uncertain`): a new claim.
    b.resend_during_run(Some(crate::state::RetrySelection::Uncertain));
    std::thread::sleep(std::time::Duration::from_millis(5));
    let resent = b.claim(1).expect("claim");
    assert_eq!(resent.len(), 1);
    // A's late answers: one delivered, one never sent, and one for the row
    // B claimed since.
    let retaken = resent[0].id;
    assert!(claimed.iter().any(|c| c.id == retaken), "one of A's rows");
    let others: Vec<i64> = claimed
        .iter()
        .map(|c| c.id)
        .filter(|&id| id != retaken)
        .collect();
    let (delivered, unsent) = (others[0], others[1]);
    let sent = Outcome::Sent {
        message_id: "late".into(),
    };
    a.record(&[
        outcome(delivered, sent.clone(), 1),
        outcome(unsent, Outcome::Released, 0),
        outcome(retaken, sent, 1),
    ])
    .expect("late answers are recorded");
    drop((a, b));
    let reader = store.open_for_reading();
    let state_of = |id: i64| {
        let row = claimed.iter().find(|c| c.id == id).expect("claimed").row;
        reader
            .recipient_at_row(row)
            .expect("read")
            .expect("row")
            .0
            .state
    };
    use crate::state::RecipientState::*;
    let (first, second, third) = (state_of(delivered), state_of(unsent), state_of(retaken));
    assert_eq!(first, Sent, "its own rescued row, upgraded");
    assert_eq!(second, Pending, "never sent: given back");
    assert_eq!(
        third, Sending,
        "B's claim now: A's answer does not touch it"
    );
}

#[test]
fn a_dead_runner_of_this_machine_is_rescued_at_once_and_a_live_one_is_not() {
    let Some(store) = TestStore::postgres() else {
        return;
    };
    let mut a = planned(&store, 4);
    a.start_run().expect("start");
    assert_eq!(a.claim(2).expect("claim").len(), 2);
    // A runner of this machine with a live process (this test's own pid)
    // keeps its rows while its lease lasts.
    let mut b = store.open_for_run();
    assert_eq!(b.mark_interrupted_uncertain().expect("rescue"), 0);
    b.start_run().expect("start");
    drop(b);
    // Its process is gone (killed): the next runner started here rescues
    // its rows without waiting for the lease to run out.
    store.sql("UPDATE convers8.runners SET pid = 2147483646 WHERE id = 1");
    let mut c = store.open_for_run();
    assert_eq!(c.mark_interrupted_uncertain().expect("rescue"), 2);
    c.start_run().expect("start");
    let counts = c.counts().expect("counts");
    assert_eq!((counts.uncertain, counts.pending), (2, 2));
    drop(a);
}

#[test]
fn a_runner_done_setting_up_lets_the_next_one_set_up_while_it_waits() {
    let Some(store) = TestStore::postgres() else {
        return;
    };
    // A has planned and is waiting for its send window (`run --wait`):
    // it has not started its run.
    let mut a = planned(&store, 3);
    a.end_setup().expect("setup ends");
    // B must not wait for A's window to open.
    let (tx, rx) = std::sync::mpsc::channel();
    let location = store.location().clone();
    std::thread::spawn(move || {
        let opened = crate::state::open_for_run(&location).map(|_| ());
        let _ = tx.send(opened.map_err(|e| e.to_string()));
    });
    let opened = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("B set up while A was waiting");
    assert_eq!(opened, Ok(()));
    drop(a);
}
