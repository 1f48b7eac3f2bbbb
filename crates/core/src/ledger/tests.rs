//! The ledger against real files in a temporary directory, and the
//! contract every ledger store keeps, run on both stores: each test in
//! `contract!` is `file::<name>` on a ledger file and `postgres::<name>` on
//! the tables of a fresh database of the server `CONVERS8_TEST_PG_URL`
//! names (skipped, saying so, without one; a failure under `CI=true`).

use super::*;

fn phone(s: &str) -> E164 {
    E164::parse(s, None).expect("test phone")
}

fn entry(phone: &str, campaign: &str, state_file: &str, minutes_ago: i64) -> LedgerEntry {
    LedgerEntry {
        phone: phone.to_owned(),
        campaign: campaign.to_owned(),
        state_file: state_file.to_owned(),
        row: 1,
        at: Utc::now() - chrono::Duration::minutes(minutes_ago),
        state: LedgerState::Sent,
        message_id: Some("m".into()),
    }
}

#[test]
fn a_new_ledger_and_its_directory_are_owner_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("deep").join("ledger.db");
    let ledger = FileLedger::open(&path).expect("opens");
    drop(ledger);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("deep")), 0o700);
    }
    // Opening again migrates nothing and keeps what is there.
    let mut again = FileLedger::open(&path).expect("reopens");
    again
        .record(&[entry("+254712000001", "a", "a.state.db", 0)])
        .expect("record");
    assert_eq!(
        FileLedger::open(&path)
            .expect("third")
            .messages()
            .expect("read")
            .len(),
        1
    );
}

#[test]
fn a_state_file_or_a_foreign_database_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("c.state.db");
    crate::state::StateDb::open_or_create(&state).expect("state");
    let e = FileLedger::open(&state)
        .expect_err("a state is no ledger")
        .to_string();
    assert!(e.contains("a campaign's state file"), "{e}");
    let other = dir.path().join("other.db");
    let conn = Connection::open(&other).expect("other");
    conn.execute_batch("CREATE TABLE t (x)").expect("create");
    drop(conn);
    let e = FileLedger::open(&other).expect_err("foreign").to_string();
    assert!(e.contains("is not a ledger"), "{e}");
}

#[test]
fn counts_for_caps_limits_and_second_states() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = FileLedger::open(&dir.path().join("l.db")).expect("opens");
    l.record(&[
        entry("+254712000001", "bf", "/c/bf.state.db", 60 * 30),
        entry("+254712000001", "bf", "/c/bf.state.db", 10),
        entry("+254712000001", "nl", "/c/nl.state.db", 5),
        entry("+254712000002", "bf", "/d/bf.state.db", 5),
    ])
    .expect("record");
    let day = Utc::now() - chrono::Duration::hours(24);
    assert_eq!(l.messages_to_since("+254712000001", day).expect("count"), 2);
    assert_eq!(l.unique_recipients_since(day).expect("unique"), 2);
    assert_eq!(
        l.other_state_files("bf", "/c/bf.state.db").expect("others"),
        vec![("/d/bf.state.db".to_owned(), 1)]
    );
}

#[test]
fn runs_opening_a_new_ledger_at_once_all_get_it() {
    // Regression: two processes both migrated a new file and the second
    // failed with "table messages already exists".
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("l.db");
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                FileLedger::open(&path)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("thread"), Ok(()));
    }
}

fn sender(campaign: &str, state_file: &str) -> Sender {
    Sender {
        campaign: campaign.to_owned(),
        state_file: state_file.to_owned(),
    }
}

fn candidates<'a>(phones: &[&'a str]) -> Vec<Candidate<'a>> {
    phones
        .iter()
        .enumerate()
        .map(|(i, phone)| Candidate {
            phone,
            row: i as u64 + 1,
        })
        .collect()
}

