//! Unit tests of the state: the contract of the store seam ([`StateStore`],
//! [`StateRead`], [`PlanRows`]) as one suite run on both stores, and the few
//! tests of what only an SQLite file has.
//!
//! Each contract test is written once, as a function of a [`TestStore`] (an
//! empty state it opens through the same seam a run does), and listed in
//! `conformance!`, which makes it two tests: `sqlite::<name>` on a state
//! file and `postgres::<name>` on a campaign in a fresh database of the
//! server named by `CONVERS8_TEST_PG_URL` (skipped, saying so, without one;
//! a failure under `CI=true`).

use chrono::TimeZone;

use super::reads::ErrorStateCount;
use super::test_support::{TestStore, sendable};
use super::*;

/// Makes each contract test `fn name(store: &TestStore)` two tests,
/// `sqlite::name` and `postgres::name`.
macro_rules! conformance {
    ($($test:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $test() {
                    super::$test(&super::TestStore::sqlite());
                }
            )+
        }

        mod postgres {
            $(
                #[test]
                fn $test() {
                    if let Some(store) = super::TestStore::postgres() {
                        super::$test(&store);
                    }
                }
            )+
        }
    };
}

conformance!(
    plan_decides_duplicates_and_counts_add_up,
    the_plan_record_reads_back_as_written,
    a_failed_plan_leaves_nothing_behind,
    claims_go_in_row_order_and_a_dead_runs_rows_in_flight_become_uncertain,
    record_ignores_rows_not_sending,
    retry_resets_only_the_selection,
    add_mode_skips_planned_phones,
    add_mode_does_not_plan_an_unusable_row_twice,
    claims_take_only_rows_of_the_zones_named,
    a_screened_claim_suppresses_turned_away_rows_and_claims_others_instead,
    a_screen_that_cannot_read_its_list_claims_nothing,
    a_held_row_keeps_its_state_and_ends_the_claim,
    suppressed_rows_of_a_reason_are_claimed_again_when_selected,
    a_run_never_takes_back_a_row_it_resent_or_suppressed_again,
    a_suppression_problem_is_planned_suppressed,
    report_aggregates_count_sends_attempts_and_errors,
    runs_are_recorded_newest_first,
    rows_read_back_in_row_order_as_planned,
    the_rolling_window_counts_sends_in_time_order,
    rows_the_ledger_shows_messaged_are_planned_sent_or_uncertain,
    add_mode_updates_the_csv_record_and_keeps_when_it_was_planned,
    replace_mode_plans_again_from_scratch,
    a_plan_larger_than_a_batch_reads_back_whole,
);

fn info(rows: u64) -> PlanInfo {
    test_support::plan_info("t", rows)
}

fn pending(row: u64, phone: &str) -> PlannedRow {
    PlannedRow {
        row,
        phone: Some(phone.into()),
        name: Some(format!("n{row}")),
        outcome: Ok(body_of(phone)),
        timezone: None,
    }
}

/// The body planned for `phone` by [`pending`].
fn body_of(phone: &str) -> String {
    format!("{{\"to\":\"{phone}\"}}")
}

/// A run's handle on a state with `n` pending rows, numbered 1..=n.
fn planned(store: &TestStore, n: u64) -> Box<dyn StateStore> {
    let mut db = store.open_for_run();
    plan(
        db.as_mut(),
        (1..=n)
            .map(|i| pending(i, &format!("+25470000000{i}")))
            .collect(),
    );
    db
}

fn plan(db: &mut dyn StateStore, rows: Vec<PlannedRow>) -> Vec<Inserted> {
    let n = rows.len() as u64;
    write_plan(db, PlanWrite::Fresh, |sink| {
        let mut out = Vec::new();
        for r in &rows {
            out.push(sink.insert(r)?);
        }
        Ok::<_, StateError>((out, info(n)))
    })
    .expect("plan")
}

fn plan_decides_duplicates_and_counts_add_up(store: &TestStore) {
    let mut db = store.open_for_run();
    let inserted = plan(
        db.as_mut(),
        vec![
            pending(1, "+254700000001"),
            pending(2, "+254700000002"),
            pending(3, "+254700000001"),
            PlannedRow {
                row: 4,
                phone: Some("0712".into()),
                name: None,
                outcome: Err(PlanProblem {
                    code: ProblemCode::InvalidPhone,
                    details: "bad".into(),
                }),
                timezone: None,
            },
        ],
    );
    assert_eq!(
        inserted,
        vec![
            Inserted::Pending,
            Inserted::Pending,
            Inserted::Duplicate { of_row: 1 },
            Inserted::Invalid
        ]
    );
    let counts = db.counts().expect("counts");
    assert_eq!(
        (counts.pending, counts.duplicate, counts.invalid),
        (2, 1, 1)
    );
    assert_eq!(counts.total(), 4);
    assert_eq!(db.plan_info().expect("info").map(|i| i.csv_rows), Some(4));
}

