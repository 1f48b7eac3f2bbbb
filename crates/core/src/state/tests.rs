//! Unit tests of the state file on `:memory:` (and one real file for permissions).

use super::*;

fn info(rows: u64) -> PlanInfo {
    test_support::plan_info("t", rows)
}

fn pending(row: u64, phone: &str) -> PlannedRow {
    PlannedRow {
        row,
        phone: Some(phone.into()),
        name: Some(format!("n{row}")),
        outcome: Ok(format!("{{\"to\":\"{phone}\"}}")),
        timezone: None,
    }
}

/// A state with `n` pending rows, numbered 1..=n.
fn planned(n: u64) -> StateDb {
    let mut db = StateDb::in_memory().expect("db");
    plan(
        &mut db,
        (1..=n)
            .map(|i| pending(i, &format!("+25470000000{i}")))
            .collect(),
    );
    db
}

fn plan(db: &mut StateDb, rows: Vec<PlannedRow>) -> Vec<Inserted> {
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

#[test]
fn plan_decides_duplicates_and_counts_add_up() {
    let mut db = StateDb::in_memory().expect("db");
    let inserted = plan(
        &mut db,
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

#[test]
fn a_failed_plan_leaves_nothing_behind() {
    let mut db = StateDb::in_memory().expect("db");
    let result: Result<(), StateError> = write_plan(&mut db, PlanWrite::Fresh, |sink| {
        sink.insert(&pending(1, "+254700000001"))?;
        Err(StateError::NotPlanned {
            path: "row 2 broke the plan".into(),
        })
    });
    assert!(result.is_err());
    assert_eq!(db.counts().expect("counts").total(), 0);
    assert!(db.plan_info().expect("info").is_none());
}

#[test]
fn claim_record_and_recover() {
    let mut db = planned(5);
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
    // Row 3 is still `sending`: the run "died". Recovery makes it uncertain.
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

#[test]
fn record_ignores_rows_not_sending() {
    // A late outcome must never overwrite a row someone already settled.
    let mut db = StateDb::in_memory().expect("db");
    plan(&mut db, vec![pending(1, "+254700000001")]);
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

#[test]
fn retry_resets_only_the_selection() {
    let mut db = planned(3);
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

#[test]
fn add_mode_skips_planned_phones() {
    let mut db = StateDb::in_memory().expect("db");
    plan(&mut db, vec![pending(1, "+254700000001")]);
    let inserted = write_plan(&mut db, PlanWrite::Add, |sink| {
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

#[test]
fn add_mode_does_not_plan_an_unusable_row_twice() {
    // Regression: a bad row without a phone was inserted again on every
    // --add-new-recipients pass, so the counts outgrew the CSV.
    let mut db = StateDb::in_memory().expect("db");
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
    plan(&mut db, vec![pending(1, "+254700000001"), bad.clone()]);
    let inserted = write_plan(&mut db, PlanWrite::Add, |sink| {
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

#[test]
fn default_state_path_sits_beside_the_campaign() {
    assert_eq!(
        default_state_path(Path::new("campaigns/bf/campaign.toml")),
        PathBuf::from("campaigns/bf/campaign.state.db")
    );
}

#[test]
fn claims_take_only_rows_of_the_zones_named() {
    use crate::zones::{RowZone, ZoneSource};
    let zoned = |row: u64, phone: &str, zone: chrono_tz::Tz| PlannedRow {
        timezone: Some(RowZone {
            zone,
            source: ZoneSource::Country,
        }),
        ..pending(row, phone)
    };
    let mut db = StateDb::in_memory().expect("db");
    plan(
        &mut db,
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

#[test]
fn a_screened_claim_suppresses_turned_away_rows_and_claims_others_instead() {
    let mut db = planned(5);
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

#[test]
fn a_screen_that_cannot_read_its_list_claims_nothing() {
    let mut db = planned(3);
    let e = db
        .record_and_claim_screened(&[], 2, &mut |_: &[Claimed]| Err("ledger locked".into()))
        .expect_err("no claim");
    assert!(matches!(e, StateError::Screen(_)), "{e}");
    assert_eq!(db.counts().expect("counts").pending, 3);
}

#[test]
fn a_held_row_keeps_its_state_and_ends_the_claim() {
    let mut db = planned(5);
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

#[test]
fn suppressed_rows_of_a_reason_are_claimed_again_when_selected() {
    let mut db = planned(3);
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

#[test]
fn a_run_never_takes_back_a_row_it_resent_or_suppressed_again() {
    // Regression: a resent row that came back uncertain was claimed again by
    // the same run (sent over and over), and a row suppressed again by the
    // claim's own check was read again and again inside one claim.
    let mut db = planned(3);
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

#[test]
fn a_suppression_problem_is_planned_suppressed() {
    let mut db = StateDb::in_memory().expect("db");
    let inserted = plan(
        &mut db,
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