#[test]
fn a_first_version_ledger_keeps_one_entry_per_state_and_phone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("l.db");
    {
        let mut conn = Connection::open(&path).expect("open");
        let tx = conn.transaction().expect("tx");
        tx.execute_batch(schema::MIGRATIONS[0]).expect("v1");
        tx.pragma_update(None, "user_version", 1).expect("version");
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .expect("id");
        for (at, state) in [
            ("2026-11-01T10:00:00.000Z", "uncertain"),
            ("2026-11-01T11:00:00.000Z", "sent"),
        ] {
            tx.execute(
                "INSERT INTO messages (phone, campaign, state_file, row, at, state, message_id)
                 VALUES ('+254712000001', 'a', '/a.db', 1, ?1, ?2, NULL)",
                params![at, state],
            )
            .expect("insert");
        }
        tx.commit().expect("commit");
    }
    let l = FileLedger::open(&path).expect("migrates");
    let m = l.messages().expect("read");
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].state, LedgerState::Sent);
}

/// An empty ledger in one of the stores; [`TestLedger::open`] gives as many
/// handles on it as a test wants (runs of several campaigns, or runners on
/// several machines).
enum TestLedger {
    File(tempfile::TempDir),
    Postgres(crate::state::test_support::TestDatabase),
}

impl TestLedger {
    fn file() -> TestLedger {
        TestLedger::File(tempfile::tempdir().expect("tempdir"))
    }

    fn postgres() -> Option<TestLedger> {
        let url = crate::state::test_support::test_pg_url()?;
        Some(TestLedger::Postgres(
            crate::state::test_support::TestDatabase::create(&url),
        ))
    }

    fn location(&self) -> LedgerLocation {
        match self {
            TestLedger::File(dir) => LedgerLocation::File(dir.path().join("l.db")),
            TestLedger::Postgres(db) => LedgerLocation::parse(std::ffi::OsStr::new(&db.url)),
        }
    }

    fn open(&self) -> Ledger {
        super::open(&self.location()).expect("the ledger opens")
    }
}

/// Makes each contract test `fn name(ledger: &TestLedger)` two tests,
/// `file::name` and `postgres::name`.
macro_rules! contract {
    ($($test:ident),+ $(,)?) => {
        mod file {
            $(
                #[test]
                fn $test() {
                    super::$test(&super::TestLedger::file());
                }
            )+
        }

        mod postgres {
            $(
                #[test]
                fn $test() {
                    if let Some(ledger) = super::TestLedger::postgres() {
                        super::$test(&ledger);
                    }
                }
            )+
        }
    };
}

contract!(
    opt_outs_are_added_once_listed_and_removed,
    a_reservation_counts_for_other_campaigns_at_once,
    the_daily_limit_counts_unique_phones_and_holds_the_rest_of_the_claim,
    a_resend_that_does_not_go_out_restores_the_uncertain_message,
    second_states_and_a_campaigns_messages_are_found,
    outcomes_of_one_phone_settle_in_the_order_they_came,
    concurrent_admissions_never_pass_the_daily_limit,
    concurrent_admissions_never_pass_the_cap,
    a_ledger_not_made_yet_is_none_and_opening_makes_it,
    a_late_not_sent_keeps_another_runners_reservation,
    a_reservation_given_back_meanwhile_never_lets_a_claim_pass_the_daily_limit,
);

fn opt_outs_are_added_once_listed_and_removed(ledger: &TestLedger) {
    let mut l = ledger.open();
    let a = phone("+254712000001");
    assert_eq!(
        l.add_opt_outs(&[a.clone(), a.clone()], "cli").expect("add"),
        1
    );
    assert_eq!(
        l.opted_out(&["+254712000001", "+254712000002"])
            .expect("check"),
        vec![true, false]
    );
    // Another handle (another run, another machine) sees it at once.
    assert_eq!(
        ledger.open().opted_out_set().expect("set"),
        HashSet::from(["+254712000001".to_owned()])
    );
    let listed = l.opt_outs().expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].phone.as_str(), listed[0].source.as_str()),
        ("+254712000001", "cli")
    );
    assert!(l.remove_opt_out(&a).expect("remove"));
    assert!(!l.remove_opt_out(&a).expect("remove again"));
    assert!(l.opt_outs().expect("list").is_empty());
}