fn a_failed_plan_leaves_nothing_behind(store: &TestStore) {
    let mut db = store.open_for_run();
    let result: Result<(), StateError> = write_plan(db.as_mut(), PlanWrite::Fresh, |sink| {
        sink.insert(&pending(1, "+254700000001"))?;
        Err(StateError::NotPlanned {
            path: "row 2 broke the plan".into(),
        })
    });
    assert!(result.is_err());
    assert_eq!(db.counts().expect("counts").total(), 0);
    assert!(db.plan_info().expect("info").is_none());
}

fn claims_go_in_row_order_and_a_dead_runs_rows_in_flight_become_uncertain(store: &TestStore) {
    let mut db = planned(store, 5);
    let claimed = db.claim(3).expect("claim");
    assert_eq!(claimed.iter().map(|c| c.row).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(db.counts().expect("counts").sending, 3);
    let now = Utc::now();
    db.record(&[
        RowOutcome {
            id: claimed[0].id,
            attempts: 1,
            at: now,
            outcome: Outcome::Sent {
                message_id: "wamid.1".into(),
            },
        },
        RowOutcome {
            id: claimed[1].id,
            attempts: 0,
            at: now,
            outcome: Outcome::Released,
        },
    ])
    .expect("record");
    // Row 3 is still `sending` when the run dies. The next run's recovery
    // makes it uncertain: it may have been delivered.
    store.run_dies(db);
    let mut db = store.open_for_run();
    assert_eq!(db.mark_interrupted_uncertain().expect("recover"), 1);
    let counts = db.counts().expect("counts");
    assert_eq!(
        (
            counts.sent,
            counts.pending,
            counts.uncertain,
            counts.sending
        ),
        (1, 3, 1, 0)
    );
    // The daily limit counts the uncertain row too: it may have been delivered.
    assert_eq!(
        db.sent_since(now - chrono::Duration::seconds(1))
            .expect("n"),
        2
    );
    // The released row comes back first.
    assert_eq!(db.claim(1).expect("claim")[0].row, 2);
}

fn record_ignores_rows_not_sending(store: &TestStore) {
    // A late outcome must never overwrite a row someone already settled.
    let mut db = store.open_for_run();
    plan(db.as_mut(), vec![pending(1, "+254700000001")]);
    let claimed = db.claim(1).expect("claim");
    let sent = RowOutcome {
        id: claimed[0].id,
        attempts: 1,
        at: Utc::now(),
        outcome: Outcome::Sent {
            message_id: "m".into(),
        },
    };
    db.record(std::slice::from_ref(&sent)).expect("record");
    db.record(&[RowOutcome {
        outcome: Outcome::Failed {
            code: "validation_error".into(),
            details: "late".into(),
        },
        ..sent
    }])
    .expect("record");
    assert_eq!(db.counts().expect("counts").sent, 1);
}

fn retry_resets_only_the_selection(store: &TestStore) {
    let mut db = planned(store, 3);
    let claimed = db.claim(3).expect("claim");
    let outcome = |id, failed: bool, code: &str| RowOutcome {
        id,
        attempts: 1,
        at: Utc::now(),
        outcome: if failed {
            Outcome::Failed {
                code: code.into(),
                details: String::new(),
            }
        } else {
            Outcome::Uncertain {
                code: code.into(),
                details: String::new(),
            }
        },
    };
    db.record(&[
        outcome(claimed[0].id, true, "validation_error"),
        outcome(claimed[1].id, true, "internal_error"),
        outcome(claimed[2].id, false, "no_answer"),
    ])
    .expect("record");
    let only_500 = RetrySelection::Failed {
        codes: vec!["internal_error".into()],
    };
    assert_eq!(db.count_for_retry(&only_500).expect("count"), 1);
    // Rows changed in the moment the selection is given count as this run's own.
    std::thread::sleep(std::time::Duration::from_millis(5));
    // A resend selection is claimed like pending rows, and only by this handle.
    db.resend_during_run(Some(only_500));
    let claimed = db.claim(10).expect("claim");
    assert_eq!(claimed.iter().map(|c| c.row).collect::<Vec<_>>(), [2]);
    db.resend_during_run(Some(RetrySelection::Uncertain));
    let claimed = db.claim(10).expect("claim");
    assert_eq!(claimed.iter().map(|c| c.row).collect::<Vec<_>>(), [3]);
    db.resend_during_run(None);
    assert!(
        db.claim(10).expect("claim").is_empty(),
        "nothing else is claimable"
    );
    // Rows claimed and given back unsent are pending; the others keep their state.
    db.record(&[RowOutcome {
        id: claimed[0].id,
        attempts: 0,
        at: Utc::now(),
        outcome: Outcome::Released,
    }])
    .expect("record");
    let counts = db.counts().expect("counts");
    assert_eq!((counts.pending, counts.failed, counts.sending), (1, 1, 1));
    assert_eq!(
        db.error_counts().expect("errors"),
        vec![("validation_error".to_owned(), 1)]
    );
}

fn add_mode_skips_planned_phones(store: &TestStore) {
    let mut db = store.open_for_run();
    plan(db.as_mut(), vec![pending(1, "+254700000001")]);
    let inserted = write_plan(db.as_mut(), PlanWrite::Add, |sink| {
        let a = sink.insert(&pending(1, "+254700000001"))?;
        let b = sink.insert(&pending(2, "+254700000002"))?;
        let c = sink.insert(&pending(3, "+254700000002"))?;
        Ok::<_, StateError>((vec![a, b, c], info(3)))
    })
    .expect("add");
    assert_eq!(
        inserted,
        vec![
            Inserted::AlreadyPlanned,
            Inserted::Pending,
            Inserted::Duplicate { of_row: 2 }
        ]
    );
    assert_eq!(db.counts().expect("counts").pending, 2);
}

fn add_mode_does_not_plan_an_unusable_row_twice(store: &TestStore) {
    // Regression: a bad row without a phone was inserted again on every
    // --add-new-recipients pass, so the counts outgrew the CSV.
    let mut db = store.open_for_run();
    let bad = PlannedRow {
        row: 2,
        phone: None,
        name: None,
        outcome: Err(PlanProblem {
            code: ProblemCode::BadRow,
            details: "line 3: has 1 field".into(),
        }),
        timezone: None,
    };
    plan(db.as_mut(), vec![pending(1, "+254700000001"), bad.clone()]);
    let inserted = write_plan(db.as_mut(), PlanWrite::Add, |sink| {
        let a = sink.insert(&pending(1, "+254700000001"))?;
        let b = sink.insert(&bad)?;
        let c = sink.insert(&PlannedRow {
            row: 3,
            ..bad.clone()
        })?;
        Ok::<_, StateError>((vec![a, b, c], info(3)))
    })
    .expect("add");
    assert_eq!(
        inserted,
        vec![
            Inserted::AlreadyPlanned,
            Inserted::AlreadyPlanned,
            Inserted::Invalid
        ]
    );
    assert_eq!(db.counts().expect("counts").total(), 3);
}

fn claims_take_only_rows_of_the_zones_named(store: &TestStore) {
    use crate::zones::{RowZone, ZoneSource};
    let zoned = |row: u64, phone: &str, zone: chrono_tz::Tz| PlannedRow {
        timezone: Some(RowZone {
            zone,
            source: ZoneSource::Country,
        }),
        ..pending(row, phone)
    };
    let mut db = store.open_for_run();
    plan(
        db.as_mut(),
        vec![
            zoned(1, "+221771234567", chrono_tz::Africa::Abidjan),
            zoned(2, "+254712345678", chrono_tz::Africa::Nairobi),
            zoned(3, "+221771234568", chrono_tz::Africa::Abidjan),
            zoned(4, "+254712345679", chrono_tz::Africa::Nairobi),
        ],
    );
    assert_eq!(
        db.rows_by_zone(&[RecipientState::Pending]).expect("zones"),
        [
            (Some("Africa/Abidjan".to_owned()), 2),
            (Some("Africa/Nairobi".to_owned()), 2)
        ]
    );
    // No zone open: nothing is claimed, and the rows stay pending.
    db.claim_only_zones(Some(Vec::new()));
    assert!(db.claim(10).expect("claim").is_empty());
    assert_eq!(db.counts().expect("counts").pending, 4);
    // Nairobi open: its rows only, with their zone.
    db.claim_only_zones(Some(vec!["Africa/Nairobi".to_owned()]));
    let claimed = db.claim(10).expect("claim");
    let rows: Vec<(u64, Option<&str>)> = claimed
        .iter()
        .map(|c| (c.row, c.timezone.as_deref()))
        .collect();
    assert_eq!(
        rows,
        [(2, Some("Africa/Nairobi")), (4, Some("Africa/Nairobi"))]
    );
    // The limit lifted: the rest.
    db.claim_only_zones(None);
    let rest: Vec<u64> = db.claim(10).expect("claim").iter().map(|c| c.row).collect();
    assert_eq!(rest, [1, 3]);
}

fn a_screened_claim_suppresses_turned_away_rows_and_claims_others_instead(store: &TestStore) {
    let mut db = planned(store, 5);
    let turned_away = ["+254700000001", "+254700000002", "+254700000004"];
    let mut seen = Vec::new();
    let claimed = db
        .record_and_claim_screened(&[], 2, &mut |rows: &[Claimed]| {
            seen.extend(rows.iter().map(|r| r.phone.clone()));
            Ok(rows
                .iter()
                .map(|r| {
                    if turned_away.contains(&r.phone.as_str()) {
                        Verdict::Suppress(Suppression {
                            code: ProblemCode::OptedOut,
                            details: "on the list".into(),
                        })
                    } else {
                        Verdict::Send
                    }
                })
                .collect())
        })
        .expect("claim");
    // Rows 1 and 2 were turned away, so 3 and (after 4 was too) 5 were claimed.
    assert_eq!(
        claimed.iter().map(|c| c.row).collect::<Vec<_>>(),
        vec![3, 5]
    );
    assert_eq!(seen.len(), 5, "{seen:?}");
    let c = db.counts().expect("counts");
    assert_eq!(
        (c.sending, c.suppressed, c.pending, c.total()),
        (2, 3, 0, 5)
    );
    assert_eq!(
        db.error_codes_by_state().expect("codes")[0].code,
        "opted_out"
    );
}

fn a_screen_that_cannot_read_its_list_claims_nothing(store: &TestStore) {
    let mut db = planned(store, 3);
    let e = db
        .record_and_claim_screened(&[], 2, &mut |_: &[Claimed]| Err("ledger locked".into()))
        .expect_err("no claim");
    assert!(matches!(e, StateError::Screen(_)), "{e}");
    assert_eq!(db.counts().expect("counts").pending, 3);
}

fn a_held_row_keeps_its_state_and_ends_the_claim(store: &TestStore) {
    let mut db = planned(store, 5);
    // The limit has room for two: the third row and every later one wait.
    let mut admitted = 0;
    let claimed = db
        .record_and_claim_screened(&[], 5, &mut |rows: &[Claimed]| {
            Ok(rows
                .iter()
                .map(|_| {
                    admitted += 1;
                    if admitted <= 2 {
                        Verdict::Send
                    } else {
                        Verdict::Hold
                    }
                })
                .collect())
        })
        .expect("claim");
    assert_eq!(
        claimed.iter().map(|c| c.row).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let c = db.counts().expect("counts");
    assert_eq!((c.sending, c.pending), (2, 3));
}

fn suppressed_rows_of_a_reason_are_claimed_again_when_selected(store: &TestStore) {
    let mut db = planned(store, 3);
    let capped = |rows: &[Claimed]| -> Result<Vec<Verdict>, String> {
        Ok(rows
            .iter()
            .map(|r| {
                if r.row == 2 {
                    Verdict::Suppress(Suppression {
                        code: ProblemCode::FrequencyCap,
                        details: "2 messages in the last 7 days".into(),
                    })
                } else {
                    Verdict::Send
                }
            })
            .collect())
    };
    let mut screen = capped;
    let first = db
        .record_and_claim_screened(&[], 3, &mut screen)
        .expect("claim");
    assert_eq!(first.len(), 2);
    let only_caps = RetrySelection::Suppressed {
        codes: vec!["frequency_cap".into()],
    };
    assert_eq!(db.count_for_retry(&only_caps).expect("count"), 1);
    assert_eq!(
        db.count_for_retry(&RetrySelection::Suppressed {
            codes: vec!["opted_out".into()]
        })
        .expect("count"),
        0
    );
    std::thread::sleep(std::time::Duration::from_millis(5));
    db.resend_during_run(Some(only_caps.clone()));
    let again = db.claim(3).expect("claim");
    assert_eq!(again.iter().map(|c| c.row).collect::<Vec<_>>(), vec![2]);
}

fn a_run_never_takes_back_a_row_it_resent_or_suppressed_again(store: &TestStore) {
    // Regression: a resent row that came back uncertain was claimed again by
    // the same run (sent over and over), and a row suppressed again by the
    // claim's own check was read again and again inside one claim.
    let mut db = planned(store, 3);
    let first = db.claim(3).expect("claim");
    db.record(
        &first
            .iter()
            .map(|c| RowOutcome {
                id: c.id,
                attempts: 1,
                at: Utc::now(),
                outcome: Outcome::Uncertain {
                    code: "no_answer".into(),
                    details: "timeout".into(),
                },
            })
            .collect::<Vec<_>>(),
    )
    .expect("record");
    std::thread::sleep(std::time::Duration::from_millis(5));
    db.resend_during_run(Some(RetrySelection::Uncertain));
    let resent = db.claim(3).expect("claim");
    assert_eq!(resent.len(), 3);
    db.record(
        &resent
            .iter()
            .map(|c| RowOutcome {
                id: c.id,
                attempts: 1,
                at: Utc::now(),
                outcome: Outcome::Uncertain {
                    code: "no_answer".into(),
                    details: "timeout again".into(),
                },
            })
            .collect::<Vec<_>>(),
    )
    .expect("record");
    assert!(
        db.claim(3).expect("claim").is_empty(),
        "resent twice in one run"
    );

    // Suppressed again at every claim: the claim ends instead of looping.
    std::thread::sleep(std::time::Duration::from_millis(5));
    db.resend_during_run(Some(RetrySelection::Uncertain));
    let mut screened = 0;
    let claimed = db
        .record_and_claim_screened(&[], 2, &mut |rows: &[Claimed]| {
            screened += rows.len();
            Ok(rows
                .iter()
                .map(|_| {
                    Verdict::Suppress(Suppression {
                        code: ProblemCode::FrequencyCap,
                        details: "capped".into(),
                    })
                })
                .collect())
        })
        .expect("claim");
    assert!(claimed.is_empty());
    assert_eq!(screened, 3, "each row is screened once");
}

fn a_suppression_problem_is_planned_suppressed(store: &TestStore) {
    let mut db = store.open_for_run();
    let inserted = plan(
        db.as_mut(),
        vec![
            pending(1, "+254700000001"),
            PlannedRow {
                outcome: Err(PlanProblem {
                    code: ProblemCode::Excluded,
                    details: "in x.csv".into(),
                }),
                ..pending(2, "+254700000002")
            },
        ],
    );
    assert_eq!(inserted, vec![Inserted::Pending, Inserted::Suppressed]);
    assert_eq!(db.counts().expect("counts").suppressed, 1);
}

fn the_plan_record_reads_back_as_written(store: &TestStore) {
    let mut db = store.open_for_run();
    assert!(
        db.plan_info().expect("info").is_none(),
        "nothing planned yet"
    );
    let written = info(2);
    write_plan(db.as_mut(), PlanWrite::Fresh, |sink| {
        sink.insert(&pending(1, "+254700000001"))?;
        sink.insert(&pending(2, "+254700000002"))?;
        Ok::<_, StateError>(((), written.clone()))
    })
    .expect("plan");
    assert_eq!(db.plan_info().expect("info"), Some(written.clone()));
    // A reader (`status`, `report`) sees the committed plan while the run
    // that wrote it is still open.
    let reader = store.open_for_reading();
    assert_eq!(reader.plan_info().expect("info"), Some(written));
    assert_eq!(reader.counts().expect("counts").pending, 2);
    assert!(!reader.anything_sent().expect("sent"));
}

/// A sendable row's outcome as `state` (anything else: released).
fn outcome_as(
    id: i64,
    state: RecipientState,
    attempts: u32,
    code: Option<&str>,
    at: DateTime<Utc>,
) -> RowOutcome {
    let code = code.map(str::to_owned).unwrap_or_default();
    let details = "details".to_owned();
    RowOutcome {
        id,
        attempts,
        at,
        outcome: match state {
            RecipientState::Sent => Outcome::Sent {
                message_id: format!("m{id}"),
            },
            RecipientState::Failed => Outcome::Failed { code, details },
            RecipientState::Uncertain => Outcome::Uncertain { code, details },
            _ => Outcome::Released,
        },
    }
}

fn report_aggregates_count_sends_attempts_and_errors(store: &TestStore) {
    // Five sendable rows and one invalid one.
    let mut db = store.open_for_run();
    let mut rows: Vec<PlannedRow> = (1..=5).map(sendable).collect();
    rows.push(PlannedRow {
        row: 6,
        phone: Some("12345".into()),
        name: None,
        outcome: Err(PlanProblem {
            code: ProblemCode::InvalidPhone,
            details: "too short".into(),
        }),
        timezone: None,
    });
    plan(db.as_mut(), rows);
    let reader = store.open_for_reading();
    assert_eq!(reader.sent_span().expect("span"), None);
    assert!(reader.sent_per_bucket(16).expect("buckets").is_empty());
    let claimed = db.claim(5).expect("claim");
    let t = |m, s| {
        Utc.with_ymd_and_hms(2026, 3, 4, 14, m, s)
            .single()
            .expect("a valid time")
    };
    db.record(&[
        outcome_as(claimed[0].id, RecipientState::Sent, 1, None, t(5, 1)),
        outcome_as(claimed[1].id, RecipientState::Sent, 1, None, t(5, 59)),
        outcome_as(claimed[2].id, RecipientState::Sent, 2, None, t(7, 0)),
        outcome_as(
            claimed[3].id,
            RecipientState::Failed,
            2,
            Some("internal_error"),
            t(7, 1),
        ),
        outcome_as(
            claimed[4].id,
            RecipientState::Uncertain,
            1,
            Some("no_answer"),
            t(7, 2),
        ),
    ])
    .expect("record");

    let (first, last) = reader.sent_span().expect("span").expect("sends");
    assert_eq!(first, "2026-03-04T14:05:01.000Z");
    assert_eq!(last, "2026-03-04T14:07:00.000Z");
    assert_eq!(
        reader.sent_per_bucket(16).expect("minutes"),
        vec![
            ("2026-03-04T14:05".to_owned(), 2),
            ("2026-03-04T14:07".to_owned(), 1)
        ]
    );
    assert_eq!(
        reader.sent_per_bucket(13).expect("hours"),
        vec![("2026-03-04T14".to_owned(), 3)]
    );

    let attempts = reader.attempts_by_state().expect("attempts");
    let count = |a, s| {
        attempts
            .iter()
            .find(|c| c.attempts == a && c.state == s)
            .map(|c| c.count)
    };
    assert_eq!(count(1, RecipientState::Sent), Some(2));
    assert_eq!(count(2, RecipientState::Sent), Some(1));
    assert_eq!(count(2, RecipientState::Failed), Some(1));
    assert_eq!(count(1, RecipientState::Uncertain), Some(1));
    // The invalid row never reached the network.
    assert!(attempts.iter().all(|c| c.state != RecipientState::Invalid));

    let errors = reader.error_codes_by_state().expect("errors");
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors.contains(&ErrorStateCount {
        code: "invalid_phone".into(),
        state: RecipientState::Invalid,
        count: 1
    }));
    assert_eq!(reader.run_count().expect("runs"), 0);
}

fn runs_are_recorded_newest_first(store: &TestStore) {
    let mut db = planned(store, 1);
    let first = db.start_run().expect("start");
    db.finish_run(first, "completed", 1, 0, 0).expect("finish");
    let second = db.start_run().expect("start");
    let reader = store.open_for_reading();
    assert_eq!(reader.run_count().expect("runs"), 2);
    let runs = reader.runs(10).expect("runs");
    assert_eq!(
        runs.iter().map(|r| r.id).collect::<Vec<_>>(),
        [second, first]
    );
    assert_eq!(runs[0].finished_at, None, "the second run is still going");
    assert_eq!(
        (
            runs[1].outcome.as_deref(),
            runs[1].sent,
            runs[1].pid,
            runs[1].finished_at.is_some()
        ),
        (Some("completed"), 1, std::process::id(), true)
    );
    assert_eq!(reader.runs(1).expect("runs").len(), 1);
}

/// A time the stores keep exactly (they store milliseconds).
fn to_the_millisecond(at: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(at.timestamp_millis())
        .single()
        .expect("a valid time")
}

fn rows_read_back_in_row_order_as_planned(store: &TestStore) {
    let (p1, p4) = ("+254700000001", "+254700000004");
    let mut db = store.open_for_run();
    plan(
        db.as_mut(),
        vec![
            pending(1, p1),
            PlannedRow {
                row: 2,
                phone: Some("0712".into()),
                name: None,
                outcome: Err(PlanProblem {
                    code: ProblemCode::InvalidPhone,
                    details: "too short".into(),
                }),
                timezone: None,
            },
            pending(3, p1),
            pending(4, p4),
        ],
    );
    let reader = store.open_for_reading();
    let mut seen = Vec::new();
    reader
        .for_each_recipient(&[], &mut |r| {
            seen.push((r.row, r.state, r.phone, r.name, r.error_code));
            Ok(())
        })
        .expect("walk");
    let text = |s: &str| Some(s.to_owned());
    assert_eq!(
        seen,
        vec![
            (1, RecipientState::Pending, text(p1), text("n1"), None),
            (
                2,
                RecipientState::Invalid,
                text("0712"),
                None,
                text("invalid_phone")
            ),
            (
                3,
                RecipientState::Duplicate,
                text(p1),
                text("n3"),
                text("duplicate")
            ),
            (4, RecipientState::Pending, text(p4), text("n4"), None),
        ]
    );
    let mut rows = Vec::new();
    reader
        .for_each_recipient(
            &[RecipientState::Duplicate, RecipientState::Invalid],
            &mut |r| {
                rows.push(r.row);
                Ok(())
            },
        )
        .expect("walk");
    assert_eq!(rows, [2, 3]);
    // A visitor that fails (a report's disk full) ends the walk there.
    let mut visited = 0;
    let e = reader
        .for_each_recipient(&[], &mut |_| {
            visited += 1;
            Err(std::io::Error::other("disk full"))
        })
        .expect_err("the walk stops");
    assert!(matches!(e, VisitError::Visitor(_)), "{e}");
    assert_eq!(visited, 1);

    // Only rows that will be sent have a body.
    assert_eq!(
        reader.body_for_row(1).expect("body"),
        Some((p1.to_owned(), body_of(p1)))
    );
    assert_eq!(reader.body_for_row(2).expect("body"), None);
    assert_eq!(reader.body_for_row(3).expect("body"), None);
    assert_eq!(
        reader
            .planned_bodies(RecipientState::Pending, 10)
            .expect("bodies"),
        vec![
            (1, p1.to_owned(), body_of(p1)),
            (4, p4.to_owned(), body_of(p4))
        ]
    );
    assert_eq!(
        reader
            .planned_bodies(RecipientState::Pending, 1)
            .expect("bodies")
            .len(),
        1
    );
    let (record, body) = reader.recipient_at_row(2).expect("row").expect("planned");
    assert_eq!(
        (record.state, record.error_code.as_deref(), body),
        (RecipientState::Invalid, Some("invalid_phone"), None)
    );
    let (record, body) = reader.recipient_at_row(4).expect("row").expect("planned");
    assert_eq!(
        (record.phone.as_deref(), body),
        (Some(p4), Some(body_of(p4)))
    );
    assert!(reader.recipient_at_row(9).expect("row").is_none());
    // A phone's row is the one planned for it, not its duplicate.
    assert_eq!(
        reader.recipient_by_phone(p1).expect("phone").map(|r| r.row),
        Some(1)
    );
    assert!(
        reader
            .recipient_by_phone("+254799999999")
            .expect("phone")
            .is_none()
    );
}

fn the_rolling_window_counts_sends_in_time_order(store: &TestStore) {
    let mut db = planned(store, 4);
    let claimed = db.claim(4).expect("claim");
    let since = to_the_millisecond(Utc::now() - chrono::Duration::minutes(10));
    let after = |minutes| since + chrono::Duration::minutes(minutes);
    let sent = |id, at| RowOutcome {
        id,
        attempts: 1,
        at,
        outcome: Outcome::Sent {
            message_id: format!("m{id}"),
        },
    };
    db.record(&[
        sent(claimed[0].id, after(3)),
        sent(claimed[1].id, after(1)),
        RowOutcome {
            id: claimed[2].id,
            attempts: 1,
            at: after(2),
            outcome: Outcome::Uncertain {
                code: "no_answer".into(),
                details: "timeout".into(),
            },
        },
        // Before the window.
        sent(claimed[3].id, after(-60)),
    ])
    .expect("record");
    // The uncertain row counts against the limit: it may have been delivered.
    assert_eq!(db.sent_since(since).expect("sent"), 3);
    // The window frees its slots as the oldest sends in it leave it.
    assert_eq!(db.nth_sent_since(since, 1).expect("nth"), Some(after(1)));
    assert_eq!(db.nth_sent_since(since, 2).expect("nth"), Some(after(3)));
    assert_eq!(db.nth_sent_since(since, 3).expect("nth"), None);
    assert_eq!(db.sent_since(after(2)).expect("sent"), 2);
}

fn rows_the_ledger_shows_messaged_are_planned_sent_or_uncertain(store: &TestStore) {
    let (p1, p2) = ("+254700000001", "+254700000002");
    let at = to_the_millisecond(Utc::now() - chrono::Duration::days(1));
    let earlier = |phone: &str, sent: bool| EarlierMessage {
        phone: phone.to_owned(),
        sent,
        message_id: sent.then(|| "wamid.earlier".to_owned()),
        at,
        details: "the ledger: other.state.db".into(),
    };
    let mut db = store.open_for_run();
    let marked = write_plan(db.as_mut(), PlanWrite::Fresh, |sink| {
        sink.insert(&pending(1, p1))?;
        sink.insert(&pending(2, p2))?;
        sink.insert(&pending(3, "+254700000003"))?;
        let marked = (
            sink.mark_messaged(&earlier(p1, true))?,
            sink.mark_messaged(&earlier(p2, false))?,
            sink.mark_messaged(&earlier("+254799999999", true))?,
        );
        Ok::<_, StateError>((marked, info(3)))
    })
    .expect("plan");
    assert_eq!(marked, (true, true, false));
    let c = db.counts().expect("counts");
    assert_eq!((c.sent, c.uncertain, c.pending), (1, 1, 1));
    let first = db.recipient_by_phone(p1).expect("phone").expect("planned");
    assert_eq!(
        (first.state, first.message_id.as_deref(), first.sent_at),
        (
            RecipientState::Sent,
            Some("wamid.earlier"),
            Some(timestamp(at))
        )
    );
    let second = db.recipient_by_phone(p2).expect("phone").expect("planned");
    assert_eq!(
        (second.state, second.error_code.as_deref(), second.sent_at),
        (RecipientState::Uncertain, Some("earlier_attempt"), None)
    );
    assert!(db.anything_sent().expect("sent"));
    // Neither is claimed again: only the third row goes.
    let claimed = db.claim(5).expect("claim");
    assert_eq!(claimed.iter().map(|c| c.row).collect::<Vec<_>>(), [3]);
}

fn add_mode_updates_the_csv_record_and_keeps_when_it_was_planned(store: &TestStore) {
    let mut db = store.open_for_run();
    let first = info(1);
    write_plan(db.as_mut(), PlanWrite::Fresh, |sink| {
        sink.insert(&pending(1, "+254700000001"))?;
        Ok::<_, StateError>(((), first.clone()))
    })
    .expect("plan");
    let added = PlanInfo {
        csv_sha256: "sha-grown".into(),
        csv_rows: 2,
        planned_at: "2030-01-01T00:00:00.000Z".into(),
        updated_at: "2030-01-01T00:00:00.000Z".into(),
        ..first.clone()
    };
    write_plan(db.as_mut(), PlanWrite::Add, |sink| {
        sink.insert(&pending(1, "+254700000001"))?;
        sink.insert(&pending(2, "+254700000002"))?;
        Ok::<_, StateError>(((), added.clone()))
    })
    .expect("add");
    assert_eq!(
        db.plan_info().expect("info"),
        Some(PlanInfo {
            csv_sha256: "sha-grown".into(),
            csv_rows: 2,
            updated_at: added.updated_at,
            ..first
        })
    );
    // The added row is a later generation: the one a row number now names.
    assert_eq!(db.counts().expect("counts").pending, 2);
}

fn replace_mode_plans_again_from_scratch(store: &TestStore) {
    let mut db = planned(store, 3);
    assert!(!db.anything_sent().expect("sent"));
    let again = PlanInfo {
        csv_sha256: "sha-new".into(),
        planned_at: "2030-01-01T00:00:00.000Z".into(),
        updated_at: "2030-01-01T00:00:00.000Z".into(),
        ..info(1)
    };
    write_plan(db.as_mut(), PlanWrite::Replace, |sink| {
        sink.insert(&pending(1, "+254700000009"))?;
        Ok::<_, StateError>(((), again.clone()))
    })
    .expect("replace");
    assert_eq!(db.plan_info().expect("info"), Some(again));
    let c = db.counts().expect("counts");
    assert_eq!((c.total(), c.pending), (1, 1));
    assert!(
        db.recipient_by_phone("+254700000001")
            .expect("phone")
            .is_none()
    );
    let claimed = db.claim(5).expect("claim");
    assert_eq!(
        claimed
            .iter()
            .map(|c| (c.row, c.phone.as_str()))
            .collect::<Vec<_>>(),
        [(1, "+254700000009")]
    );
}

fn a_plan_larger_than_a_batch_reads_back_whole(store: &TestStore) {
    // More rows than a store writes or reads in one go (PostgreSQL plans
    // in COPY batches and walks in pages of 5 000), with the ledger's mark
    // on a row written batches earlier.
    const ROWS: u64 = 10_001;
    let first_phone = sendable(1).phone.expect("a phone");
    let mut db = store.open_for_run();
    let marked = write_plan(db.as_mut(), PlanWrite::Fresh, |sink| {
        for row in 1..=ROWS {
            sink.insert(&sendable(row))?;
        }
        let marked = sink.mark_messaged(&EarlierMessage {
            phone: first_phone.clone(),
            sent: true,
            message_id: Some("wamid.earlier".into()),
            at: to_the_millisecond(Utc::now()),
            details: "the ledger".into(),
        })?;
        Ok::<_, StateError>((marked, info(ROWS)))
    })
    .expect("plan");
    assert!(marked);
    let c = db.counts().expect("counts");
    assert_eq!((c.pending, c.sent), (ROWS - 1, 1));
    let reader = store.open_for_reading();
    let mut next = 1;
    reader
        .for_each_recipient(&[], &mut |r| {
            assert_eq!(r.row, next, "rows in order, none twice");
            next += 1;
            Ok(())
        })
        .expect("walk");
    assert_eq!(next, ROWS + 1);
    assert_eq!(
        reader
            .recipient_by_phone(&first_phone)
            .expect("phone")
            .map(|r| r.state),
        Some(RecipientState::Sent)
    );
}

// What only an SQLite file has: these stay SQLite-only.

/// The file and its WAL are created owner-only (0600): file permissions,
/// which a database does not have.
#[cfg(unix)]
#[test]
fn state_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.state.db");
    let mut db = StateDb::open_or_create(&path).expect("create");
    plan(&mut db, vec![pending(1, "+254700000001")]);
    for file in [path.clone(), dir.path().join("c.state.db-wal")] {
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }
}

/// Where a state file goes by default: a path, not a store's behaviour.
#[test]
fn default_state_path_sits_beside_the_campaign() {
    assert_eq!(
        default_state_path(Path::new("campaigns/bf/campaign.toml")),
        PathBuf::from("campaigns/bf/campaign.state.db")
    );
}
