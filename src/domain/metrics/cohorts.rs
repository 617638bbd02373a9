//! Retention from the hourly actor bitmaps (`domain::events::actors`):
//! per UTC hour, the actors who did the start event and those who did the
//! return event. Walking the hours in order, an actor's cohort is the
//! period of the first hour it started in, and a return in a later period
//! is an intersection. The answer is exactly the raw path's
//! ([`retention`](super::journey::retention)):
//!
//! - The partial hours at the ends of the range come from raw events,
//!   their actors looked up by number, as for distinct counts.
//! - In the cohort's own period a return counts only at or after the
//!   actor's first start. One in a later hour of that period surely is;
//!   one only in the first start's own hour may be before it. Those
//!   actors (found by number) have that hour's events read from raw events
//!   and the raw rule applied; at the head of the range the raw events are
//!   already at hand. With the same start and return event, the first
//!   start is itself a return: offset 0 is the whole cohort.
//!
//! Eligible: a zone whose offset over the range and the followed periods
//! is always a whole number of hours and whose periods all start on a UTC
//! hour (so each hour lies in one period), and only hours the tenant's
//! bitmaps cover (`actor_coverage`). Anything else, an edge actor without
//! a number, or bitmaps that disagree with the events, is answered from
//! raw events.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use roaring::RoaringBitmap;
use sea_orm::{DbBackend, DbErr, Statement};

use super::Snapshot;
use super::bitmaps::{actors_of, covered, numbers_of};
use super::journey::{Actor, RetentionPlan};
use super::raw::{new_sql, statement};
use super::time;
use crate::domain::events::actors::{Kind, hour_of};
use crate::domain::events::query::{time_at, time_value};

/// Cohort sizes and, per cohort, the actors returned at each offset
/// (0 to `periods`), as the raw path counts them.
#[derive(Debug, PartialEq)]
pub(super) struct Counts {
    pub size: Vec<u64>,
    pub returned: Vec<Vec<u64>>,
    /// Whether raw events were read too (partial hours at the ends, or
    /// actors whose return shares their first start's hour).
    pub raw: bool,
}

/// Which spans of a plan the bitmaps answer and which raw events do.
#[derive(Debug, PartialEq)]
struct Window {
    /// `[from, first whole hour)`, when `from` is inside an hour: raw
    /// start events (before `to`) and return events.
    head: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Whole hours of start events.
    starts: (DateTime<Utc>, DateTime<Utc>),
    /// `[to's hour, to)`, when `to` is inside an hour after the head:
    /// raw start events (that hour's returns are in its bitmap).
    tail: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Whole hours of return events, up to `until`.
    returns: (DateTime<Utc>, DateTime<Utc>),
}

fn whole_hour(t: DateTime<Utc>) -> bool {
    hour_of(t) == t
}

/// The spans of `plan`, when each UTC hour lies in one period (see the
/// module doc; coverage is checked when it runs).
fn window(plan: &RetentionPlan) -> Option<Window> {
    let (first, changes) = time::offsets(plan.tz, plan.from, plan.until);
    if first % 3600 != 0 || changes.iter().any(|(_, o)| o % 3600 != 0) {
        return None;
    }
    // Offsets in whole hours put local midnights on UTC hours; checked
    // anyway, as a change at an odd instant or a fallback `until` would
    // split an hour between periods.
    if !plan.starts.iter().all(|s| whole_hour(*s)) || !whole_hour(plan.until) {
        return None;
    }
    let (from, to) = (plan.from, plan.to);
    let first_whole = if whole_hour(from) {
        from
    } else {
        hour_of(from) + Duration::hours(1)
    };
    let last = hour_of(to);
    Some(Window {
        head: (from < first_whole).then_some((from, first_whole)),
        starts: (first_whole, last.max(first_whole)),
        tail: (last >= first_whole && last < to).then_some((last, to)),
        returns: (first_whole, plan.until),
    })
}

/// One hour's actors (or the head's, from raw events).
#[derive(Default, Debug)]
struct Hour {
    start: RoaringBitmap,
    ret: RoaringBitmap,
}

/// Cohort members whose only return in their own period may precede
/// their first start: in the hour that starts at `hour`, of cohort
/// `cohort`.
#[derive(Debug, PartialEq)]
struct Ambiguous {
    hour: DateTime<Utc>,
    cohort: usize,
    actors: RoaringBitmap,
}