fn a_reservation_counts_for_other_campaigns_at_once(ledger: &TestLedger) {
    let mut l = ledger.open();
    let mut other = ledger.open();
    let cap = Limits {
        cap: Some((1, chrono::Duration::days(7))),
        daily: None,
    };
    let now = Utc::now();
    let a = sender("a", "/a.db");
    let b = sender("b", "/b.db");
    let first = l
        .admit(&a, &[], &candidates(&["+254712000001"]), &cap, now)
        .expect("admit");
    assert_eq!(first, vec![Admission::Admitted]);
    // Not settled yet: still one message for the cap, for every handle.
    let second = other
        .admit(&b, &[], &candidates(&["+254712000001"]), &cap, now)
        .expect("admit");
    assert_eq!(second, vec![Admission::Capped { messages: 1 }]);
    // The same row of the same state asking again is the same message.
    let again = l
        .admit(&a, &[], &candidates(&["+254712000001"]), &cap, now)
        .expect("admit");
    assert_eq!(again, vec![Admission::Admitted]);
    // It did not go out: the phone is free again.
    l.settle(&a, &[("+254712000001".into(), 1, Settled::NotSent)])
        .expect("settle");
    assert!(l.messages().expect("read").is_empty());
    assert_eq!(
        other
            .admit(&b, &[], &candidates(&["+254712000001"]), &cap, now)
            .expect("admit"),
        vec![Admission::Admitted]
    );
}

fn the_daily_limit_counts_unique_phones_and_holds_the_rest_of_the_claim(ledger: &TestLedger) {
    let mut l = ledger.open();
    let daily = Limits {
        cap: None,
        daily: Some(2),
    };
    let now = Utc::now();
    let hour_ago = now - chrono::Duration::hours(1);
    let old = sender("old", "/old.db");
    l.admit(
        &old,
        &[],
        &candidates(&["+254712000001"]),
        &Limits::default(),
        hour_ago,
    )
    .expect("admit");
    l.settle(
        &old,
        &[(
            "+254712000001".into(),
            1,
            Settled::Sent {
                message_id: Some("m".into()),
                at: hour_ago,
            },
        )],
    )
    .expect("settle");
    let answers = l
        .admit(
            &sender("a", "/a.db"),
            &[],
            // The first phone was messaged an hour ago: it takes no new slot.
            &candidates(&[
                "+254712000001",
                "+254712000002",
                "+254712000003",
                "+254712000001",
            ]),
            &daily,
            now,
        )
        .expect("admit");
    assert_eq!(
        answers,
        vec![
            Admission::Admitted,
            Admission::Admitted,
            Admission::Held,
            Admission::Held
        ]
    );
    // A phone stays counted until its last message leaves the window: both
    // were messaged (reserved) just now.
    let next = l.next_daily_slot(2, now).expect("slot").expect("used up");
    let expected = now + chrono::Duration::hours(24);
    assert!(
        (next - expected).num_seconds().abs() <= 1,
        "{next} vs {expected}"
    );
    assert_eq!(l.next_daily_slot(3, now).expect("slot"), None);
}

fn a_resend_that_does_not_go_out_restores_the_uncertain_message(ledger: &TestLedger) {
    let mut l = ledger.open();
    let a = sender("a", "/a.db");
    let now = Utc::now();
    let earlier = now - chrono::Duration::hours(2);
    l.admit(
        &a,
        &[],
        &candidates(&["+254712000001"]),
        &Limits::default(),
        earlier,
    )
    .expect("admit");
    l.settle(
        &a,
        &[(
            "+254712000001".into(),
            1,
            Settled::Uncertain { at: earlier },
        )],
    )
    .expect("settle");
    l.admit(
        &a,
        &[],
        &candidates(&["+254712000001"]),
        &Limits::default(),
        now,
    )
    .expect("admit again");
    assert_eq!(l.sending_of(&a).expect("sending").len(), 1);
    l.settle(&a, &[("+254712000001".into(), 1, Settled::NotSent)])
        .expect("settle");
    let m = l.messages().expect("read");
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].state, LedgerState::Uncertain);
    // With its own time: it counts as long as the first attempt does, no longer.
    assert_eq!(timestamp(m[0].at), timestamp(earlier));
    assert!(l.sending_of(&a).expect("sending").is_empty());
}

