//! Plans for unit tests of the state and of what reads it (reports): an
//! in-memory state with sendable rows, written through the same seam a run
//! uses.

use chrono::Utc;

use super::{PlanInfo, PlanWrite, PlannedRow, StateDb, StateError, timestamp, write_plan};

/// A sendable row at CSV row `row`, with a distinct Kenyan phone.
pub fn sendable(row: u64) -> PlannedRow {
    let phone = format!("+2547{:08}", 11_000_000 + row);
    PlannedRow {
        row,
        outcome: Ok(format!("{{\"to\":\"{phone}\"}}")),
        phone: Some(phone),
        name: None,
        timezone: None,
    }
}

/// The plan record of a campaign called `name` read from `rows` CSV rows.
pub fn plan_info(name: &str, rows: u64) -> PlanInfo {
    let at = timestamp(Utc::now());
    PlanInfo {
        campaign_name: name.into(),
        message_type: "text".into(),
        campaign_file: "campaign.toml".into(),
        csv_file: "recipients.csv".into(),
        message_fingerprint: "fp".into(),
        csv_sha256: "sha".into(),
        csv_rows: rows,
        planned_at: at.clone(),
        updated_at: at,
    }
}

/// An in-memory state planned from `rows`.
pub fn planned_state(name: &str, rows: &[PlannedRow]) -> StateDb {
    let mut db = StateDb::in_memory().expect("in-memory state");
    write_plan(&mut db, PlanWrite::Fresh, |sink| {
        for row in rows {
            sink.insert(row)?;
        }
        Ok::<_, StateError>(((), plan_info(name, rows.len() as u64)))
    })
    .expect("plan");
    db
}