/// The counts the hours give, with offset 0 holding only the actors
/// surely returned, and those still to resolve.
fn tally(
    hours: &BTreeMap<DateTime<Utc>, Hour>,
    starts: &[DateTime<Utc>],
    cohorts: usize,
    periods: usize,
    same_event: bool,
) -> (Counts, Vec<Ambiguous>) {
    let period_of = |t: DateTime<Utc>| starts.partition_point(|s| *s <= t).saturating_sub(1);
    let mut seen = RoaringBitmap::new();
    let mut members = vec![RoaringBitmap::new(); cohorts];
    let mut returns = vec![RoaringBitmap::new(); starts.len()];
    // Per cohort, its period's hours in order: (hour, first starts, returns).
    let mut own: Vec<Vec<(DateTime<Utc>, RoaringBitmap, &RoaringBitmap)>> =
        (0..cohorts).map(|_| Vec::new()).collect();
    for (&hour, h) in hours {
        let p = period_of(hour);
        let fresh = &h.start - &seen;
        seen |= &h.start;
        if let Some(r) = returns.get_mut(p) {
            *r |= &h.ret;
        }
        if p < cohorts {
            members[p] |= &fresh;
            own[p].push((hour, fresh, &h.ret));
        }
    }
    let mut counts = Counts {
        size: members.iter().map(RoaringBitmap::len).collect(),
        returned: vec![vec![0; periods + 1]; cohorts],
        raw: false,
    };
    let mut ambiguous = Vec::new();
    for (c, cohort) in members.iter().enumerate() {
        for k in 1..=periods {
            if let Some(r) = returns.get(c + k) {
                counts.returned[c][k] = cohort.intersection_len(r);
            }
        }
        if same_event {
            counts.returned[c][0] = cohort.len();
            continue;
        }
        // Backwards through the period: `later` holds who returned in a
        // later hour of it, which is after their first start for sure.
        let mut later = RoaringBitmap::new();
        for (hour, fresh, ret) in own[c].iter().rev() {
            counts.returned[c][0] += fresh.intersection_len(&later);
            let unsure = (fresh & *ret) - &later;
            if !unsure.is_empty() {
                ambiguous.push(Ambiguous {
                    hour: *hour,
                    cohort: c,
                    actors: unsure,
                });
            }
            later |= *ret;
        }
    }
    (counts, ambiguous)
}

/// One actor's start and return times within one hour: whether it did
/// the return event at or after its first start (before `to`) there.
#[derive(Default)]
struct Within {
    first_start: Option<DateTime<Utc>>,
    last_return: Option<DateTime<Utc>>,
}

impl Within {
    fn add(&mut self, at: DateTime<Utc>, start: bool, ret: bool, to: DateTime<Utc>) {
        if start && at < to {
            self.first_start = Some(self.first_start.map_or(at, |s| s.min(at)));
        }
        if ret {
            self.last_return = Some(self.last_return.map_or(at, |r| r.max(at)));
        }
    }

    /// `None` when it has no start there (the bitmaps said it had).
    fn returned(&self) -> Option<bool> {
        let since = self.first_start?;
        Some(self.last_return.is_some_and(|r| r >= since))
    }
}

/// The plan's start and return events of `actors` (all when `None`) in
/// `[lo, hi)`: actor, time, is a start, is a return.
fn events(
    backend: DbBackend,
    plan: &RetentionPlan,
    tenant: uuid::Uuid,
    (lo, hi): (DateTime<Utc>, DateTime<Utc>),
    actors: Option<&[&str]>,
) -> Statement {
    let mut sql = new_sql(backend);
    let col = plan.actor.column();
    let who = match actors {
        None => String::new(),
        Some(list) => {
            let list: Vec<String> = list.iter().map(|a| sql.bind((*a).to_owned())).collect();
            format!(" AND {col} IN ({})", list.join(", "))
        }
    };
    let text = format!(
        "SELECT {col}, occurred_at, CASE WHEN type = {s} THEN 1 ELSE 0 END, CASE WHEN type = {r} THEN 1 ELSE 0 END \
         FROM events WHERE tenant_id = {tenant} AND occurred_at >= {lo} AND occurred_at < {hi} \
         AND {col} IS NOT NULL AND type IN ({s2}, {r2}){who}",
        s = sql.bind(plan.start_event.clone()),
        r = sql.bind(plan.return_event.clone()),
        tenant = sql.bind(tenant),
        lo = sql.bind(time_value(backend, lo)),
        hi = sql.bind(time_value(backend, hi)),
        s2 = sql.bind(plan.start_event.clone()),
        r2 = sql.bind(plan.return_event.clone()),
    );
    statement(sql, text)
}

/// A raw event: actor, time, is a start, is a return.
type Event = (String, DateTime<Utc>, bool, bool);