fn second_states_and_a_campaigns_messages_are_found(ledger: &TestLedger) {
    let mut l = ledger.open();
    let now = Utc::now();
    let here = sender("bf", "/c/bf.state.db");
    let there = sender("bf", "/d/bf.state.db");
    let went = |at| Settled::Sent {
        message_id: Some("m".into()),
        at,
    };
    l.admit(
        &here,
        &[],
        &candidates(&["+254712000001"]),
        &Limits::default(),
        now,
    )
    .expect("admit");
    l.settle(&here, &[("+254712000001".into(), 1, went(now))])
        .expect("settle");
    // The same campaign from another state: uncertain there, sent here.
    l.admit(
        &there,
        &[],
        &candidates(&["+254712000001", "+254712000002"]),
        &Limits::default(),
        now,
    )
    .expect("admit");
    l.settle(
        &there,
        &[
            ("+254712000001".into(), 1, Settled::Uncertain { at: now }),
            ("+254712000002".into(), 2, went(now)),
        ],
    )
    .expect("settle");
    assert_eq!(
        l.other_state_files("bf", "/c/bf.state.db").expect("others"),
        vec![("/d/bf.state.db".to_owned(), 2)]
    );
    assert!(
        l.other_state_files("nl", "/c/nl.state.db")
            .expect("none")
            .is_empty()
    );
    let mut messaged = l.campaign_messages("bf").expect("messages");
    messaged.sort_by(|a, b| a.phone.cmp(&b.phone));
    let seen: Vec<(&str, LedgerState)> = messaged
        .iter()
        .map(|m| (m.phone.as_str(), m.state))
        .collect();
    // One per phone, the certain delivery first.
    assert_eq!(
        seen,
        vec![
            ("+254712000001", LedgerState::Sent),
            ("+254712000002", LedgerState::Sent)
        ]
    );
    // A campaign asking from a second state sees the other one's phones.
    let elsewhere = l
        .admit(
            &here,
            &[],
            &candidates(&["+254712000002"]),
            &Limits::default(),
            now,
        )
        .expect("admit");
    assert_eq!(elsewhere, vec![Admission::MessagedElsewhere]);
}

fn outcomes_of_one_phone_settle_in_the_order_they_came(ledger: &TestLedger) {
    let mut l = ledger.open();
    let a = sender("a", "/a.db");
    let now = Utc::now();
    let phones = candidates(&["+254712000001", "+254712000002"]);
    l.admit(&a, &[], &phones, &Limits::default(), now)
        .expect("admit");
    // Answers of two commits settled together: the later one wins.
    let answers = [
        (
            "+254712000001".to_owned(),
            1,
            Settled::Uncertain { at: now },
        ),
        ("+254712000002".to_owned(), 2, Settled::NotSent),
        (
            "+254712000001".to_owned(),
            1,
            Settled::Sent {
                message_id: Some("late".into()),
                at: now,
            },
        ),
    ];
    let settled = l
        .admit(
            &a,
            &answers,
            &candidates(&["+254712000003"]),
            &Limits::default(),
            now,
        )
        .expect("admit and settle");
    assert_eq!(settled, vec![Admission::Admitted]);
    let m = l.messages().expect("read");
    let by_phone: std::collections::HashMap<&str, (LedgerState, Option<&str>)> = m
        .iter()
        .map(|e| (e.phone.as_str(), (e.state, e.message_id.as_deref())))
        .collect();
    assert_eq!(by_phone.len(), 2, "{m:?}");
    assert_eq!(by_phone["+254712000001"], (LedgerState::Sent, Some("late")));
    assert_eq!(by_phone["+254712000003"].0, LedgerState::Sending);
}

