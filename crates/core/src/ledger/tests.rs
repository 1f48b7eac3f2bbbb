//! The ledger against real files in a temporary directory.

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
    let ledger = Ledger::open(&path).expect("opens");
    drop(ledger);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("deep")), 0o700);
    }
    // Opening again migrates nothing and keeps what is there.
    let mut again = Ledger::open(&path).expect("reopens");
    again
        .record(&[entry("+254712000001", "a", "a.state.db", 0)])
        .expect("record");
    assert_eq!(
        Ledger::open(&path)
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
    let e = Ledger::open(&state)
        .expect_err("a state is no ledger")
        .to_string();
    assert!(e.contains("a campaign's state file"), "{e}");
    let other = dir.path().join("other.db");
    let conn = Connection::open(&other).expect("other");
    conn.execute_batch("CREATE TABLE t (x)").expect("create");
    drop(conn);
    let e = Ledger::open(&other).expect_err("foreign").to_string();
    assert!(e.contains("is not a ledger"), "{e}");
}

#[test]
fn counts_for_caps_limits_and_second_states() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = Ledger::open(&dir.path().join("l.db")).expect("opens");
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
fn opt_outs_are_added_once_listed_and_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = Ledger::open(&dir.path().join("l.db")).expect("opens");
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
    assert!(l.remove_opt_out(&a).expect("remove"));
    assert!(!l.remove_opt_out(&a).expect("remove again"));
    assert!(l.opt_outs().expect("list").is_empty());
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
            std::thread::spawn(move || Ledger::open(&path).map(|_| ()).map_err(|e| e.to_string()))
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
fn a_reservation_counts_for_other_campaigns_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = Ledger::open(&dir.path().join("l.db")).expect("opens");
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
    // Not settled yet: still one message for the cap.
    let second = l
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
        l.admit(&b, &[], &candidates(&["+254712000001"]), &cap, now)
            .expect("admit"),
        vec![Admission::Admitted]
    );
}

#[test]
fn the_daily_limit_counts_unique_phones_and_holds_the_rest_of_the_claim() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = Ledger::open(&dir.path().join("l.db")).expect("opens");
    let daily = Limits {
        cap: None,
        daily: Some(2),
    };
    let now = Utc::now();
    l.record(&[entry("+254712000001", "old", "/old.db", 60)])
        .expect("record");
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

#[test]
fn a_resend_that_does_not_go_out_restores_the_uncertain_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = Ledger::open(&dir.path().join("l.db")).expect("opens");
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
    let l = Ledger::open(&path).expect("migrates");
    let m = l.messages().expect("read");
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].state, LedgerState::Sent);
}