async fn read_events(s: &mut Snapshot, stmt: Statement) -> Result<Vec<Event>, DbErr> {
    let backend = s.backend();
    s.query_all(stmt)
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.try_get_by_index(0)?,
                time_at(backend, row, 1)?,
                row.try_get_by_index::<i32>(2)? == 1,
                row.try_get_by_index::<i32>(3)? == 1,
            ))
        })
        .collect()
}

/// Actors resolved per raw lookup of their hour's events.
const RESOLVE_CHUNK: usize = 500;

/// The plan's counts from the bitmaps, or `None` when they cannot answer
/// it exactly (then the caller answers from raw events).
pub(super) async fn counts(
    s: &mut Snapshot,
    plan: &RetentionPlan,
    tenant: uuid::Uuid,
) -> Result<Option<Counts>, DbErr> {
    let Some(w) = window(plan) else {
        return Ok(None);
    };
    if !covered(s, tenant, plan.from).await? {
        return Ok(None);
    }
    let kind = match plan.actor {
        Actor::User => Kind::User,
        Actor::Session => Kind::Session,
    };
    let backend = s.backend();
    let same_event = plan.start_event == plan.return_event;
    let mut hours: BTreeMap<DateTime<Utc>, Hour> = BTreeMap::new();

    // Whole hours: one read of both event types' rows (a key's deltas are
    // OR-ed together).
    let mut sql = new_sql(backend);
    let types = if same_event {
        sql.bind(plan.start_event.clone())
    } else {
        format!(
            "{}, {}",
            sql.bind(plan.start_event.clone()),
            sql.bind(plan.return_event.clone())
        )
    };
    let text = format!(
        "SELECT event_type, hour_start, bitmap FROM actor_bitmaps WHERE tenant_id = {} AND kind = {} \
         AND hour_start >= {} AND hour_start < {} AND event_type IN ({types})",
        sql.bind(tenant),
        sql.bind(kind.code()),
        sql.bind(time_value(backend, w.returns.0)),
        sql.bind(time_value(backend, w.returns.1)),
    );
    for row in s.query_all(statement(sql, text)).await? {
        let event_type: String = row.try_get_by_index(0)?;
        let hour = time_at(backend, &row, 1)?;
        let bytes: Vec<u8> = row.try_get_by_index(2)?;
        let bitmap = RoaringBitmap::deserialize_from(bytes.as_slice())
            .map_err(|e| DbErr::Custom(format!("an unreadable actor bitmap: {e}")))?;
        let h = hours.entry(hour).or_default();
        if event_type == plan.start_event && hour >= w.starts.0 && hour < w.starts.1 {
            h.start |= &bitmap;
        }
        if event_type == plan.return_event {
            h.ret |= bitmap;
        }
    }

    // Partial hours at the ends: raw events, their actors by number.
    let head = match w.head {
        Some(span) => read_events(s, events(backend, plan, tenant, span, None)).await?,
        None => Vec::new(),
    };
    let tail = match w.tail {
        Some(span) => read_events(s, events(backend, plan, tenant, span, None)).await?,
        None => Vec::new(),
    };
    let mut names: Vec<&str> = head.iter().chain(&tail).map(|e| e.0.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let numbers = numbers_of(s, tenant, kind, &names).await?;
    // The head's exact times, per actor, resolve its own ambiguity.
    let mut head_times: HashMap<u32, Within> = HashMap::new();
    for (edge, events, is_head) in [(w.head, &head, true), (w.tail, &tail, false)] {
        let Some((lo, _)) = edge else {
            continue;
        };
        let h = hours.entry(hour_of(lo)).or_default();
        for (actor, at, start, ret) in events {
            let Some(&number) = numbers.get(actor) else {
                // Written without a number (before the bitmaps existed).
                return Ok(None);
            };
            if *start && *at < plan.to {
                h.start.insert(number);
            }
            // The tail hour's returns are in its bitmap.
            if is_head {
                if *ret {
                    h.ret.insert(number);
                }
                head_times
                    .entry(number)
                    .or_default()
                    .add(*at, *start, *ret, plan.to);
            }
        }
    }

    let (mut counts, ambiguous) = tally(
        &hours,
        &plan.starts,
        plan.cohorts.len(),
        plan.periods,
        same_event,
    );

    // Offset 0's unsure actors: the raw rule on their first start's hour.
    let head_hour = w.head.map(|(from, _)| hour_of(from));
    let mut elsewhere: Vec<(DateTime<Utc>, usize, u32)> = Vec::new();
    for a in ambiguous {
        if Some(a.hour) == head_hour {
            for number in &a.actors {
                match head_times.get(&number).and_then(Within::returned) {
                    Some(true) => counts.returned[a.cohort][0] += 1,
                    Some(false) => {}
                    None => return Ok(None),
                }
            }
        } else {
            elsewhere.extend(a.actors.iter().map(|n| (a.hour, a.cohort, n)));
        }
    }
    elsewhere.sort_unstable();
    counts.raw = w.head.is_some() || w.tail.is_some() || !elsewhere.is_empty();
    for chunk in elsewhere.chunks(RESOLVE_CHUNK) {
        let wanted: Vec<u32> = chunk.iter().map(|(_, _, n)| *n).collect();
        let names = actors_of(s, tenant, kind, &wanted).await?;
        // Actor → (its hour, its cohort, what that hour holds).
        let mut of: HashMap<&str, (DateTime<Utc>, usize, Within)> = HashMap::new();
        for (hour, cohort, number) in chunk {
            let Some(name) = names.get(number) else {
                return Ok(None);
            };
            of.insert(name.as_str(), (*hour, *cohort, Within::default()));
        }
        let list: Vec<&str> = of.keys().copied().collect();
        // Sorted by hour: the chunk's hours span [first, last + 1 h).
        let span = (chunk[0].0, chunk[chunk.len() - 1].0 + Duration::hours(1));
        let stmt = events(backend, plan, tenant, span, Some(&list));
        for (actor, at, start, ret) in read_events(s, stmt).await? {
            if let Some((hour, _, within)) = of.get_mut(actor.as_str())
                && hour_of(at) == *hour
            {
                within.add(at, start, ret, plan.to);
            }
        }
        for (_, cohort, within) in of.values() {
            match within.returned() {
                Some(true) => counts.returned[*cohort][0] += 1,
                Some(false) => {}
                None => return Ok(None),
            }
        }
    }
    Ok(Some(counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().expect("instant")
    }

    fn bitmap(numbers: &[u32]) -> RoaringBitmap {
        numbers.iter().copied().collect()
    }

    fn hour(start: &[u32], ret: &[u32]) -> Hour {
        Hour {
            start: bitmap(start),
            ret: bitmap(ret),
        }
    }

    #[test]
    fn cohorts_take_first_starts_and_offsets_intersect_later_periods() {
        // Daily periods; two cohorts followed for two periods.
        let starts = [
            utc("2026-10-01T00:00:00Z"),
            utc("2026-10-02T00:00:00Z"),
            utc("2026-10-03T00:00:00Z"),
            utc("2026-10-04T00:00:00Z"),
        ];
        let hours = BTreeMap::from([
            // 1 starts then returns later that day: sure at offset 0.
            // 2 starts and returns in the same hour only: unsure.
            // 3 returns an hour before starting: not at offset 0.
            (utc("2026-10-01T05:00:00Z"), hour(&[], &[3])),
            (utc("2026-10-01T06:00:00Z"), hour(&[1, 2, 3], &[2])),
            (utc("2026-10-01T07:00:00Z"), hour(&[], &[1])),
            // 1 starts again: still day 1's; 4 is day 2's.
            (utc("2026-10-02T01:00:00Z"), hour(&[1, 4], &[1, 2])),
            (utc("2026-10-03T01:00:00Z"), hour(&[], &[3, 4])),
        ]);
        let (counts, ambiguous) = tally(&hours, &starts, 2, 2, false);
        assert_eq!(
            counts,
            Counts {
                size: vec![3, 1],
                returned: vec![vec![1, 2, 1], vec![0, 1, 0]],
                raw: false,
            }
        );
        assert_eq!(
            ambiguous,
            [Ambiguous {
                hour: utc("2026-10-01T06:00:00Z"),
                cohort: 0,
                actors: bitmap(&[2]),
            }]
        );
        // The same event for both: every first start is a return.
        let (counts, ambiguous) = tally(&hours, &starts, 2, 2, true);
        assert_eq!(counts.returned[0][0], 3);
        assert!(ambiguous.is_empty());
    }

    #[test]
    fn a_return_before_the_first_start_in_its_hour_does_not_count() {
        let to = utc("2026-10-01T07:00:00Z");
        let mut before = Within::default();
        before.add(utc("2026-10-01T06:10:00Z"), false, true, to);
        before.add(utc("2026-10-01T06:20:00Z"), true, false, to);
        assert_eq!(before.returned(), Some(false));
        let mut tie = Within::default();
        tie.add(utc("2026-10-01T06:20:00Z"), false, true, to);
        tie.add(utc("2026-10-01T06:20:00Z"), true, false, to);
        assert_eq!(tie.returned(), Some(true));
        // A start at or after `to` opens no cohort.
        let mut late = Within::default();
        late.add(utc("2026-10-01T07:10:00Z"), true, true, to);
        assert_eq!(late.returned(), None);
    }
}