/// Runners on four machines admit claims of their own phones at the same
/// moment (a barrier before each claim), each round with room for three
/// more recipients under the daily limit: each round admits exactly three
/// in all, never more, whoever gets them.
fn concurrent_admissions_never_pass_the_daily_limit(ledger: &TestLedger) {
    const RUNNERS: usize = 4;
    const ROUNDS: u32 = 8;
    let now = Utc::now();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(RUNNERS));
    let runners: Vec<_> = (0..RUNNERS)
        .map(|runner| {
            let mut l = ledger.open();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let me = sender(&format!("c{runner}"), &format!("/{runner}.db"));
                let mut admitted = Vec::new();
                for round in 1..=ROUNDS {
                    let limits = Limits {
                        cap: None,
                        daily: Some(3 * round),
                    };
                    let phones: Vec<String> = (0..5)
                        .map(|i| format!("+2547{runner}{round:03}{i:04}"))
                        .collect();
                    let asked: Vec<&str> = phones.iter().map(String::as_str).collect();
                    barrier.wait();
                    let answers = l
                        .admit(&me, &[], &candidates(&asked), &limits, now)
                        .expect("admit");
                    admitted.push(
                        answers
                            .iter()
                            .filter(|a| **a == Admission::Admitted)
                            .count(),
                    );
                    // Everyone's round is over before the limit grows.
                    barrier.wait();
                }
                admitted
            })
        })
        .collect();
    let per_runner: Vec<Vec<usize>> = runners
        .into_iter()
        .map(|r| r.join().expect("runner"))
        .collect();
    for round in 0..ROUNDS as usize {
        let in_round: usize = per_runner.iter().map(|r| r[round]).sum();
        assert_eq!(in_round, 3, "round {}: {per_runner:?}", round + 1);
    }
    assert_eq!(
        ledger.open().messages().expect("read").len(),
        3 * ROUNDS as usize
    );
}

/// Runners of four campaigns on four machines ask for the same phones at
/// the same moment (a barrier before each claim) under a cap of one
/// message a week: each phone is admitted once in all.
fn concurrent_admissions_never_pass_the_cap(ledger: &TestLedger) {
    const RUNNERS: usize = 4;
    let limits = Limits {
        cap: Some((1, chrono::Duration::days(7))),
        daily: None,
    };
    let now = Utc::now();
    let phones: Vec<String> = (0..40).map(|i| format!("+25471200{i:04}")).collect();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(RUNNERS));
    let runners: Vec<_> = (0..RUNNERS)
        .map(|runner| {
            let mut l = ledger.open();
            let phones = phones.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let me = sender(&format!("c{runner}"), &format!("/{runner}.db"));
                let mut admitted = Vec::new();
                for claim in phones.chunks(4) {
                    let asked: Vec<&str> = claim.iter().map(String::as_str).collect();
                    barrier.wait();
                    let answers = l
                        .admit(&me, &[], &candidates(&asked), &limits, now)
                        .expect("admit");
                    for (phone, answer) in claim.iter().zip(answers) {
                        if answer == Admission::Admitted {
                            admitted.push(phone.clone());
                        }
                    }
                }
                admitted
            })
        })
        .collect();
    let mut admitted: Vec<String> = runners
        .into_iter()
        .flat_map(|r| r.join().expect("runner"))
        .collect();
    admitted.sort();
    assert_eq!(admitted, phones, "each phone admitted exactly once");
}

fn a_ledger_not_made_yet_is_none_and_opening_makes_it(ledger: &TestLedger) {
    let at = ledger.location();
    assert!(super::open_existing(&at).expect("reads").is_none());
    let mut l = ledger.open();
    l.add_opt_outs(&[phone("+254712000001")], "cli")
        .expect("add");
    let again = super::open_existing(&at)
        .expect("reads")
        .expect("made by the first open");
    assert_eq!(again.opt_outs().expect("list").len(), 1);
}

