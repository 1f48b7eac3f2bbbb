//! The campaign's one pace, shared by every runner: a GCRA row in
//! `campaigns` that runners reserve send slots from.
//!
//! A reservation of `k` slots moves the row's next free slot to
//! `greatest(next_slot, clock_timestamp()) + k / rate` and hands back where
//! the first of them starts, so slots never overlap whoever asks, and an idle
//! spell earns no burst. The rate lives in the same row: a
//! `rate_limit_exceeded` from the server lowers it for everyone
//! (multiplicatively, at most twice a second), and it climbs back additively
//! with time, never above the campaign's `rate_per_second`. Times are the
//! database's; a runner only learns how long from now its first slot is.

use std::sync::Arc;
use std::time::Duration;

use super::link::Link;
use crate::state::StateError;
use crate::state::location::PgTarget;
use crate::state::runner::{PaceFuture, SharedPace, SlotBlock};

/// Never slower than this, however hard the server pushes back.
const MIN_RATE: f64 = 0.5;
/// After a 429, the shared rate is multiplied by this.
const DECREASE_TO: f64 = 0.7;
/// Additive increase per second, as a fraction of the rate (at least 1/s).
const INCREASE_FRACTION_PER_SEC: f64 = 0.02;

/// The shared pace of one campaign, on a connection of its own (a slot
/// reservation must not wait behind a claim).
#[derive(Debug)]
pub(crate) struct PgPace {
    link: Arc<Link>,
    campaign_id: i64,
}

impl PgPace {
    pub(crate) fn open(target: &PgTarget, campaign_id: i64) -> Result<PgPace, StateError> {
        Ok(PgPace {
            link: Arc::new(Link::open(target, "pace")?),
            campaign_id,
        })
    }
}

impl SharedPace for PgPace {
    fn reserve(&self, slots: u32, ceiling: f64) -> PaceFuture<'_, SlotBlock> {
        let id = self.campaign_id;
        let k = f64::from(slots.max(1));
        let ceiling = ceiling.max(MIN_RATE);
        Box::pin(async move {
            let (first_in, rate) = self
                .link
                .call_async("reserving send slots", move |c| {
                    let row = c.query_one(
                        "WITH cur AS (
                           SELECT id, clock_timestamp() AS now,
                             greatest($4::float8, least($2::float8,
                               coalesce(pace_rate, $2) + greatest(1.0, coalesce(pace_rate, $2) * $5)
                                 * coalesce(extract(epoch FROM clock_timestamp() - pace_adjusted_at)::float8, 0)))
                               AS rate,
                             greatest(coalesce(pace_next_slot, clock_timestamp()), clock_timestamp())
                               AS start
                           FROM convers8.campaigns WHERE id = $1 FOR UPDATE)
                         UPDATE convers8.campaigns c SET pace_rate = cur.rate,
                           pace_adjusted_at = cur.now,
                           pace_next_slot = cur.start + make_interval(secs => $3 / cur.rate)
                         FROM cur WHERE c.id = cur.id
                         RETURNING extract(epoch FROM cur.start - cur.now)::float8, cur.rate",
                        &[&id, &ceiling, &k, &MIN_RATE, &INCREASE_FRACTION_PER_SEC],
                    )?;
                    Ok((row.get::<_, f64>(0), row.get::<_, f64>(1)))
                })
                .await?;
            Ok(SlotBlock {
                first_in: Duration::from_secs_f64(first_in.max(0.0)),
                rate,
                slots: slots.max(1),
            })
        })
    }

    fn slow_down(&self, pause: Option<Duration>) -> PaceFuture<'_, ()> {
        let id = self.campaign_id;
        let pause_secs = pause.map_or(0.0, |p| p.as_secs_f64());
        Box::pin(async move {
            self.link
                .call_async("lowering the shared pace", move |c| {
                    c.execute(
                        "UPDATE convers8.campaigns SET
                           pace_rate = CASE WHEN pace_decreased_at IS NULL
                                              OR pace_decreased_at < clock_timestamp() - interval '500 milliseconds'
                                            THEN greatest($2::float8, pace_rate * $3)
                                            ELSE pace_rate END,
                           pace_decreased_at = CASE WHEN pace_decreased_at IS NULL
                                              OR pace_decreased_at < clock_timestamp() - interval '500 milliseconds'
                                            THEN clock_timestamp() ELSE pace_decreased_at END,
                           pace_adjusted_at = clock_timestamp(),
                           pace_next_slot = greatest(coalesce(pace_next_slot, clock_timestamp()),
                                                     clock_timestamp() + make_interval(secs => $4))
                         WHERE id = $1",
                        &[&id, &MIN_RATE, &DECREASE_TO, &pause_secs],
                    )
                })
                .await?;
            Ok(())
        })
    }
}