#[test]
fn a_database_ledger_is_shown_without_its_password() {
    let at = LedgerLocation::parse(std::ffi::OsStr::new(
        "postgres://convers8:s3cret@db.internal/campaigns?sslmode=require",
    ));
    assert!(at.is_database());
    let shown = at.to_string();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(!format!("{at:?}").contains("s3cret"));
    assert!(shown.contains("db.internal/campaigns"), "{shown}");
}

/// Two runners of one shared state reserve under one sender. Runner X gave
/// a row back (it never sent it) and runner Y claimed it and reserved the
/// phone again before X's "not sent" reached the ledger: X's answer must
/// not take back Y's reservation, which counts until Y settles it.
fn a_late_not_sent_keeps_another_runners_reservation(ledger: &TestLedger) {
    let mut x = ledger.open();
    let mut y = ledger.open();
    let shared = sender("c", "postgres://db/campaigns#c");
    let now = Utc::now();
    let p = candidates(&["+254712000001"]);
    x.admit(&shared, &[], &p, &Limits::default(), now)
        .expect("x reserves");
    y.admit(&shared, &[], &p, &Limits::default(), now)
        .expect("y reserves");
    x.settle(&shared, &[("+254712000001".into(), 1, Settled::NotSent)])
        .expect("x: not sent");
    let m = y.messages().expect("read");
    assert_eq!(m.len(), 1, "y's reservation is still there: {m:?}");
    assert_eq!(m[0].state, LedgerState::Sending);
    // Y's own answer settles it.
    y.settle(&shared, &[("+254712000001".into(), 1, Settled::NotSent)])
        .expect("y: not sent");
    assert!(y.messages().expect("read").is_empty());
    // A dead run's leftovers are settled whoever reserved them.
    x.admit(&shared, &[], &p, &Limits::default(), now)
        .expect("x reserves again");
    y.settle_leftovers(&shared, &[("+254712000001".into(), 1, Settled::NotSent)])
        .expect("leftovers");
    assert!(y.messages().expect("read").is_empty());
}

/// One run keeps reserving a phone and giving it back (its messages do not
/// go out), with no limits of its own; another campaign's claims ask for
/// that phone and a new one under a daily limit that the two phones
/// already on the ledger use up. Whatever the interleaving, the new phone
/// is never admitted: a give-back between an admission's reading of "that
/// phone is already counted today" and its count of the day would let it.
fn a_reservation_given_back_meanwhile_never_lets_a_claim_pass_the_daily_limit(ledger: &TestLedger) {
    let now = Utc::now();
    let mut setup = ledger.open();
    let old = sender("old", "/old.db");
    setup
        .admit(
            &old,
            &[],
            &candidates(&["+254712000001"]),
            &Limits::default(),
            now,
        )
        .expect("admit");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let toggler = {
        let mut l = ledger.open();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let a = sender("a", "/a.db");
            let q = candidates(&["+254712000002"]);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                l.admit(&a, &[], &q, &Limits::default(), now)
                    .expect("reserve");
                l.settle(&a, &[("+254712000002".into(), 1, Settled::NotSent)])
                    .expect("give back");
            }
        })
    };
    let mut b = ledger.open();
    let me = sender("b", "/b.db");
    let daily = Limits {
        cap: None,
        daily: Some(2),
    };
    let mut over = 0;
    for i in 0..300 {
        let fresh = format!("+2547130{i:05}");
        let answers = b
            .admit(
                &me,
                &[],
                &candidates(&["+254712000002", &fresh]),
                &daily,
                now,
            )
            .expect("admit");
        if answers[1] == Admission::Admitted {
            over += 1;
        }
        // Give back what this claim reserved, for the next round.
        let back: Vec<(String, u64, Settled)> = ["+254712000002".to_owned(), fresh]
            .into_iter()
            .zip(answers)
            .filter(|(_, a)| *a == Admission::Admitted)
            .map(|(p, _)| (p, 1, Settled::NotSent))
            .collect();
        b.settle(&me, &back).expect("give back");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    toggler.join().expect("toggler");
    assert_eq!(
        over, 0,
        "claims admitted a third recipient under a limit of 2"
    );
}
